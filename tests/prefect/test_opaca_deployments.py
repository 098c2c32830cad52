"""Prefect deployments as OPACA actions, over HTTP, against the session's real Prefect server.

The container (the core's ``Container``, the face's app, the Deployments agent) is served by uvicorn on
127.0.0.1 port 0; its platform is a small fake that reads ``/info`` back on every notify, as opaca-core does.
The deployments are the flows of ``tests/prefect/opaca_flows.py``, registered tagged ``opaca``. Nothing is
mocked: every run is a real flow run, checked through the Prefect API (state, logs, artifacts, run count).
The last test serves some of them with ``prefect.serve`` in a subprocess: the runner path, and the round trip
of ``run_deployment`` against a deployment action (printed; ``-s`` shows it).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterIdempotencyKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments import run_deployment

from agents_api.deployments import DeploymentRuns, DeploymentsAgent, DeploymentSettings, schema_parameters
from agents_api.server import BackgroundServer
from flowmas.opaca import Container
from tests.prefect import opaca_flows
from tests.prefect.support import REPO, eventually
from up.container import build_app

pytestmark = pytest.mark.prefect

IMAGE = {"imageName": "flowmas/opaca-deployments-test", "name": "deployments-test"}


@dataclass
class FakePlatform:
    """``POST /containers/notify``, reading the container's ``/info`` back as opaca-core does."""

    url: str = ""
    container_url: str = ""
    notifies: list[list[str]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/containers/notify")
        async def notify(request: Request) -> Response:
            async with httpx.AsyncClient() as client:
                info = (await client.get(f"{self.container_url}/info")).json()
            self.notifies.append(sorted(a["name"] for agent in info["agents"] for a in agent["actions"]))
            return Response(b"true", media_type="application/json")

        return app


@dataclass
class Stack:
    url: str
    container: Container
    engine: DeploymentRuns
    platform: FakePlatform
    http: httpx.Client


@pytest.fixture(scope="module")
def deployment_ids(prefect_server: str) -> dict[str, uuid.UUID]:
    """The test flows, registered tagged ``opaca`` (no runner serves them: the container executes their runs)."""
    limit = ConcurrencyLimitConfig(limit=1, collision_strategy="CANCEL_NEW")
    deployments = {
        "double": opaca_flows.double.to_deployment(name="test", tags=["opaca"]),
        "fail": opaca_flows.fail.to_deployment(name="test", tags=["opaca"]),
        "sleep": opaca_flows.sleep.to_deployment(name="test", tags=["opaca"]),
        "flaky": opaca_flows.flaky.to_deployment(name="test", tags=["opaca"]),
        "steps": opaca_flows.steps.to_deployment(name="test", tags=["opaca"]),
        "shapes": opaca_flows.shapes.to_deployment(name="test", tags=["opaca"]),
        "limited": opaca_flows.sleep.to_deployment(name="limited", tags=["opaca", "opaca:LimitedSleep"],
                                                   concurrency_limit=limit),
        "untagged": opaca_flows.double.to_deployment(name="untagged", tags=["other"]),
    }
    return {key: deployment.apply() for key, deployment in deployments.items()}


@pytest.fixture(scope="module")
def stack(deployment_ids: dict[str, uuid.UUID]) -> Iterator[Stack]:
    platform = FakePlatform()
    with BackgroundServer(platform.app()) as platform_server:
        platform.url = platform_server.url
        container = Container(IMAGE, environ={"CONTAINER_ID": "opaca-deployments-test", "PLATFORM_URL": platform.url})
        engine = DeploymentRuns(DeploymentSettings(refresh_seconds=0.5, poll_seconds=0.1))
        DeploymentsAgent(engine, container=container)
        engine.start()
        try:
            with BackgroundServer(build_app(container)) as server, httpx.Client(base_url=server.url,
                                                                                timeout=60) as http:
                platform.container_url = server.url
                yield Stack(server.url, container, engine, platform, http)
        finally:
            engine.stop()
            container.close()


@pytest.fixture
def client(prefect_server: str) -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as c:
        yield c


def actions(stack: Stack) -> dict[str, dict[str, Any]]:
    info = stack.http.get("/info").json()
    return {a["name"]: a for agent in info["agents"] for a in agent["actions"]}


def runs_of(client: SyncPrefectClient, deployment_id: uuid.UUID) -> list[Any]:
    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def log_lines(client: SyncPrefectClient, run_id: uuid.UUID) -> list[str]:
    return [entry.message for entry in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))]


