"""The built-in Files agent over HTTP, in the container ``flowmas up`` assembles, against the session's Prefect server.

``ContainerService`` builds the container from the ``flowmas.agents`` entry points (so the Files agent comes from
its one pyproject line), serves it with uvicorn on 127.0.0.1 port 0, and runs deployment actions in process:
``ExpireFiles`` is a real flow run of ``expire-files/default``, registered from prefect.yaml's own entry. The store
is the test project's ``services.file_service`` volume (``read_max_bytes: 1000``). Files that must have expired are
uploaded by a ``FileService`` on the same store whose clock runs two hours behind.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from flowmas.files import FileService
from flowmas.settings import load_project
from tests.agents_api import assert_error
from tests.prefect.support import REPO
from up import ContainerService
from up.deployments import read_deployments, to_runner_deployment

pytestmark = pytest.mark.prefect

READ_MAX = 1000
CSV = b"name,score\nada,3\nbob,5\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("files-agent")
    file = directory / "flowmas.yaml"
    file.write_text(json.dumps({"name": "files-agent-test", "services": {"file_service": {
        "type": "volume", "read_max_bytes": READ_MAX, "config": {"volume": {"directory": "store"}}}}}))
    return file


@pytest.fixture(scope="module")
def expire_deployment(prefect_server: str) -> uuid.UUID:
    """expire-files/default as prefect.yaml declares it (interval schedule, limit 1 CANCEL_NEW), not served."""
    [spec] = [s for s in read_deployments(REPO / "prefect.yaml") if s.entrypoint == "flows/files.py:expire_files"]
    deployment = to_runner_deployment(spec, REPO)
    deployment.schedules = []  # registered without its schedule: no runner here, and no scheduled runs pile up
    deployment_id: uuid.UUID = deployment.apply()
    return deployment_id


@pytest.fixture(scope="module")
def url(project: Path, expire_deployment: uuid.UUID) -> Iterator[str]:
    service = ContainerService(host="127.0.0.1", port=0, project_file=project)
    service.prepare()
    service.start()
    try:
        assert service.url is not None
        yield service.url
    finally:
        service.stop()


def invoke(url: str, action: str, body: dict[str, Any] | None = None, **params: Any) -> httpx.Response:
    return httpx.post(f"{url}/invoke/{action}", json=body or {}, params=params, timeout=60)


def upload(url: str, data: bytes, name: str, session: str = "s1", **extra: Any) -> dict[str, Any]:
    answer = invoke(url, "UploadFile", {"content": base64.b64encode(data).decode(), "fileName": name,
                                        "sessionId": session, **extra})
    assert answer.status_code == 200, answer.text
    metadata: dict[str, Any] = answer.json()
    return metadata


def store(project: Path, **options: Any) -> FileService:
    """The agent's store, as another process sees it."""
    return FileService.from_config(project=load_project(project), **options)


def test_info_lists_the_files_actions_with_camel_case_parameters(url: str) -> None:
    info = httpx.get(f"{url}/agents/files").json()
    actions = {a["name"]: a for a in info["actions"]}
    assert sorted(actions) == ["DeleteFile", "ExpireFiles", "GetFileMetadata", "ListFiles", "ReadFile", "ShareFile",
                               "SubmitExpireFiles", "UploadFile"]
    assert set(actions["UploadFile"]["parameters"]) == {"content", "fileName", "sessionId", "ttl", "dataSource"}
    assert actions["UploadFile"]["parameters"]["ttl"]["required"] is False
    assert set(actions["ReadFile"]["parameters"]) == {"url", "sessionId", "maxBytes"}
    deployments = httpx.get(f"{url}/agents/deployments").json()
    assert "ExpireFiles" not in {a["name"] for a in deployments["actions"]}  # bound by the Files agent


