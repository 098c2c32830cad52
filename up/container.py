"""The OPACA agent container as one more service of ``flowmas up``.

``ContainerService`` assembles the container and serves its API (uvicorn in a thread of its own):

    Container(resources/container.json)
    ├── built-in agents       every ``flowmas.agents`` entry point (the Assets agent), given the project's
    │                         AssetManager (``AgentContext``)
    ├── DeploymentsAgent      each Prefect deployment tagged ``opaca`` is an action, run as a real flow run
    └── the project's agents  ``agents:`` of flowmas.yaml (``{module, class}``), each an ``AbstractAgent``
                              built with ``assets=`` (the AssetManager) when its constructor takes it, else
                              given it as the attribute ``assets``, and ``agent_id=`` its name in the file

It starts after the Prefect server answers and the deployments are registered, so its first ``/info`` (which
the OPACA platform reads once) lists the deployment actions; it stops first. ``prepare`` reads the project and
imports the agents' classes before any server starts, so a wrong module costs nothing to find out.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowmas.errors import ConfigurationError, ServiceStartError
from flowmas.settings import FlowmasSettings, Project, load_project
from flowmas.text import one_line, shorten
from up.supervisor import sentence

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from agents_api.deployments import DeploymentRuns
    from agents_api.server import BackgroundServer
    from flowmas.assets.manager import AssetManager
    from flowmas.opaca.agent import AbstractAgent
    from flowmas.opaca.container import Container

REPO = Path(__file__).resolve().parents[1]
DEFAULT_API_PORT = 8082
IMAGE = REPO / "resources" / "container.json"
FALLBACK_IMAGE: dict[str, Any] = {
    "imageName": "flowmas/flowmas-container", "name": "flowmas", "apiPort": DEFAULT_API_PORT,
    "description": "flowmas agent container: built-in agents, Prefect deployments as actions, the project's agents.",
}

log = logging.getLogger("flowmas.up")


def build_app(container: Container) -> ASGIApp:
    """The face's app over ``container``."""
    from agents_api.app import create_app

    return create_app(container)


def agent_classes(project: Project) -> dict[str, type[AbstractAgent]]:
    """The class of every agent of ``project``, imported; anything that is not an OPACA agent is an error.

    Modules are looked up from the project's directory first (``agents.reader`` next to flowmas.yaml), as
    OpenMAS projects lay them out.
    """
    from flowmas.opaca.agent import AbstractAgent

    classes: dict[str, type[AbstractAgent]] = {}
    if project.agents and project.path is not None and str(project.directory) not in sys.path:
        sys.path.insert(0, str(project.directory))  # agent modules are the project's, as `python -m` would see them
    for name, entry in project.agents.items():
        where = f"Agent {name!r} of {project.path or 'the project'} ({entry.module}.{entry.class_})"
        try:
            module = importlib.import_module(entry.module)
        except Exception as exc:
            raise ConfigurationError(f"{where}: cannot import {entry.module} ({type(exc).__name__}: "
                                     f"{shorten(one_line(str(exc)), 200)}). Fix the module, or its 'module:' "
                                     "entry (a dotted module path importable from here).") from exc
        cls = getattr(module, entry.class_, None)
        if not (isinstance(cls, type) and issubclass(cls, AbstractAgent)):
            what = "has no class of that name" if cls is None else "is not an OPACA agent"
            raise ConfigurationError(f"{where}: {entry.module} {what}; `flowmas up` serves subclasses of "
                                     "flowmas.opaca.AbstractAgent (agents_api.AbstractAgent).")
        classes[name] = cls
    return classes


def make_agent(cls: type[AbstractAgent], name: str, assets: AssetManager) -> AbstractAgent:
    """``cls`` built with ``agent_id=name`` and ``assets=`` when its constructor takes them."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    forwards = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    kwargs: dict[str, Any] = {}
    if "agent_id" in parameters or forwards:
        kwargs["agent_id"] = name
    if "assets" in parameters:
        kwargs["assets"] = assets
    agent = cls(**kwargs)
    if "assets" not in kwargs:
        agent.assets = assets  # type: ignore[attr-defined]
    return agent


class ContainerService:
    """The container, its agents, the deployments engine and the API server; a ``Service`` of ``run_up``."""

    name = "opaca-container"

    def __init__(self, *, host: str | None = None, port: int = DEFAULT_API_PORT, project_file: Path | None = None,
                 settings: FlowmasSettings | None = None, code_roots: tuple[Path, ...] = (REPO,)) -> None:
        self.host = host
        self.port = port
        self.project_file = project_file
        self.settings = settings
        self.code_roots = code_roots
        self.project: Project | None = None
        self.classes: dict[str, type[AbstractAgent]] = {}
        self.container: Container | None = None
        self.engine: DeploymentRuns | None = None
        self.server: BackgroundServer | None = None
        self.assets: AssetManager | None = None

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None else None

    def prepare(self) -> None:
        """Read the project and import its agents' classes (ConfigurationError naming what is wrong)."""
        settings = FlowmasSettings()  # FLOWMAS_PROJECT as run_up has just set it
        self.project = load_project(self.project_file, settings=settings)
        self.classes = agent_classes(self.project)

    def start(self) -> None:
        from prefect.settings import PREFECT_API_URL

        from agents_api.deployments import DeploymentRuns, DeploymentsAgent
        from agents_api.server import BackgroundServer, default_host
        from flowmas.assets.manager import AssetManager
        from flowmas.opaca import AgentContext, Container, load_builtin_agents

        if self.project is None:
            self.prepare()
        assert self.project is not None
        settings = self.settings or FlowmasSettings()
        host = self.host or default_host()
        try:
            self.assets = AssetManager(self.project, settings=settings)
            self.container = container = Container(IMAGE if IMAGE.is_file() else FALLBACK_IMAGE)
            load_builtin_agents(AgentContext(container=container, project=self.project, assets=self.assets,
                                             settings=settings))
            self.engine = engine = DeploymentRuns(code_roots=self.code_roots)
            DeploymentsAgent(engine, container=container)
            for name, cls in self.classes.items():
                with sentence(f"Agent {name!r} of {self.project.path} failed to start",
                              "Fix its constructor (it gets agent_id= and, if it takes it, assets=)."):
                    container.add_agent(make_agent(cls, name, self.assets))
            engine.bind(container)  # before the first read, so bound deployments are read with it
            with sentence(f"Cannot read the deployments from the Prefect API at {PREFECT_API_URL.value()}",
                          "Is it a Prefect 3 server?"):
                engine.start()
            self.server = BackgroundServer(build_app(container), host=host, port=self.port, log_level="warning")
            try:
                self.server.start()
            except OSError as exc:
                self.server = None
                if exc.errno == errno.EADDRINUSE:
                    raise ServiceStartError(f"Port {self.port} on {host} is in use: stop what listens there, or "
                                            "choose another --api-port (0: any free port).") from None
                raise ServiceStartError(f"Cannot serve the OPACA container on {host}:{self.port} "
                                        f"({exc.strerror or exc}); choose another --api-host.") from None
            except RuntimeError as exc:
                self.server = None
                raise ServiceStartError(f"The OPACA container API did not start ({exc}).") from None
        except BaseException:
            self.stop()
            raise
        log.debug("OPACA container %s serving %d agents at %s.", container.container_id, len(container.agents()),
                  self.server.url)

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop(timeout=15)
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.stop()
        container, self.container = self.container, None
        if container is not None:
            container.close()
        assets, self.assets = self.assets, None
        if assets is not None:
            assets.close()
