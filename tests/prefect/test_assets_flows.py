"""The asset flows, run for real against the session's Prefect server and the local HTTP file server.

What Prefect records is read back through its API: task-run state histories (retries, ``Cached``), flow-run
parameters and artifacts. Task-run states reach the API through events, a moment after the flow returns,
so those reads poll. Retry delays are 0 so retries cost nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import httpx
import pytest
import yaml
from prefect import flow
from prefect.blocks.system import Secret
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import TaskRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import State

from blocks import FlowmasAssets, register_blocks
from flowmas.assets.manager import AssetManager
from flowmas.errors import ConfigurationError
from flowmas.settings import load_project
from flows.assets import cleanup_cache, clear_asset_cache, download_assets, verify_assets
from flows.serve import PrefectServer, ServiceStartError, read_deployments, run_services
from tasks.assets import download_asset
from tests.servers.http_files import FileServer, ok, status

pytestmark = pytest.mark.prefect

REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")
DATA = os.urandom(150_000)
PATH = "/files/model.bin"


# --- helpers ----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _server(prefect_server: str) -> str:
    return prefect_server


@pytest.fixture
def client() -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as c:
        yield c


def write_project(directory: Path, assets: list[dict[str, Any]], *, name: str = "flowmas.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / name
    file.write_text(yaml.safe_dump({"name": "test", "assets": assets,
                                    "settings": {"assets": {"cache_dir": str(directory / "cache")}}}))
    return file


def http_asset(server: FileServer, name: str = "model", path: str = PATH, **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": "v1", "retries": 2, "retry_delay_seconds": 0,
            "source": {"type": "http", "url": server.url_for(path)}, **extra}


def eventually(read: Callable[[], T], done: Callable[[T], bool], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def task_runs(client: SyncPrefectClient, flow_run_id: UUID) -> list[TaskRun]:
    """The flow run's task runs, once all of them are final in the API."""
    return eventually(
        lambda: client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))),
        lambda runs: bool(runs) and all(r.state is not None and r.state.is_final() for r in runs),
    )


def state_names(client: SyncPrefectClient, task_run_id: UUID) -> list[str]:
    return [s.name for s in client.read_task_run_states(task_run_id)]


def artifact_rows(client: SyncPrefectClient, flow_run_id: UUID, key: str) -> list[dict[str, Any]]:
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])))
    assert len(artifacts) == 1, artifacts
    data = artifacts[0].data
    return json.loads(data) if isinstance(data, str) else data  # type: ignore[return-value]


def run_flow(flow_function: Callable[..., Any], **parameters: Any) -> State:
    """Run a flow in this process against the session's server and return its final state."""
    return flow_function(return_state=True, **parameters)  # type: ignore[no-any-return]


def gets(server: FileServer, path: str = PATH) -> int:
    return len(server.requests_for(path))


def cached_path(project_file: Path, name: str = "model") -> Path | None:
    with AssetManager(load_project(project_file)) as manager:
        return manager.status(name).path


# --- downloads, retries, failures -------------------------------------------------------------------


def test_transient_errors_are_retried_by_prefect_until_the_download_completes(
    tmp_path: Path, http_server: FileServer, client: SyncPrefectClient
) -> None:
    http_server.add(PATH, DATA)
    http_server.script(PATH, status(503), status(503), ok())
    project = write_project(tmp_path, [http_asset(http_server)])

    state = run_flow(download_assets, project_file=str(project))

    assert state.is_completed(), state
    assert gets(http_server) == 3
    [run] = task_runs(client, state.state_details.flow_run_id)
    names = state_names(client, run.id)
    assert sum(n in ("Retrying", "AwaitingRetry") for n in names) == 2, names
    assert run.state.name == "Completed"
    path = cached_path(project)
    assert path is not None and path.read_bytes() == DATA
    [row] = state.result()
    assert row["status"] == "fetched" and row["bytes"] == len(DATA) and row["detail"] == str(path)


def test_an_authentication_error_is_not_retried_and_fails_the_flow(
    tmp_path: Path, http_server: FileServer, client: SyncPrefectClient
) -> None:
    http_server.add(PATH, DATA)
    http_server.script(PATH, status(401))
    project = write_project(tmp_path, [http_asset(http_server)])

    state = run_flow(download_assets, project_file=str(project))

    assert state.is_failed()
    assert "1 of 1 assets failed to download: model: AuthenticationError" in (state.message or "")
    assert gets(http_server) == 1
    [run] = task_runs(client, state.state_details.flow_run_id)
    assert run.state.name == "Failed"
    assert not any(n in ("Retrying", "AwaitingRetry") for n in state_names(client, run.id))
    assert cached_path(project) is None
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_one_failed_asset_fails_the_flow_after_the_others_finished(
    tmp_path: Path, http_server: FileServer, client: SyncPrefectClient
) -> None:
    http_server.add(PATH, DATA)
    http_server.add("/files/missing.bin", b"")
    http_server.script("/files/missing.bin", status(404))
    gone = http_asset(http_server, "gone", "/files/missing.bin")
    project = write_project(tmp_path, [http_asset(http_server), gone])

    state = run_flow(download_assets, project_file=str(project), max_concurrency=1)

    assert state.is_failed()
    assert "1 of 2 assets failed to download: gone: SourceNotFoundError" in (state.message or "")
    assert cached_path(project) is not None and cached_path(project, "gone") is None
    rows = artifact_rows(client, state.state_details.flow_run_id, "download-assets")
    assert {r["asset"]: r["status"] for r in rows} == {"model": "fetched", "gone": "failed"}