def error(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) <= {"statusCode", "message", "cause"} and body["statusCode"] == response.status_code, body
    return str(body["message"])


# --- the schema mapping (no server) ------------------------------------------------------------------------


def test_a_flow_signature_maps_to_opaca_parameters_and_self_contained_definitions() -> None:
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(opaca_flows.shapes.fn).model_dump_for_openapi()
    parameters, definitions = schema_parameters(schema, action="Shapes", defaults={"color": "green"})
    wire = {name: p.model_dump(by_alias=True, exclude_none=True) for name, p in parameters.items()}

    assert wire == {
        "car": {"type": "Car", "required": True},
        "color": {"type": "Color", "required": False, "defaultValue": "green"},  # the deployment's default
        "mode": {"type": "ShapesMode", "required": False, "defaultValue": "a"},
        "names": {"type": "array", "items": {"type": "string"}, "required": False},
        "count": {"type": "integer", "required": False, "defaultValue": 1},
        "either": {"type": "ShapesEither", "required": False, "defaultValue": 1},
        "table": {"type": "object", "required": False},
        "cars": {"type": "array", "items": {"type": "Car"}, "required": False},
    }
    assert definitions["Car"]["properties"]["inner"]["properties"] == {"z": {"title": "Z", "type": "integer"}}
    assert definitions["Color"]["enum"] == ["red", "green"]
    assert definitions["ShapesMode"]["enum"] == ["a", "b"]
    assert [m["type"] for m in definitions["ShapesEither"]["anyOf"]] == ["integer", "string"]
    import jsonschema

    for name, definition in definitions.items():  # each one a valid document of its own, as the platform reads it
        jsonschema.Draft7Validator.check_schema(definition)
        assert "$ref" not in json.dumps(definition) or "definitions" in definition, name
    jsonschema.Draft7Validator(definitions["Car"]).validate({"brand": "x", "inner": {"z": 1}})


def test_a_recursive_model_keeps_its_reference_inside_its_own_definitions() -> None:
    children = {"type": "array", "items": {"$ref": "#/$defs/Node"}}
    node = {"type": "object", "title": "Node", "properties": {"name": {"type": "string"}, "children": children}}
    schema = {"properties": {"tree": {"$ref": "#/$defs/Node", "position": 0}}, "required": ["tree"],
              "$defs": {"Node": node}}

    parameters, definitions = schema_parameters(schema, action="Walk")

    assert parameters["tree"].type == "Node" and parameters["tree"].required
    tree = definitions["Node"]
    assert tree["properties"]["children"]["items"] == {"$ref": "#/definitions/Node"}
    import jsonschema

    validator = jsonschema.Draft7Validator(tree)
    assert validator.is_valid({"name": "a", "children": [{"name": "b", "children": []}]})
    assert not validator.is_valid({"name": "a", "children": [{"name": 1}]})


# --- actions over HTTP -------------------------------------------------------------------------------------


def test_a_tagged_deployment_is_an_action_described_from_its_flow(stack: Stack) -> None:
    found = actions(stack)

    double = found["OpacaTestDouble"]
    assert double["description"] == "Doubles a number, logging it and leaving a markdown artifact."
    assert double["parameters"] == {"x": {"type": "integer", "required": True}}
    assert double["result"] == {"type": "integer", "required": True}
    assert found["SubmitOpacaTestDouble"]["result"]["type"] == "string"
    assert found["SubmitOpacaTestDouble"]["parameters"] == double["parameters"]
    assert {"OpacaTestFail", "OpacaTestSleep", "OpacaTestFlaky", "OpacaTestShapes", "LimitedSleep",
            "GetRunStatus", "GetRunResult"} <= set(found)
    assert found["OpacaTestShapes"]["result"] == {"type": "Car", "required": True}
    assert "OpacaTestDoubleUntagged" not in found and all("Untagged" not in name for name in found)
    definitions = stack.http.get("/info").json()["image"]["definitions"]
    assert definitions["Car"]["required"] == ["brand", "inner"]


