"""The file-service flows and tasks, run for real against the session's Prefect server (and moto's S3 server).

``expire-files`` sweeps a volume store named by a project file or by a saved ``LocalFileStorage`` block; files
that must have expired are uploaded by a ``FileService`` on the same store whose clock runs two hours behind
(the real service, told the time differently). What Prefect records (task runs, artifacts) is read back
through its API.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.states import State
from pydantic import SecretStr

from blocks import LocalFileStorage, S3FileStorage, register_blocks
from flowmas.errors import FileStorageError, TransientFileStorageError
from flowmas.files import FileService
from flowmas.files.storage.s3 import S3StorageManager
from flowmas.settings import load_project
from flows.files import expire_files, ingest_directory
from tasks.files import ingest_files, transient_storage_error, upload_file
from tests.prefect.support import REPO, final_task_runs
from tests.servers.s3 import CREDENTIALS, S3Server
from up.deployments import read_deployments

pytestmark = pytest.mark.prefect


@pytest.fixture(autouse=True)
def _server(prefect_server: str) -> str:
    return prefect_server


@pytest.fixture
def client() -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as c:
        yield c


@pytest.fixture
def project(tmp_path: Path) -> Path:
    file = tmp_path / "flowmas.yaml"
    file.write_text(json.dumps({"name": "files-flows", "services": {"file_service": {
        "type": "volume", "config": {"volume": {"directory": str(tmp_path / "store")}}}}}))
    return file


def artifact_rows(client: SyncPrefectClient, flow_run_id: UUID, key: str) -> list[dict[str, Any]]:
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])))
    assert len(artifacts) == 1, artifacts
    data = artifacts[0].data
    return json.loads(data) if isinstance(data, str) else data  # type: ignore[return-value]


def fill(service_of: Any, session: str) -> tuple[list[str], list[str]]:
    """Two files that expired two hours ago and one fresh file in ``session``; (expired urls, fresh urls)."""
    with service_of(clock=lambda: time.time() - 7200) as past:
        old = [past.upload_from_buffer_sync(f"old {i}".encode(), f"old-{i}.txt", session, ttl=60)["url"]
               for i in range(2)]
    with service_of() as now:
        fresh = [now.upload_from_buffer_sync(b"fresh", "fresh.txt", session, ttl=3600)["url"]]
    return old, fresh


def test_expire_files_deletes_what_expired_keeps_the_rest_and_reports_a_table(
    project: Path, client: SyncPrefectClient
) -> None:
    def service_of(**options: Any) -> FileService:
        return FileService.from_config(project=load_project(project), **options)

    old, fresh = fill(service_of, "session-secret-id")

    state: State[Any] = expire_files(project_file=str(project), return_state=True)

    assert state.is_completed()
    summary = state.result()
    assert summary["deleted"] == 2 and summary["bytes_freed"] == 10 and summary["errors"] == 0
    with service_of() as service:
        assert [md["url"] for md in service.list_files_sync("session-secret-id")] == fresh
        assert not list((project.parent / "store").rglob("*old*"))
    rows = artifact_rows(client, state.state_details.flow_run_id, "expire-files")
    assert rows[0] == {"what": "expired files", "count": 2, "bytes": 10, "action": "deleted",
                       "reason": "their time to live had passed"}
    text = json.dumps(rows)
    assert "session-secret-id" not in text and old[0][7:39] not in text  # no session id, no whole key

    again = expire_files(project_file=str(project), return_state=True)
    assert again.result()["deleted"] == 0
    assert artifact_rows(client, again.state_details.flow_run_id, "expire-files")[0]["what"] == "(nothing had expired)"


def test_expire_files_sweeps_the_store_of_a_saved_storage_block(tmp_path: Path) -> None:
    register_blocks()
    LocalFileStorage(directory=str(tmp_path / "block-store")).save("files-test-store", overwrite=True)

    def service_of(**options: Any) -> FileService:
        return FileService(LocalFileStorage(directory=str(tmp_path / "block-store")).storage(), **options)

    _, fresh = fill(service_of, "s")

    state: State[Any] = expire_files(storage_block="local-file-storage/files-test-store", return_state=True)

    assert state.is_completed(), state.message
    assert state.result()["deleted"] == 2
    with service_of() as service:
        assert [md["url"] for md in service.list_files_sync("s")] == fresh
    missing = expire_files(storage_block="no-such-block", return_state=True)
    assert missing.is_failed() and "No saved" in str(missing.message)


def test_prefect_yaml_schedules_expire_files_every_600_s_one_at_a_time() -> None:
    [spec] = [s for s in read_deployments(REPO / "prefect.yaml") if s.entrypoint == "flows/files.py:expire_files"]
    assert spec.name == "default" and spec.schedules == [{"interval": 600, "active": True}]
    assert spec.concurrency_limit == {"limit": 1, "collision_strategy": "CANCEL_NEW"}


def test_upload_and_ingest_tasks_in_a_flow(project: Path, tmp_path: Path, client: SyncPrefectClient) -> None:
    source = tmp_path / "incoming"
    (source / "sub").mkdir(parents=True)
    (source / "a.csv").write_bytes(b"x,y\n1,2\n")
    (source / "b.txt").write_bytes(b"bee")
    (source / "sub" / "c.txt").write_bytes(b"sea")
    (tmp_path / "single.json").write_text('{"k": [1, 2]}')

    @flow
    def move_data(session: str) -> dict[str, Any]:
        one = upload_file(str(tmp_path / "single.json"), session, ttl=600, data_source="a flow",
                          project_file=str(project))
        first = ingest_files(str(source), session, recursive=True, project_file=str(project))
        second = ingest_files(str(source), session, recursive=True, project_file=str(project))  # a repeat
        return {"one": one, "first": first, "second": second}

    state: State[Any] = move_data("flow-session", return_state=True)

    assert state.is_completed(), state.message
    result = state.result()
    assert result["one"]["filename"] == "single.json" and result["one"]["data_source"] == "a flow"
    assert [md["filename"] for md in result["first"]] == ["a.csv", "b.txt", "c.txt"]
    assert [md["url"] for md in result["second"]] == [md["url"] for md in result["first"]]  # nothing stored twice
    with FileService.from_config(project=load_project(project)) as service:
        held = service.list_files_sync("flow-session")
        assert sorted(md["filename"] for md in held) == ["a.csv", "b.txt", "c.txt", "single.json"]
        assert service.download_to_buffer_sync(result["first"][2]["url"], "flow-session") == b"sea"
    flow_run_id = state.state_details.flow_run_id
    runs = final_task_runs(client, flow_run_id, 3)
    assert len(runs) == 3
    assert sorted(r.name.split(" ")[0] for r in runs) == ["ingest", "ingest", "upload"]
    assert all(r.state is not None and r.state.name == "Completed" for r in runs)  # never "Cached"


def test_ingest_directory_flow_reports_a_table_without_session_ids(project: Path, tmp_path: Path,
                                                                   client: SyncPrefectClient) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f.txt").write_bytes(b"f")
    state: State[Any] = ingest_directory(str(tmp_path / "in"), "hidden-session", project_file=str(project),
                                         return_state=True)
    assert state.is_completed()
    [md] = state.result()
    assert md["filename"] == "f.txt" and "session_id" not in md
    rows = artifact_rows(client, state.state_details.flow_run_id, "ingest-files")
    assert rows[0]["file"] == "f.txt" and "hidden-session" not in json.dumps(rows)


def test_a_missing_path_fails_at_once_without_retries(project: Path, client: SyncPrefectClient) -> None:
    @flow
    def bad() -> None:
        upload_file("/nonexistent/file.bin", "s", project_file=str(project))

    state: State[Any] = bad(return_state=True)

    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    [run] = final_task_runs(client, flow_run_id)
    assert run.run_count == 1 and "no such file to upload" in str(run.state.message if run.state else "")


def test_only_transient_storage_errors_are_retried() -> None:
    unreachable = S3StorageManager("b", endpoint_url=f"http://127.0.0.1:{_closed_port()}", region="us-east-1",
                                   **{k: v for k, v in CREDENTIALS.items() if k.startswith("aws_")})

    async def write() -> None:
        try:
            await unreachable.write("0" * 32, [b"x"])
        finally:
            await unreachable.close()

    with pytest.raises(TransientFileStorageError, match="Cannot reach S3") as caught:
        asyncio.run(write())
    assert transient_storage_error(caught.value)
    assert not transient_storage_error(FileStorageError("The file store /x is not writable by this user"))
    assert not transient_storage_error(FileNotFoundError("gone"))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_upload_into_s3_through_a_saved_block(s3_server: S3Server, tmp_path: Path) -> None:
    s3_server.client().create_bucket(Bucket="flowmas-files")
    register_blocks()
    block = S3FileStorage(bucket="flowmas-files", prefix="t", endpoint_url=s3_server.url,
                          region=CREDENTIALS["region_name"],
                          aws_access_key_id=SecretStr(CREDENTIALS["aws_access_key_id"]),
                          aws_secret_access_key=SecretStr(CREDENTIALS["aws_secret_access_key"]))
    block.save("files-s3", overwrite=True)
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01" * 1000)

    @flow
    def to_s3() -> dict[str, Any]:
        return upload_file(str(tmp_path / "blob.bin"), "s3-session", storage_block="s3-file-storage/files-s3")

    state: State[Any] = to_s3(return_state=True)

    assert state.is_completed(), state.message
    metadata = state.result()
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="flowmas-files").get("Contents", [])]
    assert any(key.startswith("t/objects/") for key in keys), keys
    with S3FileStorage.load("files-s3").service() as service:
        assert service.download_to_buffer_sync(metadata["url"], "s3-session") == b"\x00\x01" * 1000