def test_upload_metadata_list_read_share_delete(url: str, project: Path) -> None:
    metadata = upload(url, CSV, "scores.csv", ttl=120, dataSource="test suite")
    file_url = metadata["url"]
    assert file_url.startswith("amfs://") and metadata["size"] == len(CSV) and metadata["shape"] == "2 rows x 2 columns"
    assert metadata["data_source"] == "test suite"
    assert 110 < metadata["expiration_timestamp"] - metadata["upload_timestamp"] <= 120
    assert (project.parent / "store").is_dir()

    assert invoke(url, "GetFileMetadata", {"url": file_url, "sessionId": "s1"}).json() == metadata
    assert [md["url"] for md in invoke(url, "ListFiles", {"sessionId": "s1"}).json()] == [file_url]
    assert invoke(url, "ListFiles", {"sessionId": "nobody"}).json() == []

    read = invoke(url, "ReadFile", {"url": file_url, "sessionId": "s1"}).json()
    assert read == {"url": file_url, "content": CSV.decode(), "encoding": "text", "bytes": len(CSV),
                    "truncated": False, "maxBytes": READ_MAX, "mimeType": "text/csv"}

    share = invoke(url, "ShareFile", {"url": file_url, "sessionId": "s1", "ttl": 60})
    assert share.status_code == 200 and "?share=" in share.json()
    shared = invoke(url, "ReadFile", {"url": share.json(), "sessionId": "another"}).json()
    assert shared["content"] == CSV.decode()

    assert invoke(url, "DeleteFile", {"url": file_url, "sessionId": "s1"}).json() is True
    assert_error(invoke(url, "GetFileMetadata", {"url": file_url, "sessionId": "s1"}), 404, contains="No file")
    assert_error(invoke(url, "DeleteFile", {"url": file_url, "sessionId": "s1"}), 404)


def test_another_session_is_answered_exactly_like_a_missing_file(url: str) -> None:
    file_url = upload(url, b"private", "p.txt", session="owner")["url"]
    missing = "amfs://" + "0" * 32 + "_p.txt"

    for action, extra in (("GetFileMetadata", {}), ("ReadFile", {}), ("DeleteFile", {}), ("ShareFile", {"ttl": 9})):
        intruder = assert_error(invoke(url, action, {"url": file_url, "sessionId": "intruder", **extra}), 404)
        absent = assert_error(invoke(url, action, {"url": missing, "sessionId": "owner", **extra}), 404)
        assert intruder["message"].replace(file_url, "URL") == absent["message"].replace(missing, "URL")
    assert invoke(url, "ReadFile", {"url": file_url, "sessionId": "owner"}).json()["content"] == "private"


def test_read_file_reports_the_cap_and_returns_binary_as_base64(url: str) -> None:
    text = ("é" * 700).encode()  # 1400 bytes: the cap (1000) falls inside no character, but close to one
    text_url = upload(url, text, "long.txt")["url"]

    capped = invoke(url, "ReadFile", {"url": text_url, "sessionId": "s1"}).json()
    assert capped["truncated"] is True and capped["encoding"] == "text" and capped["maxBytes"] == READ_MAX
    assert capped["content"] == "é" * 500 and capped["bytes"] == 1000
    smaller = invoke(url, "ReadFile", {"url": text_url, "sessionId": "s1", "maxBytes": 5}).json()
    assert smaller["content"] == "éé" and smaller["bytes"] == 4 and smaller["truncated"] is True  # a cut é dropped
    larger = invoke(url, "ReadFile", {"url": text_url, "sessionId": "s1", "maxBytes": 10**9}).json()
    assert larger["maxBytes"] == READ_MAX  # never more than read_max_bytes

    blob = bytes(range(256))
    binary = invoke(url, "ReadFile", {"url": upload(url, blob, "b.bin")["url"], "sessionId": "s1"}).json()
    assert binary["encoding"] == "base64" and base64.b64decode(binary["content"]) == blob
    assert binary["truncated"] is False and binary["bytes"] == 256
    assert_error(invoke(url, "ReadFile", {"url": text_url, "sessionId": "s1", "maxBytes": 0}), 400,
                 contains="maxBytes")