def test_an_unknown_asset_name_fails_before_anything_is_downloaded(
    tmp_path: Path, http_server: FileServer
) -> None:
    http_server.add(PATH, DATA)
    project = write_project(tmp_path, [http_asset(http_server)])

    state = run_flow(download_assets, names=["model", "nope"], project_file=str(project))

    assert state.is_failed() and "Unknown asset 'nope'" in (state.message or "")
    assert gets(http_server) == 0


# --- caching ----------------------------------------------------------------------------------------


def test_a_rerun_is_cached_by_prefect_without_a_request(
    tmp_path: Path, http_server: FileServer, client: SyncPrefectClient
) -> None:
    http_server.add(PATH, DATA)
    project = write_project(tmp_path, [http_asset(http_server)])
    first = run_flow(download_assets, project_file=str(project))
    assert first.is_completed()

    second = run_flow(download_assets, project_file=str(project))

    assert second.is_completed()
    [run] = task_runs(client, second.state_details.flow_run_id)
    assert run.state.name == "Cached"
    assert gets(http_server) == 1
    [row] = second.result()
    assert row["status"] == "cached" and Path(row["detail"]).read_bytes() == DATA


def test_after_clear_asset_cache_a_rerun_downloads_again(
    tmp_path: Path, http_server: FileServer, client: SyncPrefectClient
) -> None:
    http_server.add(PATH, DATA)
    project = write_project(tmp_path, [http_asset(http_server)])
    assert run_flow(download_assets, project_file=str(project)).is_completed()

    cleared = run_flow(clear_asset_cache, names=["model"], project_file=str(project))
    assert cleared.result() == ["model"] and cached_path(project) is None

    again = run_flow(download_assets, project_file=str(project))
    assert again.is_completed()
    assert gets(http_server) == 2
    [run] = task_runs(client, again.state_details.flow_run_id)
    assert run.state.name == "Completed"
    [row] = again.result()
    assert row["status"] == "fetched" and Path(row["detail"]).read_bytes() == DATA

    third = run_flow(download_assets, project_file=str(project))
    [run] = task_runs(client, third.state_details.flow_run_id)
    assert run.state.name == "Cached" and gets(http_server) == 2


def test_the_task_alone_never_returns_a_deleted_path(tmp_path: Path, http_server: FileServer) -> None:
    """Without the flow's refresh: a file deleted behind Prefect's back is fetched again, never read back."""
    http_server.add(PATH, DATA)
    project = write_project(tmp_path, [http_asset(http_server)])

    @flow
    def fetch_twice_with_rm_between() -> tuple[str, str]:
        first = download_asset(name="model", project_file=str(project))
        Path(first["path"]).unlink()
        second = download_asset(name="model", project_file=str(project), return_state=True)
        return second.name, second.result()["path"]  # type: ignore[return-value]

    name, path = fetch_twice_with_rm_between()

    assert name == "Completed" and Path(path).read_bytes() == DATA
    assert gets(http_server) == 2


# --- artifacts and secrets --------------------------------------------------------------------------


def test_the_table_artifact_lists_each_asset(
    tmp_path: Path, http_server: FileServer, client: SyncPrefectClient
) -> None:
    http_server.add(PATH, DATA)
    project = write_project(tmp_path, [http_asset(http_server)])

    state = run_flow(download_assets, project_file=str(project))

    [row] = artifact_rows(client, state.state_details.flow_run_id, "download-assets")
    assert row["asset"] == "model" and row["version"] == "v1" and row["status"] == "fetched"
    assert row["bytes"] == len(DATA) and row["size"] == "146.5 KiB" and row["seconds"] >= 0
    assert row["source"] == f"http: {http_server.url_for(PATH)}"


