"""The built-in Graphs agent over HTTP, in the container ``flowmas up`` assembles, against the session's Prefect server.

``ContainerService`` builds the container from the ``flowmas.agents`` entry points (the Graphs agent comes from its
one pyproject line) and runs deployment actions in process: ``RunGraph`` and ``SubmitGraph`` are real flow runs of
``run-agent-graph/default``, registered from prefect.yaml's own entry. The graph runs share the process's embedded
cache with the agent, so ``/send`` and ``/broadcast`` reach a running graph that waits on its mailboxes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.agents_api import assert_error
from tests.prefect.support import REPO
from up import ContainerService
from up.deployments import read_deployments, to_runner_deployment

pytestmark = pytest.mark.prefect


@pytest.fixture(scope="module")
def url(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("graphs-agent")
    project = directory / "flowmas.yaml"
    project.write_text(json.dumps({"name": "graphs-agent-test"}))
    [spec] = [s for s in read_deployments(REPO / "prefect.yaml") if s.entrypoint == "flows/graph.py:run_agent_graph"]
    to_runner_deployment(spec, REPO).apply()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOWMAS_SNAPSHOT_DIR", str(directory / "snapshots"))
        patch.delenv("FLOWMAS_CACHE_URL", raising=False)
        service = ContainerService(host="127.0.0.1", port=0, project_file=project)
        service.prepare()
        service.start()
        try:
            assert service.url is not None
            yield service.url
        finally:
            service.stop()


def invoke(url: str, action: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/invoke/{action}", json=body or {}, timeout=60)


def test_info_lists_the_graph_actions(url: str) -> None:
    info = httpx.get(f"{url}/agents/graphs").json()
    actions = {a["name"]: a for a in info["actions"]}
    assert sorted(actions) == ["PlanGraph", "RunGraph", "SubmitGraph", "SubmitRunGraph"]
    assert set(actions["RunGraph"]["parameters"]) == {"graph", "task"}


def test_plan_graph_answers_the_plan_in_process(url: str) -> None:
    answer = invoke(url, "PlanGraph", {"graph": "examples.research:graph"})
    assert answer.status_code == 200, answer.text
    plan = answer.json()
    assert plan.startswith("examples.research:graph: 7 nodes") and "level 1: plan" in plan
    assert "jumps: summarise if rounds < max_rounds" in plan


def test_run_graph_is_a_flow_run_of_the_deployment(url: str) -> None:
    task = {"id": f"http-{uuid.uuid4().hex[:8]}", "type": "research", "objective": "o", "params": {"topic": "lua"}}
    answer = invoke(url, "RunGraph", {"graph": "examples.research:graph", "task": task})
    assert answer.status_code == 200, answer.text
    output = answer.json()
    assert output["status"] == "complete"
    assert output["result"]["publish"]["results"][0]["result"]["topic"] == "lua"


def test_bad_graphs_and_tasks_are_400s_before_any_flow_run(url: str) -> None:
    task = {"type": "t", "objective": "o"}
    assert_error(invoke(url, "RunGraph", {"graph": "examples.nothing:graph", "task": task}), 400,
                 contains="cannot import module 'examples.nothing'")
    assert_error(invoke(url, "RunGraph", {"graph": "tests.graph_faces:not_an_agent", "task": task}), 400,
                 contains="is a int, not a flowmas.graph.Agent")
    assert_error(invoke(url, "SubmitGraph", {"graph": "examples.research:graph", "task": {"type": 3}}), 400,
                 contains="type: Input should be a valid string")
    assert_error(invoke(url, "PlanGraph", {"graph": "no colon"}), 400, contains="MODULE:ATTR")


def test_send_and_broadcast_reach_a_running_graph(url: str) -> None:
    channel = f"news-{uuid.uuid4().hex[:6]}"
    task = {"id": f"listen-{uuid.uuid4().hex[:8]}", "type": "t", "objective": "o", "params": {"channel": channel}}
    submitted = invoke(url, "SubmitGraph", {"graph": "tests.graph_faces:listener", "task": task})
    assert submitted.status_code == 200, submitted.text
    run_id = submitted.json()

    assert httpx.post(f"{url}/send/graphs", json={"payload": {"hello": "graph"}, "replyTo": "me"}).status_code == 200
    assert httpx.post(f"{url}/broadcast/{channel}", json={"payload": [1, 2]}).status_code == 200
    assert_error(httpx.post(f"{url}/send/nobody", json={"payload": 1}), 404)

    answer = invoke(url, "GetRunResult", {"run_id": run_id})  # waits for the run within the call's timeout
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]["listen"]["results"][0]["result"]
    assert result == {"sent": {"payload": {"hello": "graph"}, "replyTo": "me"},
                      "broadcast": {"payload": [1, 2], "replyTo": None}}
