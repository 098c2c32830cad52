"""``flowmas up``, its services, prefect.yaml and its pull step.

Unit tests first (ports, the API check, the services runner, the pull step), then start-up failures run
in this process against the session's Prefect server or a plain HTTP server, then real processes (marked
``e2e``): ``flowmas up`` with its own server, ``prefect deploy --all`` and a process worker. Every failure
test asserts the one-sentence message and what is left afterwards (nothing registered, nothing running).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments import run_deployment
from prefect.deployments.steps.core import run_steps
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

import flows.steps
from flowmas.errors import ConfigurationError
from flowmas.settings import load_project
from tests.prefect.support import DATA, PATH, REPO, eventually, http_asset, write_project
from tests.servers.http_files import FileServer
from up import (
    PrefectServer,
    ServiceStartError,
    check_prefect_api,
    main,
    pick_port,
    read_deployments,
    run_services,
    run_up,
)
from up.deployments import with_project_intervals

pytestmark = pytest.mark.prefect

PULL_STEPS = [{"flows.steps.set_working_directory": {}}]


@pytest.fixture
def client(prefect_server: str) -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as c:
        yield c


@pytest.fixture
def up_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_up`` sets these in os.environ for its flow runs; restore them after the test."""
    monkeypatch.setenv("PREFECT_LOGGING_EXTRA_LOGGERS", "flowmas")
    monkeypatch.delenv("FLOWMAS_PROJECT", raising=False)


def flow_file(directory: Path, name: str, body: str = "") -> str:
    """A module holding ``@flow(name=name) def main()``, preceded by ``body``; returns its entrypoint."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(
        f"{body}\nfrom prefect import flow\n\n\n@flow(name={name!r})\ndef main() -> None:\n    pass\n")
    return f"{name}.py:main"


def write_prefect_yaml(directory: Path, *deployments: dict[str, Any]) -> Path:
    file = directory / "prefect.yaml"
    file.write_text(yaml.safe_dump({"deployments": list(deployments)}))
    return file


def deployment_or_none(client: SyncPrefectClient, name: str) -> Any:
    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


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


@contextlib.contextmanager
def flowmas_up(*args: str, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    """``python -m flowmas.cli up ARGS`` with stdout and stderr merged; killed if the test leaves it running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "flowmas.cli", "up", *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield process, Output(process)
    finally:
        if process.poll() is None:  # SIGTERM takes the clean path (and stops the server)
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def own_server_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `flowmas up` that starts its own server (no PREFECT_API_URL) under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return env | {"FLOWMAS_HOME": str(tmp_path / "home"), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}


# --- ports ------------------------------------------------------------------------------------------


def time_wait_port() -> int:
    """A port whose only socket is in TIME_WAIT, as a stopped Prefect server leaves it for a minute.

    The listener sets SO_REUSEADDR as uvicorn does (its accepted sockets inherit it); the server side
    closes first, which is the side that enters TIME_WAIT.
    """
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()
            assert client.recv(1) == b""  # the server's FIN arrived; closing now completes the handshake
    return port


def test_pick_port_keeps_a_port_that_only_time_wait_sockets_hold() -> None:
    port = time_wait_port()
    with socket.socket() as plain, pytest.raises(OSError) as refused:
        plain.bind(("127.0.0.1", port))  # the old probe: a plain bind, refused by the TIME_WAIT socket
    assert refused.value.errno == errno.EADDRINUSE

    assert pick_port("127.0.0.1", None, preferred=port) == port
    assert pick_port("127.0.0.1", port) == port


def test_pick_port_moves_off_a_port_that_is_listened_on() -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a running uvicorn does
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        other = pick_port("127.0.0.1", None, preferred=port)
        with pytest.raises(ServiceStartError, match=rf"Port {port} on 127\.0\.0\.1 is in use: .*--port"):
            pick_port("127.0.0.1", port)

    assert other != port and 0 < other <= 65535


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_a_port_outside_0_to_65535_is_a_usage_error(
    port: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWMAS_HOME", str(tmp_path / "home"))

    with pytest.raises(SystemExit) as exited:
        main(["--port", port])

    assert exited.value.code == 2
    assert f"argument --port: {port!r} is not a TCP port: use 1..65535, or 0 for any free port" in (
        capsys.readouterr().err)
    if port != "http":
        with pytest.raises(ConfigurationError, match=f"--port {port} is not a TCP port"):
            run_up(port=int(port))
    assert not (tmp_path / "home").exists()  # nothing was started


# --- the API check ----------------------------------------------------------------------------------


def test_an_api_that_accepts_but_never_answers_times_out_in_the_given_time() -> None:
    with socket.socket() as silent:  # the kernel completes the handshake; nobody ever reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/api"
        started = time.monotonic()

        with pytest.raises(ServiceStartError) as failed:
            check_prefect_api(url, timeout=0.5)

    assert time.monotonic() - started < 3
    assert str(failed.value).startswith(f"PREFECT_API_URL is {url}, but {url}/health did not answer within 0.5 s.")


def test_a_healthy_api_passes_the_check(prefect_server: str) -> None:
    check_prefect_api(prefect_server)


# --- the services runner and prefect.yaml -----------------------------------------------------------


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
        "flows/assets.py:clear_asset_cache", "flows/assets.py:cleanup_cache", "flows/files.py:expire_files",
        "flows/graph.py:run_agent_graph"]