def test_read_file_applies_the_urls_params(url: str) -> None:
    pytest.importorskip("flowmas.files.params")
    file_url = upload(url, CSV, "p.csv")["url"]
    head = invoke(url, "ReadFile", {"url": f"{file_url}?head=1", "sessionId": "s1"}).json()
    assert head["content"].splitlines()[0] == "name,score" and "bob" not in head["content"]
    encoded = invoke(url, "ReadFile", {"url": f"{file_url}?encoding=base64", "sessionId": "s1"}).json()
    assert encoded["encoding"] == "text" and base64.b64decode(encoded["content"]) == CSV


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"content": "not base64!", "fileName": "x", "sessionId": "s1"}, 400, "content is not valid base64"),
    ({"content": "QQ", "fileName": "x", "sessionId": "s1"}, 400, "not valid base64"),  # padding missing
    ({"content": "QUJD", "fileName": "", "sessionId": "s1"}, 400, "file name is empty"),
    ({"content": "QUJD", "fileName": "a\nb", "sessionId": "s1"}, 400, "control character"),
    ({"content": "QUJD", "fileName": "x", "sessionId": ""}, 403, "Invalid session id"),
    ({"content": "QUJD", "fileName": "x", "sessionId": "s1", "ttl": -1}, 400, "ttl"),
    ({"content": "QUJD", "fileName": "x"}, 400, "sessionId"),
])
def test_bad_uploads_are_refused_with_a_sentence(url: str, body: dict[str, Any], status: int, words: str) -> None:
    assert_error(invoke(url, "UploadFile", body), status, contains=words)


def test_a_malformed_url_is_400(url: str) -> None:
    assert_error(invoke(url, "GetFileMetadata", {"url": "amfs://zz", "sessionId": "s1"}), 400, contains="amfs://")
    assert_error(invoke(url, "ReadFile", {"url": "https://example.com/x", "sessionId": "s1"}), 400)


def test_base64_with_line_breaks_is_accepted(url: str) -> None:
    data = bytes(range(200))
    wrapped = base64.encodebytes(data).decode()  # MIME style: a newline every 76 characters
    metadata = upload_raw(url, wrapped, "wrapped.bin")
    assert metadata["size"] == 200 and metadata["sha256"] == __import__("hashlib").sha256(data).hexdigest()


def upload_raw(url: str, content: str, name: str) -> dict[str, Any]:
    answer = invoke(url, "UploadFile", {"content": content, "fileName": name, "sessionId": "s1"})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_expire_files_runs_the_deployment_and_sweeps_only_what_expired(
    url: str, project: Path, expire_deployment: uuid.UUID
) -> None:
    with store(project, clock=lambda: time.time() - 7200) as past:
        old = past.upload_from_buffer_sync(b"old", "old.txt", "sweep", ttl=60)["url"]
    fresh = upload(url, b"fresh", "fresh.txt", session="sweep")["url"]

    answer = invoke(url, "ExpireFiles", {})

    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert summary["deleted"] >= 1 and summary["errors"] == 0
    assert [md["url"] for md in invoke(url, "ListFiles", {"sessionId": "sweep"}).json()] == [fresh]
    assert_error(invoke(url, "GetFileMetadata", {"url": old, "sessionId": "sweep"}), 404, contains="No file")
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(limit=1, sort="EXPECTED_START_TIME_DESC",
                                      deployment_filter=None, flow_run_filter=None)
        assert run.deployment_id == expire_deployment and run.state is not None and run.state.is_completed()
        assert run.parameters.get("project_file") == str(project)
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(any_=["expire-files"])))
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert {"what": "expired files", "action": "deleted"}.items() <= rows[0].items()
    assert "sweep" not in json.dumps(rows)  # no session id in the artifact
    assert_error(invoke(url, "ExpireFiles", {"limit": 0}), 400)