@pytest.mark.parametrize("strategy", ["env_token", "prefect_secret"])
def test_tokens_never_reach_parameters_or_artifacts(
    strategy: str,
    tmp_path: Path,
    http_server: FileServer,
    client: SyncPrefectClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = f"tok-{strategy}-{os.urandom(8).hex()}"
    http_server.add(PATH, DATA, require_headers={"Authorization": f"Bearer {token}"})
    if strategy == "env_token":
        monkeypatch.setenv("MODEL_TOKEN", token)
        auth = {"strategy": "env_token", "http": {"token_env_var": "MODEL_TOKEN"}}
    else:
        Secret(value=token).save("model-token", overwrite=True)
        auth = {"strategy": "prefect_secret", "block": "model-token"}
    project = write_project(tmp_path, [http_asset(http_server, authentication=auth)])

    state = run_flow(download_assets, project_file=str(project))

    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id
    flow_run = client.read_flow_run(flow_run_id)
    runs = task_runs(client, flow_run_id)
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert {a.key for a in artifacts} >= {"download-assets", "download-assets-progress"}
    seen = json.dumps([flow_run.model_dump(mode="json"), [r.model_dump(mode="json") for r in runs],
                       [a.model_dump(mode="json") for a in artifacts], state.result()])
    assert token not in seen
    assert "model" in seen  # the dump really holds the run's data


# --- verify, cleanup, blocks ------------------------------------------------------------------------


def test_verify_assets_fails_naming_a_tampered_asset(tmp_path: Path, http_server: FileServer) -> None:
    http_server.add(PATH, DATA)
    http_server.add("/files/other.bin", b"other")
    other = http_asset(http_server, "other", "/files/other.bin")
    project = write_project(tmp_path, [http_asset(http_server), other])
    assert run_flow(download_assets, project_file=str(project)).is_completed()
    path = cached_path(project)
    assert path is not None
    os.chmod(path, 0o644)
    with open(path, "r+b") as file:  # same size, different bytes
        file.write(b"X")

    state = run_flow(verify_assets, project_file=str(project))

    assert state.is_failed()
    assert "1 of 2 assets failed to verify: model: " in (state.message or "")
    assert "other" not in (state.message or "").split("verify:")[1]


def test_cleanup_cache_evicts_an_undeclared_entry_and_expired_result_files(
    tmp_path: Path, http_server: FileServer, client: SyncPrefectClient
) -> None:
    http_server.add(PATH, DATA)
    http_server.add("/files/old.bin", b"old")
    old_asset = http_asset(http_server, "old", "/files/old.bin")
    both = write_project(tmp_path, [http_asset(http_server), old_asset])
    assert run_flow(download_assets, project_file=str(both)).is_completed()
    only_model = write_project(tmp_path, [http_asset(http_server)], name="flowmas-next.yaml")
    results = tmp_path / "results"
    results.mkdir()
    (results / "expired").write_text("{}")
    (results / "recent").write_text("{}")
    old = time.time() - 40 * 86400
    os.utime(results / "expired", (old, old))

    state = run_flow(cleanup_cache, project_file=str(only_model), result_dir=str(results))

    assert state.is_completed(), state.message
    assert not (tmp_path / "cache/model/old/v1").exists()
    assert cached_path(only_model) is not None
    assert not (results / "expired").exists() and (results / "recent").exists()
    rows = artifact_rows(client, state.state_details.flow_run_id, "cleanup-cache")
    first = {k: v for k, v in rows[0].items() if k != "bytes"}
    assert first == {"what": "model/old/v1", "action": "evicted", "reason": "not declared"}
    assert rows[-1]["action"] == "removed 1 files"


def test_a_saved_flowmas_assets_block_configures_the_flows(
    tmp_path: Path, http_server: FileServer, client: SyncPrefectClient
) -> None:
    assert register_blocks() == ["flowmas-assets"]
    assert client.read_block_type_by_slug("flowmas-assets").name == "Flowmas Assets"
    http_server.add(PATH, DATA)
    project = write_project(tmp_path / "proj", [http_asset(http_server)])
    FlowmasAssets(project_file=str(project), cache_dir=str(tmp_path / "elsewhere"), max_concurrency=2).save(
        "test-block", overwrite=True)

    state = run_flow(download_assets, block="test-block")

    assert state.is_completed()
    [row] = state.result()
    assert Path(row["detail"]).is_relative_to(tmp_path / "elsewhere")
    assert FlowmasAssets.load("test-block").manager().status("model").status == "cached"


# --- prefect.yaml ----------------------------------------------------------------------------------


def test_prefect_yaml_deploys_with_prefect_deploy_all(prefect_server: str, client: SyncPrefectClient) -> None:
    with contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name="flowmas", type="process"))
    env = os.environ | {"PREFECT_API_URL": prefect_server}

    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    for flow_name in ("download-assets", "verify-assets", "clear-asset-cache", "cleanup-cache"):
        deployment = client.read_deployment_by_name(f"{flow_name}/default")
        assert deployment.work_pool_name == "flowmas"
        assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
            "directory": "{{ $FLOWMAS_REPO }}"}}]
    cleanup = client.read_deployment_by_name("cleanup-cache/default")
    assert [getattr(s.schedule, "cron", None) for s in cleanup.schedules] == ["15 3 * * *"]
    assert cleanup.global_concurrency_limit is not None and cleanup.global_concurrency_limit.limit == 1
    assert cleanup.parameters == {"max_unused_days": 30, "part_max_age_hours": 24, "result_max_age_days": 30}


