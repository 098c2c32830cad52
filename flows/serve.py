"""``flowmas up``: one process that runs the flowmas services until Ctrl-C (SIGINT) or SIGTERM.

    run_up()
    ├── PrefectServer    `prefect server start` as a child process, only when no PREFECT_API_URL is
    │                    configured: SQLite under $FLOWMAS_HOME/prefect (its PREFECT_HOME), 127.0.0.1
    ├── register_blocks  the flowmas block types, so the UI can create and edit them
    └── serve            every deployment of prefect.yaml, served by this process (prefect's Runner, as
                         ``prefect.serve`` does): entrypoints, parameters, schedules and concurrency
                         limits come from the file; each flow run is a subprocess; this is the
                         foreground and returns on a signal

Services start in order and stop in reverse, also when a later one fails to start; a later issue adds the
OPACA API as one more ``Service``. The Prefect server runs in its own session, so a terminal's Ctrl-C
reaches this process only, which then stops serving (schedules are paused until the next ``up``) and then
the server. ``python -m flows.serve`` runs the same thing without the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
import yaml

from flowmas.errors import ConfigurationError
from flowmas.settings import FlowmasSettings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PORT = 4200


class ServiceStartError(RuntimeError):
    """A service did not come up; the message says where its log is."""


class Service(Protocol):
    name: str

    def start(self) -> None:
        """Return once the service answers; raise ServiceStartError otherwise."""

    def stop(self) -> None:
        """Stop it and wait (bounded); idempotent."""


@dataclass(frozen=True)
class UpInfo:
    """What ``run_up`` reports once everything is serving (passed to its ``ready`` callback)."""

    api_url: str
    ui_url: str
    deployments: list[str]
    started_server: bool


# --- the services runner ----------------------------------------------------------------------------


def run_services(services: Sequence[Service], foreground: Callable[[], None]) -> None:
    """Start ``services`` in order, run ``foreground`` until it returns, stop the started ones in reverse."""
    started: list[Service] = []
    # Ctrl-C raises KeyboardInterrupt even if the parent ignored SIGINT (a shell's background job); until
    # prefect's runner installs its own graceful SIGTERM handler, SIGTERM unwinds the same way, so the
    # services already started are stopped rather than orphaned.
    with _signals({signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.default_int_handler}):
        try:
            for service in services:
                service.start()
                started.append(service)
            foreground()
        finally:
            # A second Ctrl-C must not leave a half-stopped server behind.
            with _signals({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}):
                for service in reversed(started):
                    service.stop()


@contextmanager
def _signals(handlers: dict[signal.Signals, Any]) -> Iterator[None]:
    """Install signal handlers for the block (only the main thread can; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- the Prefect server -----------------------------------------------------------------------------


@dataclass
class PrefectServer:
    """``prefect server start`` as a child process in its own session, logging to ``<home>/server.log``."""

    home: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    timeout: float = 120.0
    name: str = "prefect-server"
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env["PREFECT_HOME"] = str(self.home)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", self.host,
             "--port", str(self.port)],
            env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout
        while not self._healthy():
            if (code := self._process.poll()) is not None:
                self.stop()
                raise ServiceStartError(f"The Prefect server exited with code {code} while starting; "
                                        f"see {self.log_path}.")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceStartError(f"The Prefect server did not answer {self.api_url}/health within "
                                        f"{self.timeout:.0f} s; see {self.log_path}.")
            time.sleep(0.25)

    def stop(self, grace: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGINT)  # the server's own Ctrl-C path: shuts services down
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # start_new_session made the server the leader of its own group


def pick_port(host: str, port: int | None) -> int:
    """``port`` as given; None: 4200 when free, else any free port; 0: any free port."""
    if port:
        return port
    candidates = [DEFAULT_PORT, 0] if port is None else [0]
    for candidate in candidates:
        with socket.socket() as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ServiceStartError(f"No free port on {host}.")


# --- deployments from prefect.yaml ------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentSpec:
    """One entry of prefect.yaml's ``deployments:``, the parts that serving uses."""

    name: str
    entrypoint: str
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    concurrency_limit: int | dict[str, Any] | None = None
    tags: list[str] = field(default_factory=list)
    description: str | None = None


def read_deployments(prefect_yaml: Path) -> list[DeploymentSpec]:
    try:
        data = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"Cannot read {prefect_yaml}: {exc}") from exc
    specs = []
    for index, entry in enumerate(data.get("deployments") or []):
        if not entry.get("name") or not entry.get("entrypoint"):
            raise ConfigurationError(f"{prefect_yaml}: deployments[{index}] needs 'name' and 'entrypoint'.")
        specs.append(DeploymentSpec(
            name=entry["name"], entrypoint=entry["entrypoint"], parameters=entry.get("parameters") or {},
            schedules=entry.get("schedules") or [], concurrency_limit=entry.get("concurrency_limit"),
            tags=entry.get("tags") or [], description=entry.get("description"),
        ))
    return specs