def test_invoking_an_action_creates_a_real_flow_run_with_its_logs_and_artifacts(
    stack: Stack, client: SyncPrefectClient, deployment_ids: dict[str, uuid.UUID]
) -> None:
    before = {run.id for run in runs_of(client, deployment_ids["double"])}
    started = time.monotonic()

    response = stack.http.post("/invoke/OpacaTestDouble", json={"x": 21})

    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json() == 42
    [run] = [run for run in runs_of(client, deployment_ids["double"]) if run.id not in before]
    assert run.state is not None and run.state.is_completed() and run.state.result() == 42  # persisted JSON
    assert run.parameters == {"x": 21}
    assert [s.name for s in client.read_flow_run_states(run.id)] == ["AwaitingContainer", "Pending", "Running",
                                                                      "Completed"]  # claimed and run in the container
    assert "doubling 21" in eventually(lambda: log_lines(client, run.id), lambda lines: "doubling 21" in lines)
    [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(any_=["opaca-test-double"])))
    assert artifact.key == "opaca-test-double" and "**42**" in str(artifact.data)
    print(f"\nOpacaTestDouble over HTTP, first call: {elapsed:.2f} s")


def test_invalid_arguments_are_refused_before_a_run_is_created(
    stack: Stack, client: SyncPrefectClient, deployment_ids: dict[str, uuid.UUID]
) -> None:
    before = len(runs_of(client, deployment_ids["sleep"]))

    wrong_type = stack.http.post("/invoke/OpacaTestSleep", json={"seconds": "long"})
    out_of_range = stack.http.post("/invoke/OpacaTestSleep", json={"seconds": 61})
    unknown = stack.http.post("/invoke/OpacaTestSleep", json={"minutes": 1})

    assert [r.status_code for r in (wrong_type, out_of_range, unknown)] == [400, 400, 400]
    assert "seconds" in error(out_of_range) and "61" in error(out_of_range)
    assert len(runs_of(client, deployment_ids["sleep"])) == before


def test_a_failing_flow_answers_500_with_its_state_message_and_run_id(
    stack: Stack, client: SyncPrefectClient, deployment_ids: dict[str, uuid.UUID]
) -> None:
    response = stack.http.post("/invoke/OpacaTestFail", json={"reason": "on purpose"})

    assert response.status_code == 500
    message = error(response)
    [run] = runs_of(client, deployment_ids["fail"])
    assert f"flow run {run.id} ended Failed" in message
    assert "ValueError: refused: on purpose" in message
    assert run.state is not None and run.state.is_failed()


def test_a_timeout_answers_504_naming_the_run_which_goes_on_and_completes(
    stack: Stack, client: SyncPrefectClient
) -> None:
    started = time.monotonic()

    response = stack.http.post("/invoke/OpacaTestSleep", params={"timeout": 1}, json={"seconds": 3})

    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert elapsed < 2.5, elapsed
    message = error(response)
    run_id = message.split("its flow run ")[1].split(" ")[0]
    assert f"GetRunResult with run_id {run_id}" in message
    assert client.read_flow_run(uuid.UUID(run_id)).state.is_running()  # type: ignore[union-attr]

    result = stack.http.post("/invoke/GetRunResult", params={"timeout": 20}, json={"run_id": run_id})

    assert result.status_code == 200, result.text
    assert result.json() == "slept 3.0 s"
    assert time.monotonic() - started > 3


