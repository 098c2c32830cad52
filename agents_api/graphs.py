"""The built-in Graphs agent: agent task graphs (``flowmas.graph``) as OPACA actions, and the platform's messages.

Registered through the ``flowmas.agents`` entry point (``graphs = "agents_api.graphs:GraphsAgent"``):

    RunGraph(graph, task)     a flow run of ``run-agent-graph/default`` (its output: status, result, ...)
    SubmitGraph(graph, task)  the same, answering the flow run id at once (GetRunResult / the stream follow it;
                              ``SubmitRunGraph``, the twin every deployment action gets, is the same call)
    PlanGraph(graph)          the validated plan as text, in this process (no flow run)

``graph`` is an import path (``examples.research:graph``), ``task`` a JSON object (``type``, ``objective``,
``id``?, ``params``?). Both are checked here before a flow run is created: a module that cannot be imported,
an attribute that is no Agent or a task with a wrong field is a 400 naming it.

Messages. The agent hooks into the container (``Container.on_message``): every ``POST /send/{agentId}`` to a
known agent is also queued in the cache's mailbox ``agent:<agentId>``, and every ``POST /broadcast/{channel}``
in the mailbox ``channel:<name>`` and published on the channel ``channel:<name>`` (namespace ``platform``:
``flowmas.graph.runs``), so a running graph's module can wait on them (``get_message``). The agents addressed
still receive the message as before; an unknown agent id is still a 404 (the container looks it up first); a
cache that fails is logged, never the sender's answer. The cache is FLOWMAS_CACHE_URL's, else the process's
embedded one, which the graph runs of ``flowmas up`` share (they execute in the container's process).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flowmas.cache import Cache, process_cache
from flowmas.errors import ActionFailedError, ConfigurationError, GraphError, InvalidArgumentsError
from flowmas.graph.loading import default_cache, describe_plan, load_graph, parse_task
from flowmas.graph.runs import deliver_message
from flowmas.opaca.agent import AbstractAgent, action
from flowmas.opaca.models import Message
from flowmas.settings import FlowmasSettings

if TYPE_CHECKING:
    from flowmas.opaca.capabilities import AgentContext
    from flowmas.opaca.container import Container

__all__ = ["RUN_DEPLOYMENT", "GraphsAgent"]

RUN_DEPLOYMENT = "run-agent-graph/default"


class GraphsAgent(AbstractAgent):
    """Agent task graphs: plan one, run one as a Prefect flow run, and hand the platform's messages to them."""

    def __init__(self, context: AgentContext | None = None, *, container: Container | None = None,
                 agent_id: str = "graphs", cache: Cache | None = None) -> None:
        self.settings: FlowmasSettings | None = context.settings if context is not None else None
        self._cache = cache
        self._owns_cache = False
        super().__init__(container=container, agent_id=agent_id)
        target = container if container is not None else context.container if context is not None else None
        if target is not None:
            target.on_message(self.deliver)

    @property
    def cache(self) -> Cache:
        """The cache messages go to (made on first use, on the container's event loop)."""
        if self._cache is None:
            self._cache = default_cache(self.settings)
            self._owns_cache = True
        return self._cache

    async def on_shutdown(self) -> None:
        """Closes the cache client this agent made (``process_cache()`` ignores it; one passed in is the
        caller's)."""
        if self._owns_cache and self._cache is not None and self._cache is not process_cache():
            await self._cache.close()

    async def deliver(self, kind: str, name: str, message: Message) -> None:
        """The container's message hook: queue the message in ``agent:<id>`` or ``channel:<name>``."""
        if self.settings is None:
            self.settings = FlowmasSettings()  # read once: the bounds of every later delivery
        await deliver_message(self.cache, kind, name, message.model_dump(mode="json", by_alias=True),
                              settings=self.settings)

    @action
    async def plan_graph(self, graph: str) -> str:
        """The graph's validated plan as text: levels, each node's dependencies, jumps, limits, tracking."""
        with _arguments():
            agent = await asyncio.to_thread(load_graph, graph, settings=self.settings)
            return describe_plan(agent, graph)

    @action(deployment=RUN_DEPLOYMENT)
    async def run_graph(self, graph: str, task: dict[str, Any]) -> dict[str, Any]:
        """Run a graph (MODULE:ATTR) on a task in a Prefect flow run; its output: status, node results, failures."""
        raise ActionFailedError(f"RunGraph runs the {RUN_DEPLOYMENT} deployment, and this container has no Prefect "
                                "deployments engine (`flowmas up` starts one).", status_code=503)

    @action
    async def submit_graph(self, graph: str, task: dict[str, Any]) -> str:
        """Start a graph run (MODULE:ATTR on a task) as a Prefect flow run; its flow run id, at once."""
        bound = self.get_action("SubmitRunGraph")
        if bound is None or not getattr(bound.callback, "__flowmas_deployment__", None):
            raise ActionFailedError(f"SubmitGraph runs the {RUN_DEPLOYMENT} deployment, and this container has no "
                                    "Prefect deployments engine (`flowmas up` starts one).", status_code=503)
        run_id: str = await bound.callback(graph=graph, task=task)
        return run_id

    def deployment_parameters(self, action: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """Check the graph and the task here, so a mistake is a 400 now rather than a failed flow run later."""
        with _arguments():
            load_graph(str(parameters.get("graph")), settings=self.settings)
            parse_task(parameters.get("task") or {})
        return parameters


@contextlib.contextmanager
def _arguments() -> Iterator[None]:
    """A wrong graph path or task is the caller's (400); a graph that does not validate too."""
    try:
        yield
    except (ConfigurationError, GraphError) as exc:
        raise InvalidArgumentsError(str(exc)) from None