def test_a_project_sets_the_expiry_sweep_interval_and_nothing_else(tmp_path: Path) -> None:
    specs = read_deployments(REPO / "prefect.yaml")
    project_file = tmp_path / "flowmas.yaml"
    project_file.write_text("name: p\nservices:\n  file_service:\n    expiration_check_interval: 120\n")
    silent_file = tmp_path / "silent.yaml"
    silent_file.write_text("name: p\n")

    served = {spec.name + spec.entrypoint: spec.schedules for spec in
              with_project_intervals(specs, load_project(project_file))}
    unchanged = with_project_intervals(specs, load_project(silent_file))

    assert served["defaultflows/files.py:expire_files"] == [{"interval": 120.0, "active": True}]
    assert [s for s in specs if "expire" not in s.entrypoint] == [
        s for s in with_project_intervals(specs, load_project(project_file)) if "expire" not in s.entrypoint]
    assert unchanged == specs and with_project_intervals(specs, None) == specs
    assert [s.schedules for s in specs if "expire" in s.entrypoint] == [[{"interval": 600, "active": True}]]


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


# --- start-up failures are one sentence -------------------------------------------------------------


@pytest.mark.usefixtures("up_env")
def test_a_flow_that_cannot_be_imported_stops_up_before_anything_is_registered(
    tmp_path: Path, client: SyncPrefectClient
) -> None:
    good = flow_file(tmp_path, "up-good-flow")
    broken = flow_file(tmp_path, "up-broken-flow", body="import flowmas_no_such_module  # noqa")
    prefect_yaml = write_prefect_yaml(tmp_path, {"name": "good", "entrypoint": good},
                                      {"name": "broken", "entrypoint": broken})
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    with pytest.raises(ServiceStartError) as failed:
        run_up(prefect_yaml=prefect_yaml)

    assert str(failed.value) == (
        f"Deployment 'broken' of {prefect_yaml}: cannot load its flow up-broken-flow.py:main "
        "(ModuleNotFoundError: No module named 'flowmas_no_such_module'). Fix that module, or the entrypoint "
        "(a file relative to prefect.yaml, ':', then the @flow function).")
    assert deployment_or_none(client, "up-good-flow/good") is None  # the good one was not registered either
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


@pytest.mark.usefixtures("up_env")
def test_block_registration_failing_stops_up_with_one_sentence(tmp_path: Path, http_server: FileServer) -> None:
    """An HTTP server whose /api/health says ``true`` passes the check, then refuses every write (501)."""
    http_server.add("/api/health", b"true")
    prefect_yaml = write_prefect_yaml(tmp_path, {"name": "default", "entrypoint": flow_file(tmp_path, "up-f")})
    api = f"{http_server.url}/api"
    ready: list[Any] = []

    with temporary_settings(updates={PREFECT_API_URL: api}), pytest.raises(ServiceStartError) as failed:
        run_up(prefect_yaml=prefect_yaml, ready=ready.append)

    message = str(failed.value)
    assert message.startswith(f"Cannot register the flowmas block types with the Prefect API at {api} (POST ")
    assert "answered HTTP 501). Is it a Prefect 3 server that accepts writes?" in message
    assert "\n" not in message
    assert ready == []  # never served
    assert len(http_server.requests_for("/api/health")) == 1