def test_submit_answers_the_run_id_at_once_then_status_result_and_stream_follow_it(
    stack: Stack, client: SyncPrefectClient
) -> None:
    started = time.monotonic()
    submitted = stack.http.post("/invoke/SubmitOpacaTestSleep", json={"seconds": 1.5})
    assert submitted.status_code == 200, submitted.text
    assert time.monotonic() - started < 1.0
    run_id = submitted.json()

    status = stack.http.post("/invoke/GetRunStatus", json={"run_id": run_id}).json()
    assert status["runId"] == run_id and status["deployment"] == "opaca-test-sleep/test"
    assert status["state"] in ("PENDING", "RUNNING") and status["final"] is False
    assert status["url"].endswith(f"/runs/flow-run/{run_id}")

    with stack.http.stream("GET", f"/stream/{run_id}") as stream:
        assert stream.status_code == 200
        lines = [json.loads(line) for line in stream.iter_lines() if line]
    states = [line["name"] for line in lines if line["event"] == "state"]
    assert states[-1] == "Completed" and "Running" in states
    logs = [line["message"] for line in lines if line["event"] == "log"]
    assert "sleeping 1.5 s" in logs and "woke up" in logs
    assert lines[-1] == {"event": "end", "runId": run_id, "state": "COMPLETED", "stateName": "Completed"}

    assert stack.http.post("/invoke/GetRunResult", json={"run_id": run_id}).json() == "slept 1.5 s"
    done = stack.http.post("/invoke/GetRunStatus", json={"run_id": run_id}).json()
    assert done["state"] == "COMPLETED" and done["final"] is True and done["ended"]


def test_runs_the_container_does_not_own_are_not_found(stack: Stack, deployment_ids: dict[str, uuid.UUID]) -> None:
    other = run_deployment("opaca-test-double/untagged", parameters={"x": 1}, timeout=0, as_subflow=False)

    for name in ("GetRunStatus", "GetRunResult"):
        assert stack.http.post(f"/invoke/{name}", json={"run_id": str(other.id)}).status_code == 404
        assert stack.http.post(f"/invoke/{name}", json={"run_id": str(uuid.uuid4())}).status_code == 404
        assert stack.http.post(f"/invoke/{name}", json={"run_id": "not-a-run"}).status_code == 400
    assert stack.http.get(f"/stream/{other.id}").status_code == 404
    assert stack.http.get("/stream/not-a-run").status_code == 404


def test_the_same_idempotency_key_gives_the_same_run(
    stack: Stack, client: SyncPrefectClient, deployment_ids: dict[str, uuid.UUID]
) -> None:
    key = f"retry-{uuid.uuid4()}"
    headers = {"Idempotency-Key": key}

    first = stack.http.post("/invoke/SubmitOpacaTestSleep", json={"seconds": 1}, headers=headers)
    again = stack.http.post("/invoke/SubmitOpacaTestSleep", json={"seconds": 1}, headers=headers)
    waited = stack.http.post("/invoke/OpacaTestSleep", json={"seconds": 1}, headers=headers)
    after = stack.http.post("/invoke/OpacaTestSleep", json={"seconds": 1}, headers=headers)
    other = stack.http.post("/invoke/SubmitOpacaTestSleep", json={"seconds": 0},
                            headers={"Idempotency-Key": f"other-{key}"})

    assert first.json() == again.json() != other.json()
    assert waited.json() == after.json() == "slept 1.0 s"
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        idempotency_key=FlowRunFilterIdempotencyKey(any_=[f"opaca:{deployment_ids['sleep']}:{key}"])))
    assert [str(run.id) for run in runs] == [first.json()]


def test_deployment_concurrency_limits_apply_to_runs_executed_in_the_container(
    stack: Stack, client: SyncPrefectClient, deployment_ids: dict[str, uuid.UUID]
) -> None:
    """``limit: 1, CANCEL_NEW``: while one run holds the slot, the next is Cancelled by the server's rule."""
    first = stack.http.post("/invoke/SubmitLimitedSleep", json={"seconds": 2}).json()
    assert eventually(lambda: client.read_flow_run(uuid.UUID(first)).state_name, lambda s: s == "Running") == "Running"

    second = stack.http.post("/invoke/LimitedSleep", json={"seconds": 0})

    assert second.status_code == 500
    assert "ended Cancelled: Deployment concurrency limit reached" in error(second)
    assert stack.http.post("/invoke/GetRunResult", json={"run_id": first}).json() == "slept 2.0 s"
    third = stack.http.post("/invoke/LimitedSleep", json={"seconds": 0})
    assert third.status_code == 200, third.text  # the slot was released


