"""``run_up``: assemble the services of ``flowmas up`` and run them until SIGINT or SIGTERM; ``main`` is its CLI.

Everything that can be checked without a server is checked before anything starts (ports, prefect.yaml, its
flows, the project file and its agents' modules), so a mistake costs no server start and leaves nothing
running.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowmas.errors import ConfigurationError, ServiceStartError
from flowmas.settings import FlowmasSettings, find_project_file, load_project
from up.container import DEFAULT_API_PORT, ContainerService
from up.deployments import (
    Registration,
    load_deployments,
    read_deployments,
    serve_runner,
    with_project_intervals,
)
from up.prefect_server import PrefectApi, PrefectServer, pick_port
from up.supervisor import Service, run_services

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class UpInfo:
    """What ``run_up`` reports once everything is serving (passed to its ``ready`` callback)."""

    api_url: str
    """The Prefect API."""
    ui_url: str
    deployments: list[str]
    started_server: bool
    container_url: str | None = None
    """The OPACA container API (its Swagger UI is ``<container_url>/docs``); None when not served."""


def run_up(
    *,
    project_file: Path | None = None,
    prefect_yaml: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    limit: int | None = None,
    server_timeout: float = 120.0,
    api_host: str | None = None,
    api_port: int | None = DEFAULT_API_PORT,
    ready: Callable[[UpInfo], None] | None = None,
    settings: FlowmasSettings | None = None,
) -> None:
    """Serve flowmas until SIGINT/SIGTERM; start a local Prefect server first unless PREFECT_API_URL is set.

    ``project_file`` becomes FLOWMAS_PROJECT for every flow run and is the project the container serves;
    ``prefect_yaml`` defaults to the repository's; ``port`` (local server only) None means 4200 when free,
    else any free port; ``limit`` caps concurrent flow runs of the runner; ``api_host``/``api_port`` are the
    OPACA container's address (host None: ``agents_api.server.default_host()``; port 0: any free port; port
    None: no container); ``ready`` is called once everything serves (tests, embedding). Raises
    ConfigurationError for bad arguments, prefect.yaml or the project, ServiceStartError for anything else,
    each one sentence.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    for option, value in (("--port", port), ("--api-port", api_port)):
        if value is not None and not 0 <= value <= 65535:
            raise ConfigurationError(f"{option} {value} is not a TCP port: use 1..65535, or 0 for any free port.")
    settings = settings or FlowmasSettings()
    prefect_yaml = (prefect_yaml or REPO / "prefect.yaml").resolve()
    specs = read_deployments(prefect_yaml)
    if project_file is not None:
        os.environ["FLOWMAS_PROJECT"] = str(project_file.expanduser().resolve())
    container = ContainerService(host=api_host, port=api_port, settings=settings) if api_port is not None else None
    if container is not None:
        container.prepare()  # the project and its agents' classes, before any server starts
        project = container.project
    else:
        project_path = find_project_file(settings=FlowmasSettings())
        project = load_project(project_path) if project_path is not None else None
    specs = with_project_intervals(specs, project)

    services: list[Service] = []
    updates: dict[Any, Any] = {}
    environ: dict[str, str] = {}
    server: PrefectServer | None = None
    if configured := PREFECT_API_URL.value():
        services.append(PrefectApi(str(configured)))
    else:
        home = settings.home / "prefect"
        server = PrefectServer(home=home, host=host, port=pick_port(host, port), timeout=server_timeout)
        services.append(server)
        updates = {PREFECT_API_URL: server.api_url, PREFECT_HOME: str(home)}
        environ = {"PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(home)}  # for the flow runs' processes
    with temporary_settings(updates=updates):
        deployments = load_deployments(specs, prefect_yaml)  # before a server starts: fail fast
        registration = Registration(deployments, limit=limit, environ=environ)
        services.append(registration)
        if container is not None:
            services.append(container)  # started last, stopped first

        def serve() -> None:
            """Announce the addresses, then serve the deployments until a signal."""
            from prefect.settings import PREFECT_UI_URL

            api_url = str(PREFECT_API_URL.value())
            ui_url = server.ui_url if server else str(PREFECT_UI_URL.value() or api_url.removesuffix("/api"))
            print(f"flowmas up: Prefect UI at {ui_url}", flush=True)
            if container is not None and container.url is not None:
                print(f"flowmas up: OPACA container at {container.url} (API docs: {container.url}/docs)",
                      flush=True)
            print(f"flowmas up: serving {', '.join(registration.names)} (Ctrl-C stops)", flush=True)
            try:
                if ready is not None:
                    ready(UpInfo(api_url=api_url, ui_url=ui_url, deployments=registration.names,
                                 started_server=server is not None,
                                 container_url=container.url if container is not None else None))
                serve_runner(registration.runner, api_url)
            finally:  # also when a signal arrives before the runner installed its own SIGTERM handler
                print("flowmas up: stopped serving", flush=True)

        run_services(services, serve)


def main(argv: list[str] | None = None) -> int:
    """``python -m up``: ``flowmas up`` without the CLI (exit 0, 1 a service failed, 2 bad usage)."""
    parser = argparse.ArgumentParser(prog="python -m up", description=run_up.__doc__)
    parser.add_argument("--project", type=Path, help="flowmas.yaml for every flow run (FLOWMAS_PROJECT)")
    parser.add_argument("--prefect-yaml", type=Path, help="deployments to serve (default: the repository's)")
    parser.add_argument("--host", default="127.0.0.1", help="local Prefect server address")
    parser.add_argument("--port", type=_port, help="local Prefect server port (default 4200 if free, else "
                        "any; 0: any)")
    parser.add_argument("--api-host", help="OPACA container address (default 127.0.0.1; 0.0.0.0 when a "
                        "platform started it)")
    parser.add_argument("--api-port", type=_port, default=DEFAULT_API_PORT,
                        help=f"OPACA container port (default {DEFAULT_API_PORT}; 0: any)")
    parser.add_argument("--limit", type=int, help="maximum concurrent flow runs")
    parser.add_argument("--server-timeout", type=float, default=120.0, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    try:
        run_up(project_file=args.project, prefect_yaml=args.prefect_yaml, host=args.host, port=args.port,
               limit=args.limit, server_timeout=args.server_timeout, api_host=args.api_host,
               api_port=args.api_port)
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