# --- the pull step ----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["argument", "FLOWMAS_REPO", "checkout", "empty FLOWMAS_REPO"])
def test_the_pull_step_changes_into_the_argument_then_flowmas_repo_then_its_checkout(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other-checkout"
    (other / "flows").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWMAS_REPO", raising=False)
    if source == "argument":
        monkeypatch.setenv("FLOWMAS_REPO", str(tmp_path))  # the argument wins
        result = flows.steps.set_working_directory("other-checkout")  # relative to the current directory
        expected = other
    elif source == "FLOWMAS_REPO":
        monkeypatch.setenv("FLOWMAS_REPO", str(other))
        result = flows.steps.set_working_directory()
        expected = other
    else:
        if source == "empty FLOWMAS_REPO":
            monkeypatch.setenv("FLOWMAS_REPO", "")
        result = flows.steps.set_working_directory(None if source == "checkout" else "")
        expected = REPO

    assert result == {"directory": str(expected)}
    assert Path.cwd() == expected


@pytest.mark.parametrize("source", ["argument", "FLOWMAS_REPO"])
def test_the_pull_step_refuses_a_directory_without_flows_saying_where_it_came_from(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLOWMAS_REPO", str(tmp_path) if source == "FLOWMAS_REPO" else str(REPO))
    missing = tmp_path / "missing"

    with pytest.raises(ConfigurationError) as failed:
        flows.steps.set_working_directory(str(missing) if source == "argument" else None)

    if source == "argument":
        assert str(failed.value) == (
            f"The pull step cannot use {missing} (from the `directory` of the pull step in prefect.yaml): it "
            "does not exist. Fix that `directory`, or drop it to use FLOWMAS_REPO or this checkout.")
    else:
        assert str(failed.value) == (
            f"The pull step cannot use {tmp_path} (from FLOWMAS_REPO): it holds no flows/ directory, so it is "
            "not a flowmas checkout. Set FLOWMAS_REPO in the worker's environment to the flowmas checkout "
            f"(the directory holding flows/, blocks/, tasks/), or unset it to use {REPO}.")
    assert Path.cwd() == tmp_path  # not moved


@pytest.mark.parametrize("flowmas_repo", [None, ""])
async def test_prefect_runs_the_pull_steps_of_prefect_yaml_without_flowmas_repo(
    flowmas_repo: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a worker does at run time, with FLOWMAS_REPO unset or empty (both crashed Prefect's own step)."""
    monkeypatch.chdir(tmp_path)
    if flowmas_repo is None:
        monkeypatch.delenv("FLOWMAS_REPO", raising=False)
    else:
        monkeypatch.setenv("FLOWMAS_REPO", flowmas_repo)
    pull = yaml.safe_load((REPO / "prefect.yaml").read_text())["pull"]

    outputs = await run_steps(pull)

    assert pull == PULL_STEPS
    assert outputs == {"directory": str(REPO)}
    assert Path.cwd() == REPO


# --- real processes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(prefect_server: str) -> subprocess.CompletedProcess[str]:
    """``prefect --no-prompt deploy --all`` of the repository's prefect.yaml to the session's server, once."""
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name="flowmas", type="process"))
    env = os.environ | {"PREFECT_API_URL": prefect_server}
    return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_prefect_yaml_deploys_with_prefect_deploy_all(
    deployed: subprocess.CompletedProcess[str], client: SyncPrefectClient
) -> None:
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    for flow_name in ("download-assets", "verify-assets", "clear-asset-cache", "cleanup-cache", "expire-files"):
        deployment = client.read_deployment_by_name(f"{flow_name}/default")
        assert deployment.work_pool_name == "flowmas"
        assert deployment.pull_steps == PULL_STEPS
    cleanup = client.read_deployment_by_name("cleanup-cache/default")
    assert [getattr(s.schedule, "cron", None) for s in cleanup.schedules] == ["15 3 * * *"]
    assert cleanup.global_concurrency_limit is not None and cleanup.global_concurrency_limit.limit == 1
    assert cleanup.parameters == {"max_unused_days": 30, "part_max_age_hours": 24, "result_max_age_days": 30}
    expire = client.read_deployment_by_name("expire-files/default")
    assert [getattr(s.schedule, "interval", None) for s in expire.schedules] == [timedelta(seconds=600)]
    assert expire.global_concurrency_limit is not None and expire.global_concurrency_limit.limit == 1


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_a_process_worker_elsewhere_runs_a_deployment_without_flowmas_repo(
    deployed: subprocess.CompletedProcess[str], prefect_server: str, client: SyncPrefectClient, tmp_path: Path
) -> None:
    """The worker starts outside the checkout with no FLOWMAS_REPO; the pull step still finds the flows."""
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    project = write_project(tmp_path / "project", [])
    run = run_deployment("verify-assets/default", parameters={"project_file": str(project)}, timeout=0,
                         as_subflow=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "FLOWMAS_REPO"} | {"PREFECT_API_URL": prefect_server}

    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "flowmas", "--type", "process",
         "--run-once", "--limit", "1"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=150)

    state = client.read_flow_run(run.id).state
    assert state is not None and state.is_completed(), (state, worker.stdout[-4000:], worker.stderr[-4000:])
    assert state.result() == []  # verify-assets of a project without assets


@pytest.mark.e2e
@pytest.mark.timeout(60)
@pytest.mark.parametrize("answer", ["nothing", "HTTP 404"])
def test_flowmas_up_against_an_api_that_does_not_answer_says_what_to_do(
    answer: str, tmp_path: Path, http_server: FileServer
) -> None:
    if answer == "nothing":
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            api = f"http://127.0.0.1:{closed.getsockname()[1]}/api"  # closed again before use
        happened = f"{api}/health refused the connection"
    else:
        api = f"{http_server.url}/api"
        happened = f"{api}/health answered HTTP 404, so it is not a Prefect API"
    env = os.environ | {"PREFECT_API_URL": api, "FLOWMAS_HOME": str(tmp_path / "home")}
    started = time.monotonic()

    done = subprocess.run([sys.executable, "-m", "flowmas.cli", "up"], cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=50)

    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"PREFECT_API_URL is {api}, but {happened}. Start that Prefect server" in done.stderr
    assert "`unset PREFECT_API_URL` so that `flowmas up` runs its own embedded server." in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "serving" not in done.stdout
    assert not (tmp_path / "home/prefect").exists()  # no server of its own was started
    if answer == "HTTP 404":
        assert [r.path for r in http_server.requests] == ["/api/health"]  # one request, nothing registered
    assert elapsed < 30, elapsed  # interpreter and imports included; the check itself is bounded at seconds


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_flowmas_up_serves_prefect_yaml_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, http_server: FileServer
) -> None:
    """The real thing: its own Prefect server, the deployments of prefect.yaml, runs, then Ctrl-C.

    One run through ``run_deployment`` (the runner's subprocess), one through the container's DownloadAssets
    (a real run of the same deployment, executed in the container's process), as the README's curl does.
    """
    http_server.add(PATH, DATA)
    project = write_project(tmp_path / "project", [http_asset(http_server)])
    with flowmas_up("--project", str(project), "--port", "0", "--api-port", "0",
                    env=own_server_env(tmp_path)) as (process, output):
        ui_url = output.wait_for(r"Prefect UI at (http://127\.0\.0\.1:\d+)", timeout=120).group(1)
        container = output.wait_for(r"OPACA container at (http://127\.0\.0\.1:\d+)", timeout=30).group(1)
        output.wait_for(r"serving download-assets/default, verify-assets/default, clear-asset-cache/default, "
                        r"cleanup-cache/default", timeout=30)
        with temporary_settings(updates={PREFECT_API_URL: f"{ui_url}/api"}):
            with get_client(sync_client=True) as client:
                deployment = eventually(lambda: deployment_or_none(client, "cleanup-cache/default"),
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

            answer = httpx.post(f"{container}/invoke/DownloadAssets", json={"names": ["model"], "force": True},
                                headers={"Idempotency-Key": "readme-1"}, timeout=90)
            assert answer.status_code == 200, (answer.text, output.text)
            [again] = answer.json()
            assert again["status"] == "fetched" and again["detail"] == row["detail"]
            with get_client(sync_client=True) as client:
                [via_container] = [r for r in client.read_flow_runs() if r.idempotency_key
                                   and r.idempotency_key.endswith(":readme-1")]
                states = [s.name for s in client.read_flow_run_states(via_container.id)]
            assert states == ["AwaitingContainer", "Pending", "Running", "Completed"], states
        assert (tmp_path / "home/prefect/prefect.db").exists()  # the server's SQLite lives under FLOWMAS_HOME

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, output.text
        assert "flowmas up: stopped serving" in output.text
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{ui_url}/api/health", timeout=2)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{container}/info", timeout=2)


def test_a_stop_signal_that_a_library_wraps_in_its_own_error_is_still_a_clean_stop() -> None:
    """SIGTERM can land inside pydantic's schema building, which reports it as a SchemaError (seen on CI)."""
    from up.supervisor import sentence

    def foreground() -> None:
        with sentence("Serving stopped", "Start it again."):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except KeyboardInterrupt:
                raise RuntimeError("Error building `definitions` serializer:") from None

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_services([], foreground)
    assert time.monotonic() - started < 5