def test_flow_retries_run_in_the_container(
    stack: Stack, client: SyncPrefectClient, deployment_ids: dict[str, uuid.UUID], tmp_path: Path
) -> None:
    response = stack.http.post("/invoke/OpacaTestFlaky", json={"marker": str(tmp_path / "marker")})

    assert response.status_code == 200, response.text
    assert response.json() == "second attempt"
    [run] = runs_of(client, deployment_ids["flaky"])
    assert run.run_count == 2
    assert "AwaitingRetry" in [s.name for s in client.read_flow_run_states(run.id)]


def test_a_run_executed_in_the_container_can_be_suspended_from_outside(
    stack: Stack, client: SyncPrefectClient
) -> None:
    """Prefect's ``suspend_flow_run`` reaches the run at its next task, through the container's one observer."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.flow_runs import suspend_flow_run

    run_id = uuid.UUID(stack.http.post("/invoke/SubmitOpacaTestSteps", json={"count": 20, "seconds": 0.3}).json())
    eventually(lambda: client.read_flow_run(run_id).state_name, lambda name: name == "Running")
    time.sleep(0.5)

    suspend_flow_run(flow_run_id=run_id, timeout=60)

    status = eventually(lambda: stack.http.post("/invoke/GetRunStatus", json={"run_id": str(run_id)}).json(),
                        lambda s: s["stateName"] == "Suspended", timeout=15)
    assert status["state"] == "PAUSED" and status["final"] is False
    time.sleep(1.0)
    done = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id])))
    assert 0 < len(done) < 20  # it stopped between two tasks, and stays stopped
    assert client.read_flow_run(run_id).state_name == "Suspended"


def test_a_run_executed_in_the_container_and_cancelled_stops_at_its_next_task(
    stack: Stack, client: SyncPrefectClient
) -> None:
    """Cancel in the UI (Cancelling through the API): the thread cannot be killed, so the run stops between tasks."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.states import Cancelling

    run_id = stack.http.post("/invoke/SubmitOpacaTestSteps", json={"count": 20, "seconds": 0.3}).json()
    eventually(lambda: client.read_flow_run(uuid.UUID(run_id)).state_name, lambda name: name == "Running")
    time.sleep(0.5)

    client.set_flow_run_state(uuid.UUID(run_id), Cancelling())

    answer = stack.http.post("/invoke/GetRunResult", json={"run_id": run_id}, params={"timeout": 20})
    assert answer.status_code == 500
    assert f"flow run {run_id} ended Cancelled" in error(answer)
    done = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(
        any_=[uuid.UUID(run_id)])))
    assert 0 < len(done) < 20


def test_a_deployment_added_while_serving_becomes_an_action_and_the_platform_is_told(
    stack: Stack, client: SyncPrefectClient
) -> None:
    notified = len(stack.platform.notifies)
    late = opaca_flows.double.to_deployment(name="late", tags=["opaca", "opaca:LateDouble"]).apply()
    try:
        assert eventually(lambda: set(actions(stack)), lambda names: "LateDouble" in names, timeout=10)
        assert "LateDouble" in eventually(lambda: stack.platform.notifies[notified:],
                                          lambda seen: any("LateDouble" in n for n in seen), timeout=10)[-1]
        assert stack.http.post("/invoke/LateDouble", json={"x": 4}).json() == 8
    finally:
        client.delete_deployment(late)
    assert "LateDouble" not in eventually(lambda: set(actions(stack)), lambda names: "LateDouble" not in names,
                                          timeout=10)
    assert eventually(lambda: stack.platform.notifies, lambda seen: "LateDouble" not in seen[-1], timeout=10)


