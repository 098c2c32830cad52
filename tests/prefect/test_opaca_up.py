"""``flowmas up``'s OPACA container, assembled as ``up`` assembles it, against the session's Prefect server.

``ContainerService`` builds the container from the entry points (the Assets agent), the Deployments agent and
the project's agents, and serves it with uvicorn on 127.0.0.1 port 0. The real ``flowmas up`` (with SIGINT
and SIGTERM) is tested end to end in ``test_up.py``.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from flowmas.errors import ConfigurationError, ServiceStartError
from flows.assets import download_assets
from tests.prefect.support import DATA, PATH, REPO, http_asset
from tests.servers.http_files import FileServer
from up import ContainerService, run_up

pytestmark = pytest.mark.prefect

GREETING = (REPO / "examples/templates/greeting.txt").read_text().strip()


def write_project(directory: Path, assets: list[dict[str, Any]], agents: dict[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "examples/templates/greeting.txt", directory / "greeting.txt")
    greeting = {"name": "greeting", "asset_type": "template", "source": {"type": "local", "path": "greeting.txt"}}
    file = directory / "flowmas.yaml"
    file.write_text(yaml.safe_dump({"name": "up-test", "assets": [*assets, greeting], "agents": agents or {},
                                    "settings": {"assets": {"cache_dir": str(directory / "cache")}}}))
    return file


@pytest.fixture
def client(prefect_server: str) -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as c:
        yield c


@pytest.fixture(scope="module")
def download_deployment(prefect_server: str) -> uuid.UUID:
    """download-assets/default as ``flowmas up`` registers it (no runner serves it here: the container runs it)."""
    deployment_id: uuid.UUID = download_assets.to_deployment(name="default", tags=["flowmas", "assets", "opaca"]
                                                             ).apply()
    return deployment_id


@pytest.fixture
def service(tmp_path: Path, http_server: FileServer, download_deployment: uuid.UUID) -> Iterator[ContainerService]:
    http_server.add(PATH, DATA)
    project = write_project(tmp_path / "project", [http_asset(http_server)],
                            agents={"greeter": {"module": "examples.greeter", "class": "Greeter"}})
    service = ContainerService(host="127.0.0.1", port=0, project_file=project)
    service.prepare()
    service.start()
    try:
        yield service
    finally:
        service.stop()


def invoke(url: str, action: str, body: dict[str, Any] | None = None, **params: Any) -> httpx.Response:
    return httpx.post(f"{url}/invoke/{action}", json=body or {}, params=params, timeout=60)


def test_the_container_serves_the_built_in_agents_the_deployments_agent_and_the_projects_agents(
    service: ContainerService, client: SyncPrefectClient, download_deployment: uuid.UUID, tmp_path: Path
) -> None:
    url = service.url
    assert url is not None
    info = httpx.get(f"{url}/info").json()
    agents = {agent["agentId"]: sorted(a["name"] for a in agent["actions"]) for agent in info["agents"]}
    assert agents["assets"] == ["DownloadAssets", "GetAssetPath", "ListAssets", "SubmitDownloadAssets",
                                "VerifyAssets"]
    assert {"GetRunResult", "GetRunStatus"} <= set(agents["deployments"])
    assert "DownloadAssets" not in agents["deployments"]  # bound by the Assets agent, not offered twice
    assert agents["greeter"] == ["Greet"]
    download = next(a for agent in info["agents"] for a in agent["actions"] if a["name"] == "DownloadAssets")
    assert download["parameters"] == {
        "names": {"type": "array", "items": {"type": "string"}, "required": False},
        "force": {"type": "boolean", "required": False, "defaultValue": False}}

    assert invoke(url, "Greet").json() == GREETING

    listed = {row["name"]: row for row in invoke(url, "ListAssets").json()}
    assert listed["model"]["status"] == "not cached" and listed["model"]["assetType"] == "model"

    rows = invoke(url, "DownloadAssets", {"names": ["model"]})
    assert rows.status_code == 200, rows.text
    [row] = rows.json()
    assert row["asset"] == "model" and row["status"] == "fetched"
    assert Path(row["detail"]).read_bytes() == DATA and Path(row["detail"]).is_relative_to(tmp_path)
    [run] = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
        any_=[download_deployment])), flow_run_filter=None, limit=1, sort="EXPECTED_START_TIME_DESC")
    assert run.state is not None and run.state.is_completed()
    assert run.parameters["names"] == ["model"] and run.parameters["cache_dir"] == str(tmp_path / "project/cache")
    status = invoke(url, "GetRunStatus", {"run_id": str(run.id)}).json()
    assert status["state"] == "COMPLETED" and status["deployment"] == "download-assets/default"

    assert invoke(url, "GetAssetPath", {"name": "model"}).json() == row["detail"]
    verified = {r["name"]: r["status"] for r in invoke(url, "VerifyAssets", {"names": ["model"]}).json()}
    assert verified == {"model": "verified"}

    unknown = invoke(url, "GetAssetPath", {"name": "modle"})
    assert unknown.status_code == 400
    assert "Unknown asset 'modle'. Did you mean 'model'?" in unknown.json()["message"]
    assert invoke(url, "DownloadAssets", {"names": ["nope"]}).status_code == 400


def test_stopping_the_service_closes_its_port(service: ContainerService) -> None:
    url = service.url
    assert url is not None and httpx.get(f"{url}/info").status_code == 200

    service.stop()
    service.stop()  # idempotent

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/info", timeout=2)


def test_a_taken_api_port_is_one_sentence(tmp_path: Path, download_deployment: uuid.UUID) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = ContainerService(host="127.0.0.1", port=port, project_file=write_project(tmp_path, []))

        with pytest.raises(ServiceStartError, match=rf"^Port {port} on 127\.0\.0\.1 is in use: .*--api-port"):
            service.start()

    assert service.engine is None and service.server is None  # everything it had started is stopped


@pytest.mark.parametrize(("entry", "expected"), [
    ({"module": "flowmas_no_such_agents", "class": "Agent"},
     r"cannot import flowmas_no_such_agents \(ModuleNotFoundError: No module named 'flowmas_no_such_agents'\)"),
    ({"module": "json", "class": "JSONDecoder"}, r"json is not an OPACA agent"),
    ({"module": "examples.greeter", "class": "Greter"}, r"examples.greeter has no class of that name"),
])
def test_a_project_agent_that_cannot_be_served_stops_up_before_anything_starts(
    entry: dict[str, str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = write_project(tmp_path / "project", [], agents={"broken": entry})
    monkeypatch.setenv("FLOWMAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLOWMAS_PROJECT", str(project))  # as --project sets it; restored after the test

    with pytest.raises(ConfigurationError, match=rf"Agent 'broken' of .*flowmas\.yaml .*: {expected}"):
        run_up(api_port=0)

    assert not (tmp_path / "home").exists()  # no server was started
