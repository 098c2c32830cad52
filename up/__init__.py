"""``flowmas up``: one process that runs the flowmas services until Ctrl-C (SIGINT) or SIGTERM.

    run_up()                     (up.main; `flowmas up`, `python -m up`)
    ├── PrefectServer    `prefect server start` as a child process, only when no PREFECT_API_URL is
    │                    configured: SQLite under $FLOWMAS_HOME/prefect (its PREFECT_HOME), 127.0.0.1,
    │                    port 4200 unless taken by a live socket (TIME_WAIT leftovers do not count)
    ├── PrefectApi       otherwise: the configured PREFECT_API_URL must answer /health within seconds,
    │                    or ``up`` stops with one sentence saying what to do            (up.prefect_server)
    ├── Registration     the flowmas block types, then every deployment of prefect.yaml registered with a
    │                    Runner: entrypoints, parameters, schedules and concurrency limits come from the
    │                    file                                                            (up.deployments)
    ├── ContainerService the OPACA container on 127.0.0.1:8082 (--api-port): built-in agents (entry
    │                    points), the Deployments agent (deployments tagged `opaca` as actions, executed in
    │                    this process), the agents of flowmas.yaml; uvicorn in a thread   (up.container)
    └── serve_runner     the foreground: the runner starts each scheduled flow run in a subprocess; it
                         returns on a signal

Services start in order and stop in reverse (the container first), also when a later one fails to start
(``up.supervisor``). Every flow of prefect.yaml and every agent class of flowmas.yaml is loaded before
anything starts, so a broken entrypoint or module starts nothing. A failure while starting or serving becomes
one ``ServiceStartError`` sentence (the traceback goes to the ``flowmas`` logger at debug level), never a
traceback on the terminal. The Prefect server runs in its own session, so a terminal's Ctrl-C reaches this
process only, which then stops serving (schedules are paused until the next ``up``), the container (runs
still executing in it are marked Crashed) and then the server.

Nothing heavy is imported here: ``flowmas --help`` stays fast; Prefect and FastAPI load when ``run_up`` runs.
"""

from flowmas.errors import ServiceStartError
from up.container import DEFAULT_API_PORT, ContainerService, build_app
from up.deployments import DeploymentSpec, Registration, load_deployments, read_deployments
from up.main import UpInfo, main, run_up
from up.prefect_server import PrefectApi, PrefectServer, check_prefect_api, pick_port
from up.supervisor import Service, describe_error, run_services, sentence

__all__ = [
    "DEFAULT_API_PORT",
    "ContainerService",
    "DeploymentSpec",
    "PrefectApi",
    "PrefectServer",
    "Registration",
    "Service",
    "ServiceStartError",
    "UpInfo",
    "build_app",
    "check_prefect_api",
    "describe_error",
    "load_deployments",
    "main",
    "pick_port",
    "read_deployments",
    "run_services",
    "run_up",
    "sentence",
]
