"""The asset flows, run for real against the session's Prefect server and the local HTTP file server.

What Prefect records is read back through its API: task-run state histories (retries, ``Cached``), flow-run
parameters and artifacts. Task-run states reach the API through events, a moment after the flow returns,
so those reads poll. Retry delays are 0 so retries cost nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from prefect.blocks.system import Secret
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.states import State

from blocks import FlowmasAssets, register_blocks
from flowmas.assets.manager import AssetManager
from flowmas.settings import load_project
from flows.assets import cleanup_cache, clear_asset_cache, download_assets, verify_assets
from tasks.assets import download_asset
from tests.prefect.support import DATA, PATH, eventually, final_task_runs, http_asset, write_project
from tests.servers.http_files import FileServer, drop_after, ok, status

pytestmark = pytest.mark.prefect


# --- helpers ----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _server(prefect_server: str) -> str:
    return prefect_server


@pytest.fixture
def client() -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as c:
        yield c


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
    [run] = final_task_runs(client, state.state_details.flow_run_id)
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
    assert "1 of 1 assets failed to download:\n- model: Asset 'model': " in (state.message or "")
    assert "answered 401 Unauthorized" in (state.message or "")
    assert gets(http_server) == 1
    [run] = final_task_runs(client, state.state_details.flow_run_id)
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
    assert "1 of 2 assets failed to download:\n- gone: Asset 'gone': " in (state.message or "")
    assert "answered 404 Not Found" in (state.message or "")
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
    [run] = final_task_runs(client, second.state_details.flow_run_id)
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
    [run] = final_task_runs(client, again.state_details.flow_run_id)
    assert run.state.name == "Completed"
    [row] = again.result()
    assert row["status"] == "fetched" and Path(row["detail"]).read_bytes() == DATA

    third = run_flow(download_assets, project_file=str(project))
    [run] = final_task_runs(client, third.state_details.flow_run_id)
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


def test_a_servers_retry_after_is_honoured_by_prefect_retries(
    tmp_path: Path, http_server: FileServer, client: SyncPrefectClient
) -> None:
    http_server.add(PATH, DATA)
    http_server.script(PATH, status(429, headers={"Retry-After": "2"}))
    project = write_project(tmp_path, [http_asset(http_server, retries=1)])  # planned delay: 0 s

    state = run_flow(download_assets, project_file=str(project))

    assert state.is_completed(), state
    first, second = http_server.requests_for(PATH)
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 2.0


def test_flowmas_log_lines_reach_the_run_logs(tmp_path: Path, http_server: FileServer,
                                              client: SyncPrefectClient) -> None:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    http_server.add(PATH, DATA)
    project = write_project(tmp_path, [http_asset(http_server)])

    state = run_flow(download_assets, project_file=str(project))

    flow_run_id = state.state_details.flow_run_id
    logs = eventually(
        lambda: client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))),
        lambda found: any(log.name == "flowmas.assets" for log in found))
    fetched = [log for log in logs if log.name == "flowmas.assets"]
    assert len(fetched) == 1 and fetched[0].message.startswith("Fetched model (http: ")
    assert fetched[0].task_run_id is not None  # attached to the download task's run, not just the flow


def test_progress_artifacts_say_how_downloads_ended(tmp_path: Path, http_server: FileServer,
                                                    client: SyncPrefectClient) -> None:
    big = os.urandom(3 * 2**20)
    http_server.add(PATH, big)
    http_server.add("/files/b.bin", big)
    http_server.script(PATH, drop_after(2**20))
    http_server.script("/files/b.bin", status(404))
    project = write_project(tmp_path, [http_asset(http_server, retries=0),
                                       http_asset(http_server, "b", "/files/b.bin")])

    state = run_flow(download_assets, project_file=str(project))

    assert state.is_failed()
    artifacts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))}
    flow_progress = artifacts["download-assets-progress"]
    assert flow_progress.description == "2 of 2 assets finished: 0 ready, 2 failed"
    model = artifacts["asset-progress-model"]
    assert model.description is not None and model.description.startswith("Failed: Asset 'model': ")
    assert "ended the body after 1048576 of 3145728 bytes" in model.description


# --- artifacts and secrets --------------------------------------------------------------------------


def test_the_table_artifact_lists_each_asset(
    tmp_path: Path, http_server: FileServer, client: SyncPrefectClient
) -> None:
    http_server.add(PATH, DATA)
    project = write_project(tmp_path, [http_asset(http_server)])

    state = run_flow(download_assets, project_file=str(project))

    [row] = artifact_rows(client, state.state_details.flow_run_id, "download-assets")
    assert list(row)[:3] == ["asset", "status", "detail"]  # what matters first: never cut off at the end
    assert row["asset"] == "model" and row["version"] == "v1" and row["status"] == "fetched"
    assert row["bytes"] == len(DATA) and row["size"] == "146.5 KiB" and row["seconds"] >= 0
    assert row["source"] == f"http: {http_server.url_for(PATH)}"


def test_url_credentials_and_signatures_never_reach_artifacts_or_logs(
    tmp_path: Path, http_server: FileServer, client: SyncPrefectClient
) -> None:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    http_server.add(PATH, DATA, require_headers={"Authorization": "Basic dXNlcjpodW50ZXIy"})  # user:hunter2
    host = http_server.url.removeprefix("http://")
    signed = {"name": "model", "version": "v1", "retry_delay_seconds": 0, "retries": 1,
              "source": {"type": "http", "url": f"http://user:hunter2@{host}{PATH}?X-Amz-Signature=cafef00d"}}
    http_server.script(PATH, status(503))  # a retry, so the failure path logs the URL too
    project = write_project(tmp_path, [signed])

    state = run_flow(download_assets, project_file=str(project))

    assert state.is_completed(), state
    flow_run_id = state.state_details.flow_run_id
    [row] = artifact_rows(client, flow_run_id, "download-assets")
    assert row["source"] == f"http: http://{host}{PATH}?…"
    logs = eventually(
        lambda: client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))),
        lambda found: any(log.name == "flowmas.assets" for log in found))
    shown = json.dumps([row, [log.message for log in logs], client.read_flow_run(flow_run_id).parameters])
    assert "hunter2" not in shown and "cafef00d" not in shown


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
    runs = final_task_runs(client, flow_run_id)
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
    assert "1 of 2 assets failed to verify:\n- model: " in (state.message or "")
    assert "other" not in (state.message or "").split("verify:")[1]


def test_cleanup_cache_evicts_an_undeclared_entry_and_expired_result_files(
    tmp_path: Path, http_server: FileServer, client: SyncPrefectClient
) -> None:
    http_server.add(PATH, DATA)
    http_server.add("/files/old.bin", b"old")
    old_asset = http_asset(http_server, "old", "/files/old.bin")
    both = write_project(tmp_path, [http_asset(http_server), old_asset])
    assert run_flow(download_assets, project_file=str(both)).is_completed()
    only_model = write_project(tmp_path, [http_asset(http_server)])  # the project drops "old"
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
    assert register_blocks() == ["flowmas-assets", "local-file-storage", "s3-file-storage", "memory-file-storage",
                                 "redis-cache", "embedded-cache", "anthropic-model", "openai-model",
                                 "bedrock-model", "vertex-model"]
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