# --- flowmas up -------------------------------------------------------------------------------------


class Output:
    """Lines a child process prints, collected by a thread so the test never blocks on a pipe."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        match = eventually(lambda: re.search(pattern, self.text), lambda m: m is not None, timeout=timeout)
        assert match is not None, f"{pattern!r} not printed within {timeout} s:\n{self.text}"
        return match


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_flowmas_up_serves_prefect_yaml_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, http_server: FileServer
) -> None:
    """The real thing: its own Prefect server, the deployments of prefect.yaml, a run, then Ctrl-C."""
    http_server.add(PATH, DATA)
    project = write_project(tmp_path / "project", [http_asset(http_server)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"FLOWMAS_HOME": str(tmp_path / "home"), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flowmas.cli", "up", "--project", str(project), "--port", "0"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    try:
        ui_url = output.wait_for(r"Prefect UI at (http://127\.0\.0\.1:\d+)", timeout=120).group(1)
        output.wait_for(r"serving download-assets/default, verify-assets/default, clear-asset-cache/default, "
                        r"cleanup-cache/default", timeout=30)
        with temporary_settings(updates={PREFECT_API_URL: f"{ui_url}/api"}):
            with get_client(sync_client=True) as client:
                deployment = eventually(lambda: _deployment_or_none(client, "cleanup-cache/default"),
                                        lambda d: d is not None)
                assert deployment is not None, output.text
                assert deployment.global_concurrency_limit is not None
                assert deployment.global_concurrency_limit.limit == 1
                options = deployment.concurrency_options
                assert options is not None and options.collision_strategy == "CANCEL_NEW"
                crons = [getattr(s.schedule, "cron", None) for s in deployment.schedules]
                assert crons == ["15 3 * * *"]
            run = run_deployment("download-assets/default", parameters={"names": ["model"]}, timeout=90,
                                 poll_interval=0.5, as_subflow=False)
            assert run.state is not None and run.state.is_completed(), (run.state, output.text)
            [row] = run.state.result()
        assert row["status"] == "fetched" and Path(row["detail"]).read_bytes() == DATA
        assert Path(row["detail"]).is_relative_to(tmp_path / "project/cache")
        assert (tmp_path / "home/prefect/prefect.db").exists()  # the server's SQLite lives under FLOWMAS_HOME

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, output.text
        assert "flowmas up: stopped serving" in output.text
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{ui_url}/api/health", timeout=2)
    finally:
        if process.poll() is None:  # SIGTERM takes the same clean path (and stops the server)
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def _deployment_or_none(client: SyncPrefectClient, name: str) -> Any:
    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def test_a_server_that_cannot_start_is_reported_and_leaves_nothing_running(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = PrefectServer(home=tmp_path / "prefect", port=taken.getsockname()[1], timeout=60)

        expected = r"exited with code \d+ while starting; see .*server\.log"
        with pytest.raises(ServiceStartError, match=expected):
            server.start()

    assert server._process is None and server._log is None
    assert "already in use" in server.log_path.read_text()


def test_services_started_before_a_failure_are_stopped_in_reverse(tmp_path: Path) -> None:
    events: list[str] = []

    @dataclass
    class Fake:
        name: str
        fail: bool = False

        def start(self) -> None:
            if self.fail:
                raise ServiceStartError(f"{self.name} failed")
            events.append(f"start {self.name}")

        def stop(self) -> None:
            events.append(f"stop {self.name}")

    with pytest.raises(ServiceStartError, match="c failed"):
        run_services([Fake("a"), Fake("b"), Fake("c", fail=True)], lambda: events.append("serve"))

    assert events == ["start a", "start b", "stop b", "stop a"]


def test_prefect_yaml_entries_without_an_entrypoint_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "prefect.yaml"
    broken.write_text(yaml.safe_dump({"deployments": [{"name": "default"}]}))

    with pytest.raises(ConfigurationError, match=r"deployments\[0\] needs 'name' and 'entrypoint'"):
        read_deployments(broken)
    assert [d.entrypoint for d in read_deployments(REPO / "prefect.yaml")] == [
        "flows/assets.py:download_assets", "flows/assets.py:verify_assets",
        "flows/assets.py:clear_asset_cache", "flows/assets.py:cleanup_cache"]
