"""``flowmas up``: one process that runs the flowmas services until Ctrl-C (SIGINT) or SIGTERM.

    run_up()
    ├── PrefectServer    `prefect server start` as a child process, only when no PREFECT_API_URL is
    │                    configured: SQLite under $FLOWMAS_HOME/prefect (its PREFECT_HOME), 127.0.0.1,
    │                    port 4200 unless taken by a live socket (TIME_WAIT leftovers do not count)
    ├── PrefectApi       otherwise: the configured PREFECT_API_URL must answer /health within seconds,
    │                    or ``up`` stops with one sentence saying what to do
    ├── register_blocks  the flowmas block types, so the UI can create and edit them
    └── serve            every deployment of prefect.yaml, served by this process (prefect's Runner, as
                         ``prefect.serve`` does): entrypoints, parameters, schedules and concurrency
                         limits come from the file; each flow run is a subprocess; this is the
                         foreground and returns on a signal

Services start in order and stop in reverse, also when a later one fails to start; a later issue adds the
OPACA API as one more ``Service``. Every flow of prefect.yaml is loaded before anything is registered, so
a broken entrypoint registers nothing. A failure while starting or serving becomes one
``ServiceStartError`` sentence (the traceback goes to the ``flowmas`` logger at debug level), never a
traceback on the terminal. The Prefect server runs in its own session, so a terminal's Ctrl-C reaches this
process only, which then stops serving (schedules are paused until the next ``up``) and then the server.
``python -m flows.serve`` runs the same thing without the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import signal
import socket
import ssl
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

from flowmas.errors import ConfigurationError, ServiceStartError
from flowmas.settings import FlowmasSettings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PORT = 4200
API_CHECK_TIMEOUT = 3.0
"""Seconds per phase (connect, read) of the one /health request made to a configured PREFECT_API_URL."""

logger = logging.getLogger("flowmas.up")




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


_stop_requested = threading.Event()
"""Set by a SIGINT or SIGTERM: whatever fails afterwards failed because we were asked to stop."""


def _request_stop(signum: int, frame: object) -> None:
    _stop_requested.set()
    raise KeyboardInterrupt


def run_services(services: Sequence[Service], foreground: Callable[[], None]) -> None:
    """Start ``services`` in order, run ``foreground`` until it returns, stop the started ones in reverse."""
    started: list[Service] = []
    _stop_requested.clear()
    # Ctrl-C raises KeyboardInterrupt even if the parent ignored SIGINT (a shell's background job); until
    # prefect's runner installs its own graceful SIGTERM handler, SIGTERM unwinds the same way, so the
    # services already started are stopped rather than orphaned. The interrupt can land inside a library
    # that wraps it in its own error (pydantic's SchemaError, seen): _sentence then reads it as the stop.
    with _signals({signal.SIGINT: _request_stop, signal.SIGTERM: _request_stop}):
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


def pick_port(host: str, port: int | None, preferred: int = DEFAULT_PORT) -> int:
    """``port`` as given (if free); None: ``preferred`` when free, else any free port; 0: any free port.

    "Free" is what uvicorn will find: it binds with SO_REUSEADDR, so a port held only by TIME_WAIT sockets
    of the previous ``up`` (for a minute after it stopped) is free, and a restart keeps its address.
    """
    if port:
        if not _bindable(host, port):
            raise ServiceStartError(f"Port {port} on {host} is in use: stop what listens there, or choose "
                                    "another --port (0: any free port).")
        return port
    candidates = [preferred, 0] if port is None else [0]
    for candidate in candidates:
        if (found := _bindable(host, candidate)) is not None:
            return found
    raise ServiceStartError(f"No free port on {host}.")


def _bindable(host: str, port: int) -> int | None:
    """The port bound (the kernel's choice for 0) when a listening socket could take it, else None."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ServiceStartError(f"Cannot use --host {host}: {exc.strerror or exc}.") from exc
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen()  # with SO_REUSEADDR only listen() notices another socket merely bound there
        except OSError:
            return None
        return int(sock.getsockname()[1])


# --- an external Prefect API ------------------------------------------------------------------------


@dataclass
class PrefectApi:
    """The Prefect API at PREFECT_API_URL, started by someone else: it must answer before anything registers.

    Without this check an unreachable URL surfaced as a 100-line traceback from deep inside block
    registration; here it is one request, bounded by ``timeout`` per phase, and one sentence.
    """

    url: str
    timeout: float = API_CHECK_TIMEOUT
    name: str = "prefect-api"

    def start(self) -> None:
        check_prefect_api(self.url, self.timeout)

    def stop(self) -> None:
        pass  # not ours to stop


def check_prefect_api(api_url: str, timeout: float = API_CHECK_TIMEOUT) -> None:
    """Raise ServiceStartError unless ``<api_url>/health`` answers 2xx: which URL, what happened, what to do.

    Sends what Prefect's own client sends (API key or auth string, custom headers, TLS settings), once, so
    a Prefect Cloud workspace or a server behind basic auth passes and a dead address fails in seconds.
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    health = f"{api_url.rstrip('/')}/health"
    headers = dict(settings.client.custom_headers or {})
    if settings.api.auth_string is not None:
        token = base64.b64encode(settings.api.auth_string.get_secret_value().encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif settings.api.key is not None:
        headers["Authorization"] = f"Bearer {settings.api.key.get_secret_value()}"
    verify: ssl.SSLContext | bool = not settings.api.tls_insecure_skip_verify
    try:
        if verify and settings.api.ssl_cert_file:
            verify = ssl.create_default_context(cafile=settings.api.ssl_cert_file)
        with httpx.Client(timeout=httpx.Timeout(timeout), headers=headers, verify=verify,
                          follow_redirects=True) as client:
            response = client.get(health)
    except httpx.TimeoutException:
        happened = f"{health} did not answer within {timeout:g} s"
    except (httpx.UnsupportedProtocol, httpx.InvalidURL, ValueError) as exc:
        happened = f"that is not a usable http(s) URL ({str(exc).rstrip('.')})"
    except httpx.TransportError as exc:
        text = str(exc) or type(exc).__name__
        happened = (f"{health} refused the connection" if "refused" in text.lower()
                    else f"{health} cannot be reached ({text})")
    except OSError as exc:  # ssl_cert_file unreadable
        happened = f"PREFECT_API_SSL_CERT_FILE={settings.api.ssl_cert_file} cannot be read ({exc.strerror})"
    else:
        if response.is_success:
            return
        code = response.status_code
        if code in (401, 403):
            happened = (f"{health} answered HTTP {code}: it refused the credentials (PREFECT_API_KEY or "
                        "PREFECT_API_AUTH_STRING)")
        else:
            happened = f"{health} answered HTTP {code}, so it is not a Prefect API"
    where = ("`unset PREFECT_API_URL`" if "PREFECT_API_URL" in os.environ
             else "`prefect config unset PREFECT_API_URL` (it comes from your Prefect profile)")
    raise ServiceStartError(
        f"PREFECT_API_URL is {api_url}, but {happened}. Start that Prefect server "
        f"(`prefect server start`) or fix the URL, or {where} so that `flowmas up` runs its own "
        "embedded server.")


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
    """The ``deployments:`` of ``prefect_yaml``; ConfigurationError naming the entry that cannot be served."""
    try:
        data = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"Cannot read {prefect_yaml}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{prefect_yaml}: expected a mapping with a 'deployments' list.")
    specs = []
    for index, entry in enumerate(data.get("deployments") or []):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("entrypoint"):
            raise ConfigurationError(f"{prefect_yaml}: deployments[{index}] needs 'name' and 'entrypoint'.")
        specs.append(DeploymentSpec(
            name=entry["name"], entrypoint=entry["entrypoint"], parameters=entry.get("parameters") or {},
            schedules=entry.get("schedules") or [], concurrency_limit=entry.get("concurrency_limit"),
            tags=entry.get("tags") or [], description=entry.get("description"),
        ))
    return specs


def load_deployments(specs: Sequence[DeploymentSpec], prefect_yaml: Path) -> list[Any]:
    """Every spec as a ``RunnerDeployment``, all loaded before any is registered, so a broken one registers none.

    A flow that cannot be imported becomes ServiceStartError naming the deployment, its entrypoint and the
    error; a schedule that cannot be served stays a ConfigurationError.
    """
    deployments = []
    for spec in specs:
        try:
            deployments.append(to_runner_deployment(spec, prefect_yaml.parent))
        except ConfigurationError:
            raise
        except Exception as exc:
            logger.debug("Loading the flow of deployment %r failed", spec.name, exc_info=True)
            raise ServiceStartError(
                f"Deployment {spec.name!r} of {prefect_yaml}: cannot load its flow {spec.entrypoint} "
                f"({describe_error(exc)}). Fix that module, or the entrypoint (a file relative to "
                f"{prefect_yaml.name}, ':', then the @flow function).") from exc
    return deployments


def describe_error(exc: BaseException) -> str:
    """``exc`` in one line: the user's exception inside a ScriptError, an HTTP status with its request."""
    from prefect.exceptions import ScriptError

    if isinstance(exc, ScriptError):
        exc = exc.user_exc
    if isinstance(exc, httpx.HTTPStatusError):
        request = exc.request
        return f"{request.method} {request.url} answered HTTP {exc.response.status_code}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


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
    caps concurrent flow runs; ``ready`` is called once everything serves (tests, embedding). Raises
    ConfigurationError for bad arguments or prefect.yaml, ServiceStartError for anything else, each one
    sentence.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    if port is not None and not 0 <= port <= 65535:
        raise ConfigurationError(f"--port {port} is not a TCP port: use 1..65535, or 0 for any free port.")
    settings = settings or FlowmasSettings()
    prefect_yaml = (prefect_yaml or REPO / "prefect.yaml").resolve()
    specs = read_deployments(prefect_yaml)
    if project_file is not None:
        os.environ["FLOWMAS_PROJECT"] = str(project_file.expanduser().resolve())

    services: list[Service] = []
    updates: dict[Any, Any] = {}
    server: PrefectServer | None = None
    if configured := PREFECT_API_URL.value():
        services.append(PrefectApi(str(configured)))
    else:
        home = settings.home / "prefect"
        server = PrefectServer(home=home, host=host, port=pick_port(host, port), timeout=server_timeout)
        services.append(server)
        updates = {PREFECT_API_URL: server.api_url, PREFECT_HOME: str(home)}
    with temporary_settings(updates=updates):
        deployments = load_deployments(specs, prefect_yaml)  # before a server starts: fail fast

    def serve() -> None:
        """What ``prefect.serve`` does, with the announcement after the deployments are registered."""
        from prefect.exceptions import TerminationSignal
        from prefect.runner import Runner
        from prefect.settings import PREFECT_UI_URL

        from blocks import register_blocks

        if server is not None:  # children (flow runs) inherit os.environ as well as the settings
            os.environ.update({"PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(server.home)})
        with temporary_settings(updates=updates):
            api_url = str(PREFECT_API_URL.value())
            with _sentence(f"Cannot register the flowmas block types with the Prefect API at {api_url}",
                           "Is it a Prefect 3 server that accepts writes?"):
                register_blocks()
            runner = Runner(pause_on_shutdown=True, limit=limit)  # schedules resume on the next `up`
            names = []
            for deployment in deployments:
                name = f"{deployment.flow_name}/{deployment.name}"
                with _sentence(f"Cannot register deployment {name} with the Prefect API at {api_url}",
                               "Is it a Prefect 3 server that accepts writes?"):
                    runner.add_deployment(deployment)  # registers it with the API
                names.append(name)
            ui_url = server.ui_url if server else str(PREFECT_UI_URL.value() or api_url.removesuffix("/api"))
            print(f"flowmas up: Prefect UI at {ui_url}", flush=True)
            print(f"flowmas up: serving {', '.join(names)} (Ctrl-C stops)", flush=True)
            try:
                if ready is not None:
                    ready(UpInfo(api_url=api_url, ui_url=ui_url, deployments=names,
                                 started_server=server is not None))
                with (
                    _sentence(f"Serving stopped: the runner failed against the Prefect API at {api_url}",
                              "Start `flowmas up` again once that API answers."),
                    suppress(KeyboardInterrupt, TerminationSignal),
                ):
                    asyncio.run(runner.start())
            except SystemExit as exc:  # the runner's SIGTERM handler before it started, or a second SIGTERM
                if exc.code not in (0, None):
                    raise
            finally:  # also when a signal arrives before the runner installed its own SIGTERM handler
                print("flowmas up: stopped serving", flush=True)

    run_services(services, serve)


@contextmanager
def _sentence(what: str, hint: str) -> Iterator[None]:
    """Turn any ``Exception`` of the block into one ServiceStartError sentence; the traceback goes to debug."""
    try:
        yield
    except (ConfigurationError, ServiceStartError):
        raise
    except Exception as exc:
        logger.debug("%s", what, exc_info=True)
        if _stop_requested.is_set():  # an interrupt that a library wrapped in an error of its own
            raise KeyboardInterrupt from None
        raise ServiceStartError(f"{what} ({describe_error(exc)}). {hint}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=run_up.__doc__)
    parser.add_argument("--project", type=Path, help="flowmas.yaml for every flow run (FLOWMAS_PROJECT)")
    parser.add_argument("--prefect-yaml", type=Path, help="deployments to serve (default: the repository's)")
    parser.add_argument("--host", default="127.0.0.1", help="local Prefect server address")
    parser.add_argument("--port", type=_port, help="local Prefect server port (default 4200 if free, else "
                        "any; 0: any)")
    parser.add_argument("--limit", type=int, help="maximum concurrent flow runs")
    parser.add_argument("--server-timeout", type=float, default=120.0, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    try:
        run_up(project_file=args.project, prefect_yaml=args.prefect_yaml, host=args.host, port=args.port,
               limit=args.limit, server_timeout=args.server_timeout)
    except KeyboardInterrupt:
        pass  # Ctrl-C during start-up: services already stopped
    except ConfigurationError as exc:
        print(f"flowmas up: {exc}", file=sys.stderr)
        return 2
    except ServiceStartError as exc:
        print(f"flowmas up: {exc}", file=sys.stderr)
        return 1
    return 0


def _port(text: str) -> int:
    """argparse type for --port: an integer 0..65535, else a usage error that says so."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port: use 1..65535, or 0 for any free port")
    return value


if __name__ == "__main__":
    sys.exit(main())