def to_runner_deployment(spec: DeploymentSpec, root: Path) -> Any:
    """A ``RunnerDeployment`` of the flow at ``spec.entrypoint`` (a path relative to ``root``)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron, Interval

    path, _, function = spec.entrypoint.rpartition(":")
    flow: Any = load_flow_from_entrypoint(f"{(root / path).resolve()}:{function}", use_placeholder_flow=False)
    schedules = []
    for entry in spec.schedules:
        options = {"timezone": entry.get("timezone"), "active": entry.get("active", True)}
        if "cron" in entry:
            schedules.append(Cron(entry["cron"], **options))
        elif "interval" in entry:
            schedules.append(Interval(entry["interval"], **options))
        else:
            raise ConfigurationError(
                f"Deployment {spec.name!r}: only cron and interval schedules can be served.")
    limit = spec.concurrency_limit
    return flow.to_deployment(
        name=spec.name, schedules=schedules, parameters=spec.parameters, tags=spec.tags,
        description=spec.description,
        concurrency_limit=ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit,
    )


# --- up ---------------------------------------------------------------------------------------------


def run_up(
    *,
    project_file: Path | None = None,
    prefect_yaml: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    limit: int | None = None,
    server_timeout: float = 120.0,
    ready: Callable[[UpInfo], None] | None = None,
    settings: FlowmasSettings | None = None,
) -> None:
    """Serve flowmas until SIGINT/SIGTERM; start a local Prefect server first unless PREFECT_API_URL is set.

    ``project_file`` becomes FLOWMAS_PROJECT for every flow run; ``prefect_yaml`` defaults to the
    repository's; ``port`` (local server only) None means 4200 when free, else any free port; ``limit``
    caps concurrent flow runs; ``ready`` is called once everything serves (tests, embedding).
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    settings = settings or FlowmasSettings()
    prefect_yaml = (prefect_yaml or REPO / "prefect.yaml").resolve()
    specs = read_deployments(prefect_yaml)
    if project_file is not None:
        os.environ["FLOWMAS_PROJECT"] = str(project_file.expanduser().resolve())
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "flowmas")  # core logs into the run logs

    services: list[Service] = []
    updates: dict[Any, Any] = {}
    server: PrefectServer | None = None
    if not PREFECT_API_URL.value():
        home = settings.home / "prefect"
        server = PrefectServer(home=home, host=host, port=pick_port(host, port), timeout=server_timeout)
        services.append(server)
        updates = {PREFECT_API_URL: server.api_url, PREFECT_HOME: str(home)}

    def serve() -> None:
        """What ``prefect.serve`` does, with the announcement after the deployments are registered."""
        from prefect.exceptions import TerminationSignal
        from prefect.runner import Runner
        from prefect.settings import PREFECT_UI_URL

        from blocks import register_blocks

        if server is not None:  # children (flow runs) inherit os.environ as well as the settings
            os.environ.update({"PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(server.home)})
        with temporary_settings(updates=updates):
            register_blocks()
            runner = Runner(pause_on_shutdown=True, limit=limit)  # schedules resume on the next `up`
            names = []
            for spec in specs:
                deployment = to_runner_deployment(spec, prefect_yaml.parent)
                runner.add_deployment(deployment)  # registers it with the API
                names.append(f"{deployment.flow_name}/{deployment.name}")
            api_url = str(PREFECT_API_URL.value())
            ui_url = server.ui_url if server else str(PREFECT_UI_URL.value() or api_url.removesuffix("/api"))
            print(f"flowmas up: Prefect UI at {ui_url}", flush=True)
            print(f"flowmas up: serving {', '.join(names)} (Ctrl-C stops)", flush=True)
            if ready is not None:
                ready(UpInfo(api_url=api_url, ui_url=ui_url, deployments=names,
                             started_server=server is not None))
            with suppress(KeyboardInterrupt, TerminationSignal):
                asyncio.run(runner.start())
        print("flowmas up: stopped serving", flush=True)

    run_services(services, serve)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=run_up.__doc__)
    parser.add_argument("--project", type=Path, help="flowmas.yaml for every flow run (FLOWMAS_PROJECT)")
    parser.add_argument("--prefect-yaml", type=Path, help="deployments to serve (default: the repository's)")
    parser.add_argument("--host", default="127.0.0.1", help="local Prefect server address")
    parser.add_argument("--port", type=int, help="local Prefect server port (default 4200, or a free one)")
    parser.add_argument("--limit", type=int, help="maximum concurrent flow runs")
    parser.add_argument("--server-timeout", type=float, default=120.0, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    try:
        run_up(project_file=args.project, prefect_yaml=args.prefect_yaml, host=args.host, port=args.port,
               limit=args.limit, server_timeout=args.server_timeout)
    except KeyboardInterrupt:
        pass  # Ctrl-C during start-up: services already stopped
    except (ServiceStartError, ConfigurationError) as exc:
        print(f"flowmas up: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
