"""The seam through which a capability adds its built-in OPACA agent: one entry point, nothing else.

A capability declares, in ``pyproject.toml``::

    [project.entry-points."flowmas.agents"]
    assets = "agents_api.assets:AssetsAgent"

The entry point names a factory ``(context: AgentContext) -> AbstractAgent`` (a class whose constructor takes
the context is one). ``load_builtin_agents(context)`` calls every factory, in the order of the entry point
names, and registers each agent with ``context.container`` (an agent its factory registered already is not
added twice). Nothing else changes when a capability adds one: not the routes, not ``/info``, not the
Deployments agent, not ``flowmas up``. A factory that cannot be loaded, fails or returns something that is no
agent is a ``ContainerConfigurationError`` naming the entry point, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from flowmas.errors import ContainerConfigurationError, FlowmasError
from flowmas.opaca.agent import AbstractAgent
from flowmas.text import one_line, shorten

if TYPE_CHECKING:
    from flowmas.assets.manager import AssetManager
    from flowmas.opaca.container import Container
    from flowmas.settings import FlowmasSettings, Project

ENTRY_POINT_GROUP = "flowmas.agents"


@dataclass
class AgentContext:
    """What a built-in agent may need; everything but the container is optional (tests leave it out)."""

    container: Container
    project: Project | None = None
    assets: AssetManager | None = None
    settings: FlowmasSettings | None = None
    extra: dict[str, Any] | None = None
    """Anything else a face wants to hand its agents (e.g. a Prefect client), by name."""


AgentFactory = Callable[[AgentContext], AbstractAgent]


def _failure(entry: EntryPoint, what: str, exc: BaseException | None = None) -> ContainerConfigurationError:
    reason = ""
    if exc is not None:
        text = shorten(one_line(str(exc)), 200)
        kind = "" if isinstance(exc, FlowmasError) else f"{type(exc).__name__}{': ' if text else ''}"
        reason = f": {kind}{text}"
    return ContainerConfigurationError(
        f"Built-in agent {entry.name!r} (entry point {entry.value!r} of group {ENTRY_POINT_GROUP!r}) {what}{reason}.")


def load_builtin_agents(context: AgentContext, *,
                        entries: Iterable[EntryPoint] | None = None) -> list[AbstractAgent]:
    """Builds the agent of every ``flowmas.agents`` entry point (or of ``entries``) and registers it."""
    found = list(entries) if entries is not None else list(entry_points(group=ENTRY_POINT_GROUP))
    agents: list[AbstractAgent] = []
    for entry in sorted(found, key=lambda e: e.name):
        try:
            factory = entry.load()
        except Exception as exc:
            raise _failure(entry, "cannot be imported", exc) from exc
        if not callable(factory):
            raise _failure(entry, f"names an object of type {type(factory).__name__}, not a factory (context) -> agent")
        try:
            agent = factory(context)
        except Exception as exc:
            raise _failure(entry, "failed to start", exc) from exc
        if not isinstance(agent, AbstractAgent):
            raise _failure(entry, f"returned an object of type {type(agent).__name__}, not an AbstractAgent")
        context.container.add_agent(agent)
        agents.append(agent)
    return agents