def test_info_does_not_wait_for_prefect(stack: Stack) -> None:
    """Deployments are read in the background: /info answers from the cache while runs and refreshes go on."""
    submitted = [stack.http.post("/invoke/SubmitOpacaTestSleep", json={"seconds": 1}).json() for _ in range(3)]
    timings = []
    for _ in range(20):
        started = time.monotonic()
        assert stack.http.get("/info").status_code == 200
        timings.append(time.monotonic() - started)
    assert statistics.median(timings) < 0.05, timings
    for run_id in submitted:
        assert stack.http.post("/invoke/GetRunResult", json={"run_id": run_id}).json() == "slept 1.0 s"


# --- the runner path, and the round trip -------------------------------------------------------------------


SERVE = """
from prefect import serve
from tests.prefect.opaca_flows import delayed_retries, double
serve(double.to_deployment(name="served", tags=["opaca", "opaca:ServedDouble"]),
      delayed_retries.to_deployment(name="served", tags=["opaca"]), limit=4)
"""


@contextlib.contextmanager
def served(prefect_server: str) -> Iterator[subprocess.Popen[str]]:
    """``prefect.serve`` of two test flows in a subprocess, tuned as the anchor's measurement (poll every 1 s)."""
    env = os.environ | {"PREFECT_API_URL": prefect_server, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    process = subprocess.Popen([sys.executable, "-c", SERVE], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(process.stdout or []), daemon=True).start()
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        if os.environ.get("FLOWMAS_TEST_SHOW_SERVE"):
            print("".join(output))


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_runs_execute_on_the_runner_when_they_cannot_here_and_the_round_trip_beats_run_deployment(
    stack: Stack, client: SyncPrefectClient, prefect_server: str
) -> None:
    calls = int(os.environ.get("FLOWMAS_ROUND_TRIP_CALLS", "3"))
    with served(prefect_server):
        found = eventually(lambda: set(actions(stack)), lambda names: {"ServedDouble", "OpacaTestDelayedRetries"}
                           <= names, timeout=60)
        assert {"ServedDouble", "OpacaTestDelayedRetries"} <= found
        served_id = client.read_deployment_by_name("opaca-test-double/served").id
        eventually(lambda: client.read_deployment(served_id).last_polled, lambda polled: polled is not None,
                   timeout=60)

        # A flow that retries after a delay executes on its runner (a subprocess), never in the container.
        remote = stack.http.post("/invoke/OpacaTestDelayedRetries", json={"x": 5})
        assert remote.status_code == 200, remote.text
        assert remote.json() == 5
        [run] = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
            any_=[client.read_deployment_by_name("opaca-test-delayed-retries/served").id])))
        names = [state.name for state in client.read_flow_run_states(run.id)]
        assert names[0] == "Scheduled" and "AwaitingContainer" not in names  # fetched and run by the runner

        baseline = []
        for i in range(calls):
            started = time.monotonic()
            flow_run = run_deployment("opaca-test-double/served", parameters={"x": i}, timeout=120,
                                      poll_interval=0.2, as_subflow=False)
            assert flow_run.state is not None and flow_run.state.result() == 2 * i
            baseline.append(time.monotonic() - started)
        ours = []
        for i in range(2 * calls):
            started = time.monotonic()
            assert stack.http.post("/invoke/ServedDouble", json={"x": i}).json() == 2 * i
            ours.append(time.monotonic() - started)
    base_p50, our_p50 = statistics.median(baseline), statistics.median(ours)
    print(f"\nround trip of opaca-test-double/served: run_deployment + served flow (PREFECT_RUNNER_POLL_FREQUENCY=1, "
          f"poll_interval=0.2) p50 {base_p50:.3f} s (min {min(baseline):.3f}, max {max(baseline):.3f}, n={calls}); "
          f"POST /invoke/ServedDouble p50 {our_p50:.3f} s (min {min(ours):.3f}, max {max(ours):.3f}, "
          f"n={2 * calls}); ratio {our_p50 / base_p50:.2f}")
    assert our_p50 < 0.5 * base_p50, (ours, baseline)
