"""The graph engine: an ``Agent`` is a definition, ``run_task`` runs it once in a fresh ``GraphRun``.

Every rule below has a test in ``tests/graph/test_semantics.py`` (Asimov's own behaviours are ported in
``test_engine.py``; its bugs, with the behaviour chosen, in ``test_asimov_bugs.py``).

Runs
  1. ``Agent`` holds nodes and settings only. ``run_task(task)`` creates a ``GraphRun`` holding everything per
     run: node states, ready set, visits, failed chains, node results, async generators, counters, the
     semaphore (``max_concurrent_tasks`` read when the run starts) and the run's cache view
     ``agent.cache.namespaced(namespace or task.id)`` (runs of one task id share it unless ``namespace=``
     differs). One Agent runs many tasks, concurrently too; ``agent.node_results``/``agent.execution_state``
     show the latest run started (Asimov compatibility).
  2. ``run_task`` returns Asimov's shape ``{"status": <TaskStatus value>, "result": node_results}`` plus
     ``"failed_chains"`` (lists of names: the failed node first, then the dependents it blocked) when a node
     failed, and sets ``task.status``, ``task.result`` (the node results) and ``task.error`` (the failures, or
     None). The same JSON-able output goes to the ``output_mailbox`` (``agent_output``); every failure goes to
     the ``error_mailbox`` (``agent_error``) as ``{"status": "error", "node": n, "error": text}``; the task is
     stored under the key ``task`` (JSON) at the start and the end. No other cache write happens per node
     unless configured (a module's ``output_mailbox`` gets each module result, a node's the node result;
     snapshots). ``input_mailboxes`` is a label the engine does not read (as in Asimov).
  3. Status: COMPLETE without failures; FAILED when every node of the run failed or was blocked by a failure
     (each node counted once), or when ``max_total_iterations`` stopped the run; PARTIAL otherwise.

Validation (before running, O(nodes + edges), iterative: ``flowmas.graph.planning``)
  4. Unknown dependencies, dependency cycles and flow-control jumps to unknown nodes are
     ``GraphDefinitionError``s naming the nodes (a cycle is printed ``'A' -> 'B' -> 'A'``); Lua conditions are
     compiled then (syntax errors are ``ConditionError``s naming node, decision and source). ``add_node``
     refuses a duplicate name. Loops go through flow-control jumps, which are not dependency edges.

Scheduling (``scheduling="ready"``, the default)
  5. A node starts as soon as all its dependencies are done — no level barriers. ``scheduling="levels"`` runs
     Asimov's level plan with a barrier after each level and Asimov's jump re-plan (see 18).
  6. The semaphore is held only while a *leaf* module runs (an executor's ``process`` or one generator step);
     a nested subgraph (a ``Node`` used as a module) and flow control never hold it, so nested subgraphs cannot
     deadlock, even with ``max_concurrent_tasks=1``.
  7. A node whose ``condition`` is false is *skipped*: its result is ``{"status": "skipped", ...}`` and every
     node depending on it (transitively) is skipped too, without a result. A skipped node is not a failure.
  8. A failed node's transitive dependents do not run: they form its failed chain. Other branches go on.

Running a node
  9. Each time a node becomes ready is a *visit*: ``max_visits`` (default 100, ``None`` = unlimited; Asimov's
     silent 5 was its users' first trap) caps visits per run; the visit past the limit fails the node with
     ``VisitLimitExceededError``'s message naming the node and the limit. ``max_total_iterations`` (default
     10,000, ``None`` = unlimited) counts the run's visits, i.e. node executions, condition-false ones included
     (Asimov counted levels); past it the run
     stops dispatching, lets running nodes finish and ends FAILED with a message naming the limit and the
     node that was next.
  10. Order inside a visit: the ``condition`` (Lua or a callable ``(task, variables)``; its identifiers and
      the node's ``inputs`` are read in one ``get_many``); then every ``inputs`` key must be in the cache (a
      missing one fails the node, naming it); then the modules, through ``node_runner`` when one is given;
      after a success every ``outputs`` key must be in the cache.
  11. Modules run in order (``parallel=True``: concurrently); the first non-success result is the node's result
      (parallel: with ``all_results``); ``stop_on_success`` ends the node after that module. Otherwise the
      node result is ``{"status": "success", "results": [...]}``. ``status == "success"`` means success.
  12. Retries: ``max_retries`` is the number of *retries* (one run plus up to that many; default 2, i.e.
      Asimov's three attempts), after a non-success result or an exception, ``retry_delay`` seconds apart.
      ``retry_on_failure=False`` runs once. ``NonRetryableError``, ``ConditionError``, a missing input or
      output and a bad jump or splice fail at once. An exception becomes
      ``{"status": "error", "error": text, "result": text}``.
  13. A module's ``timeout`` cancels it (``asyncio.timeout``); its result is then
      ``{"status": "error", "error": "Module 'm' execution timed out after T seconds", "module": "m"}``,
      retried like any failure.
  14. Each module result passes through the module's middlewares in order, then goes to its
      ``output_mailbox`` if set. An async-generator module yields one item per visit; each item goes through
      the middlewares. When it is exhausted the visit's result is ``{"status": "success", "result":
      "Generator Exhausted", "exhausted": True}`` once, and the next visit starts the generator afresh
      (Asimov returned "Generator Exhausted" forever). Every generator still open is closed when the run ends.
  15. ``node_runner(node, context, call)``, when given, wraps each visit's module execution (retries included):
      ``call()`` runs it. Faces use it to run tracked nodes as task runs (``NodeConfig.track``: None = the
      face decides). The core never imports a face.

Flow control
  16. A ``FlowControlModule``'s decisions are tried in order, then ``default``. Their Lua identifiers and
      ``condition_variables`` are read in one ``get_many`` per evaluation (never a key scan); the chosen
      decision's ``condition_variables`` are deleted (consumed). A module result's ``decision`` (any module
      may return one) makes the node *jump* when it succeeds; without a match nor default it does not jump.
  17. A jump from F to T is an incremental re-plan: T and its transitive dependents become pending again
      (nothing else re-runs); T starts at once, the others when their dependencies are done again. F's other
      dependents (the branches not taken) are skipped, and so is any re-planned node one of whose dependencies
      is skipped (Asimov would run it: bug #4). A jump to a node in a failed chain fails F (bug #5). With
      ``cleanup_on_jump``/``cleanup_on_default`` the generators of the re-planned nodes only are closed
      first (bug #11). A re-planned node that is still running runs again once it finishes.
  18. ``scheduling="levels"``: each level runs under one barrier; a jump re-plans Asimov's way: the level plan
      from T's level on, T's siblings and their dependents skipped, then every dependent of T un-skipped (so
      "Z runs without Y"), later unrelated levels run again. Conditions, limits, retries, jumps to failed
      nodes, generator cleanup and splices follow this module's rules in both modes.

Dynamic nodes
  19. A module result's ``new_nodes`` (``Node`` objects) are spliced in after their node P when P succeeds:
      each new node depends on P only, and P's dependents now also depend on every new node. They belong to
      the run (the Agent is unchanged) and run once (Asimov re-ran everything downstream). A name clash is a
      failure of P, unless the node was spliced by P on an earlier visit (then it is simply re-run).

Snapshots (``flowmas.graph.snapshots``)
  20. JSON only. A node with ``snapshot=ALWAYS`` (``ONCE``: first visit only) is snapshotted before it runs;
      ``auto_snapshot=True`` also snapshots after every node (after every level in levels mode). Nodes running
      at snapshot time count as not yet run (a resume runs them again). ``run_from_snapshot(path)`` restores
      the cache namespace and continues with the counters (visits, total iterations, failed chains, results);
      the Agent must have every node the snapshot names (else ``SnapshotError`` naming the missing ones).
      ``run_task(task, resume=True)`` resumes from the task's latest snapshot when there is one.

Tracing
  21. ``trace=True`` on the Agent, a node or a module opens OpenTelemetry spans ``run_task``, ``run_node``,
      ``run_module``; opentelemetry-api is imported lazily, and without it tracing is off (one debug log).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SkipValidation
from pydantic_core import to_jsonable_python

from flowmas.cache import Cache
from flowmas.errors import (
    CacheConnectionError,
    CacheError,
    ConditionError,
    GraphDefinitionError,
    IterationLimitExceededError,
    NonRetryableError,
    SnapshotError,
    VisitLimitExceededError,
)
from flowmas.graph.conditions import CompiledCondition, compile_condition, condition_error, evaluate_any
from flowmas.graph.model import (
    AgentModule,
    ExecutionState,
    FlowControlModule,
    ModuleResult,
    Node,
    SnapshotControl,
    Task,
    TaskStatus,
    check_task_id,
)
from flowmas.graph.planning import (
    GraphIndex,
    affected,
    asimov_plan_from,
    build_index,
    flow_controls,
    index_edges,
    levels,
)
from flowmas.graph.snapshots import (
    LevelsState,
    SnapshotData,
    latest_snapshot,
    next_seq,
    read_snapshot,
    snapshot_root,
    to_json_data,
    write_snapshot,
)
from flowmas.text import shorten

__all__ = ["Agent", "GraphRun", "NodeRunner", "RunContext"]

log = logging.getLogger(__name__)

PENDING, RUNNING, DONE, FAILED, SKIPPED, BLOCKED = range(6)
GENERATOR_CLOSE_TIMEOUT = 5.0
"""Seconds a generator's cleanup may take when the engine closes it (a hung ``finally`` must not hang the run)."""
_FINAL = (NonRetryableError, ConditionError, GraphDefinitionError)
"""Errors retrying cannot fix: the node fails at once."""


@dataclass(frozen=True, slots=True)
class RunContext:
    """What a ``node_runner`` knows about the visit it wraps."""

    run_id: str
    task: Task
    node: str
    visit: int
    cache: Cache
    agent: Agent


NodeRunner = Callable[[Node, RunContext, Callable[[], Awaitable[ModuleResult]]], Awaitable[ModuleResult]]


def _default_cache() -> Cache:
    """FLOWMAS_CACHE_URL's cache, else the process's one embedded cache (``flowmas.cache.process_cache``)."""
    from flowmas.cache import cache_from_url, process_cache
    from flowmas.settings import FlowmasSettings

    url = FlowmasSettings().cache_url
    text = url.get_secret_value().strip() if url is not None else ""
    return process_cache() if text in ("", "memory://", "memory:") else cache_from_url(text)


# --- tracing: opentelemetry-api is optional ---------------------------------------------------------------

_tracer: Any = None
_tracer_checked = False


_NO_SPAN: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()  # reusable: costs nothing per node


def _span(name: str, enabled: bool, **attributes: str) -> contextlib.AbstractContextManager[Any]:
    global _tracer, _tracer_checked
    if not enabled:
        return _NO_SPAN
    if not _tracer_checked:
        _tracer_checked = True
        try:
            from opentelemetry import trace
        except ImportError:
            log.debug("opentelemetry-api is not installed: trace=True opens no spans.")
        else:
            _tracer = trace.get_tracer("flowmas.graph")
    if _tracer is None:
        return _NO_SPAN
    span: contextlib.AbstractContextManager[Any] = _tracer.start_as_current_span(name, attributes=attributes)
    return span


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


def _error_result(exc: BaseException) -> ModuleResult:
    text = _error_text(exc)
    return {"status": "error", "error": text, "result": text}


def _non_json(value: Any) -> Any:
    return {"__non_json__": shorten(repr(value), 1000)}


def _jsonable(value: Any) -> Any:
    """JSON data for mailboxes and the stored task: what is not JSON becomes ``{"__non_json__": repr}``."""
    return to_jsonable_python(value, fallback=_non_json)


# --- the definition ---------------------------------------------------------------------------------------


class Agent(BaseModel):
    """A task graph: named nodes, limits and where results go. Holds no per-run state (see ``GraphRun``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True)

    cache: Annotated[Cache, SkipValidation] = Field(default_factory=_default_cache)
    nodes: dict[str, Node] = Field(default_factory=dict)
    max_concurrent_tasks: int = Field(default=5, ge=1, le=1_000_000)
    max_total_iterations: int | None = Field(default=10_000, ge=1)
    output_mailbox: str = "agent_output"
    error_mailbox: str = "agent_error"
    auto_snapshot: bool = False
    snapshot_dir: Path | None = None
    scheduling: Literal["ready", "levels"] = "ready"
    trace: bool = False

    _latest: GraphRun | None = PrivateAttr(default=None)

    def add_node(self, node: Node) -> None:
        """Add ``node``; a duplicate name is a ``GraphDefinitionError`` (a ``ValueError``, as in Asimov)."""
        if not isinstance(node, Node):
            raise GraphDefinitionError(f"add_node takes a Node, not {type(node).__name__}.")
        if node.name in self.nodes:
            raise GraphDefinitionError(f"Node with name {node.name!r} already exists.")
        self.nodes[node.name] = node

    def add_multiple_nodes(self, nodes: Iterable[Node]) -> None:
        for node in nodes:
            self.add_node(node)

    @property
    def graph(self) -> dict[str, list[str]]:
        """Node name → its dependencies (Asimov's ``graph``)."""
        return {name: list(node.dependencies) for name, node in self.nodes.items()}

    def validate_graph(self) -> GraphIndex:
        """Check the graph (rule 4) and compile its Lua conditions; O(nodes + edges)."""
        index = build_index(self.nodes)
        for node in self.nodes.values():
            _compile_conditions(node)
        return index

    def compile_execution_plan(self) -> list[list[str]]:
        """Asimov's level plan of the whole graph (validated first)."""
        return levels(self.validate_graph())

    def compile_execution_plan_from(self, node: str) -> list[list[str]]:
        """The level plan a jump to ``node`` re-runs: ``node`` and its transitive dependents."""
        index = self.validate_graph()
        if node not in self.nodes:
            raise GraphDefinitionError(f"Unknown node {node!r}; the graph has {len(self.nodes)} node(s).")
        return levels(index, affected(index.dependents, node))

    @property
    def node_results(self) -> dict[str, Any]:
        return self._latest.node_results if self._latest is not None else {}

    @property
    def execution_state(self) -> ExecutionState:
        return self._latest.execution_state() if self._latest is not None else ExecutionState()

    async def run_task(self, task: Task, *, node_runner: NodeRunner | None = None, namespace: str | None = None,
                       resume: bool = False) -> dict[str, Any]:
        """Run the graph for ``task`` (the module docstring's rules); ``resume=True`` continues from the task's
        latest snapshot when there is one (a crashed run's retry)."""
        if resume:
            path = latest_snapshot(task.id, self.snapshot_dir)
            if path is not None:
                return await self.run_from_snapshot(path, node_runner=node_runner)
        run = GraphRun(self, task, self.validate_graph(), node_runner=node_runner, namespace=namespace)
        self._latest = run
        return await run.run()

    async def run_from_snapshot(self, path: Path | str, *, node_runner: NodeRunner | None = None) -> dict[str, Any]:
        """Continue the run a snapshot file (or the newest one in a directory) saved, with its counters."""
        path = Path(path)
        if path.is_dir():
            newest = max((p for p in path.glob("*.json") if not p.name.startswith(".")), default=None,
                         key=lambda p: p.name)
            if newest is None:
                raise SnapshotError(f"{path} holds no snapshot (*.json).")
            path = newest
        data = read_snapshot(path)
        names = set(data.visits) | set(data.node_results) | set(data.done) | set(data.skipped) | set(data.failed) \
            | set(data.blocked) | set(data.ready) | {n for chain in data.failed_chains for n in chain}
        if data.levels is not None:
            names |= {n for group in data.levels.plan for n in group}
        missing = sorted(names - set(self.nodes))
        if missing:
            spliced = [n for n in missing if n in data.added_nodes]
            hint = f" ({', '.join(map(repr, spliced))} were added during the run by new_nodes)" if spliced else ""
            raise SnapshotError(f"The snapshot {path} names node(s) this Agent lacks: "
                                f"{', '.join(map(repr, missing[:20]))}{hint}. Resume on an Agent built with the "
                                "same nodes.")
        if data.scheduling != self.scheduling:
            raise SnapshotError(f"The snapshot {path} was taken with scheduling={data.scheduling!r}; this Agent "
                                f"uses {self.scheduling!r}.")
        run = GraphRun(self, data.task, self.validate_graph(), node_runner=node_runner, namespace=data.namespace)
        await run.restore(data)
        self._latest = run
        return await run.run()


def _compile_conditions(node: Node) -> None:
    """Compile every Lua condition of ``node`` (cached by source), naming node and decision on error."""
    if isinstance(node.node_config.condition, str):
        try:
            compile_condition(node.node_config.condition)
        except ConditionError as exc:
            raise condition_error(node.name, "condition", node.node_config.condition,
                                  getattr(exc, "reason", str(exc))) from None
    for _, module in flow_controls(node):
        for i, decision in enumerate(module.flow_config.decisions):
            if isinstance(decision.condition, str):
                try:
                    compile_condition(decision.condition)
                except ConditionError as exc:
                    raise condition_error(node.name, i, decision.condition,
                                          getattr(exc, "reason", str(exc))) from None


# --- one run ----------------------------------------------------------------------------------------------


class _Timeouts:
    """Module timeouts of one run (rule 13) for the price of two dict operations per module.

    ``asyncio.timeout`` costs a timer in the loop's heap per module, which is a fifth of an inline node's
    cost. Here each timeout value has one dict of running modules in start order — so in deadline order —
    and one loop timer is armed for the earliest deadline of all. When it fires, every module past its
    deadline is cancelled and flagged; the module tells that cancellation from an outer one by the flag and
    ``Task.uncancel``, as ``asyncio.timeout`` does.
    """

    def __init__(self) -> None:
        self._groups: dict[float, dict[int, tuple[float, asyncio.Task[Any], list[bool]]]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._serial = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, timeout: float, task: asyncio.Task[Any], flag: list[bool]) -> tuple[float, int] | None:
        """Watch ``task``; None when it runs on another event loop than the run's (a node runner's choice),
        which then uses ``asyncio.timeout``."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            return None
        deadline = loop.time() + timeout
        self._serial += 1
        self._groups.setdefault(timeout, {})[self._serial] = (deadline, task, flag)
        if deadline < self._armed_at:
            self._arm(loop, deadline)
        return timeout, self._serial

    def stop(self, token: tuple[float, int]) -> None:
        group = self._groups.get(token[0])
        if group is not None:
            group.pop(token[1], None)

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = deadline
        self._handle = loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._handle, self._armed_at = None, math.inf
        earliest = math.inf
        for group in self._groups.values():
            while group:
                serial, (deadline, task, flag) = next(iter(group.items()))
                if deadline > now:
                    earliest = min(earliest, deadline)
                    break
                del group[serial]
                flag[0] = True
                task.cancel()
        if earliest < math.inf:
            self._arm(loop, earliest)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class GraphRun:
    """Everything one run of an Agent owns; ``run()`` drives it to the end."""

    def __init__(self, agent: Agent, task: Task, index: GraphIndex, *, node_runner: NodeRunner | None,
                 namespace: str | None) -> None:
        limit = agent.max_concurrent_tasks
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise GraphDefinitionError(f"max_concurrent_tasks must be a positive integer, not {limit!r}.")
        self.agent = agent
        self.task = task
        self.run_id = uuid4().hex
        self.namespace = check_task_id(namespace) if namespace is not None else task.id
        self.cache: Cache = agent.cache.namespaced(self.namespace)
        self.semaphore = asyncio.Semaphore(limit)
        self.timeouts = _Timeouts()
        self.max_total = agent.max_total_iterations
        self.node_runner = node_runner
        self.index = index
        self.nodes: dict[str, Node] = dict(agent.nodes)
        self.deps: dict[str, tuple[str, ...]] = dict(index.deps)
        self.dependents: dict[str, tuple[str, ...]] = dict(index.dependents)
        self.state: dict[str, int] = dict.fromkeys(self.nodes, PENDING)
        self.waiting: dict[str, int] = {name: len(d) for name, d in self.deps.items()}
        self.ready: deque[str] = deque(name for name in index.order if not self.waiting[name])
        self.running: dict[str, asyncio.Task[tuple[str, ModuleResult]]] = {}
        self.rerun: set[str] = set()
        self.visits: dict[str, int] = {}
        self.total = 0
        self.finished = 0
        self.failed_chains: list[list[str]] = []
        self.errors: list[str] = []
        self.node_results: dict[str, Any] = {}
        self.generators: dict[tuple[str, str], AsyncIterator[ModuleResult]] = {}
        self.added: dict[str, str] = {}
        self.stopped: str | None = None
        plan = levels(index)
        self.current_plan = plan
        self.history: list[list[list[str]]] = [plan]
        self.level_plan: list[list[str]] = plan
        self.level_index = 0
        self.level_executed: set[str] = set()
        self.level_skipped: set[str] = set()
        self.snap_root: Path | None = None
        self.snap_seq = 0
        self._task_json: dict[str, Any] | None = None
        self._done: asyncio.Queue[asyncio.Task[tuple[str, ModuleResult]]] = asyncio.Queue()
        self._names: dict[asyncio.Task[tuple[str, ModuleResult]], str] = {}

    # --- state views --------------------------------------------------------------------------------------

    def execution_state(self) -> ExecutionState:
        return ExecutionState(execution_index=self.level_index if self.agent.scheduling == "levels" else
                              self.finished, current_plan=self.current_plan, execution_history=self.history,
                              total_iterations=self.total)

    @property
    def task_json(self) -> dict[str, Any]:
        if self._task_json is None:
            self._task_json = self.task.model_dump(mode="json", fallback=_non_json)
        return self._task_json

    # --- the run ------------------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        task = self.task
        task.status = TaskStatus.EXECUTING
        with _span("run_task", self.agent.trace, task_id=task.id, run_id=self.run_id):
            try:
                await self.cache.set("task", self.task_json)
                if self.agent.scheduling == "levels":
                    await self._run_levels()
                else:
                    await self._run_ready()
            except BaseException as exc:
                await self._abort()
                task.status = TaskStatus.FAILED
                task.error = _error_text(exc)
                raise
            finally:
                self.timeouts.close()
                await self._close_generators(None)
            return await self._finish()

    async def _abort(self) -> None:
        for running in list(self.running.values()):
            running.cancel()
        if self.running:
            await asyncio.gather(*self.running.values(), return_exceptions=True)
        self.running.clear()

    async def _finish(self) -> dict[str, Any]:
        task = self.task
        if self.stopped is not None:
            status = TaskStatus.FAILED
        elif not self.failed_chains:
            status = TaskStatus.COMPLETE
        elif all(s in (FAILED, BLOCKED) for s in self.state.values()):
            status = TaskStatus.FAILED
        else:
            status = TaskStatus.PARTIAL
        output: dict[str, Any] = {"status": status.value, "result": self.node_results}
        if self.failed_chains:
            output["failed_chains"] = [list(chain) for chain in self.failed_chains]
        task.status = status
        task.result = self.node_results
        task.error = "; ".join(self.errors[:10]) + (f"; and {len(self.errors) - 10} more" if
                                                    len(self.errors) > 10 else "") if self.errors else None
        self._task_json = None
        await self.cache.set("task", self.task_json)
        await self._publish(self.agent.output_mailbox, output)
        return output

    async def _publish(self, mailbox: str, value: Any) -> None:
        if not mailbox:
            return
        try:
            await self.cache.publish_to_mailbox(mailbox, _jsonable(value))
        except CacheConnectionError:
            raise
        except CacheError as exc:  # a value the codec refuses (a huge int): the mailbox is a notification
            log.warning("Could not publish to mailbox %r: %s", mailbox, exc)

    # --- ready-set scheduling -----------------------------------------------------------------------------

    async def _run_ready(self) -> None:
        ready, done = self.ready, self._done
        while True:
            while ready and self.stopped is None:
                name = ready.popleft()
                if self.state[name] == PENDING and not self.waiting[name]:
                    await self._dispatch(name)
            if self.stopped is not None:
                ready.clear()
            if not self.running:
                return
            finished = await done.get()
            await self._complete(self._names.pop(finished), finished)

    def _check_limits(self, name: str) -> str | None:
        """The visit-limit failure message for ``name``, or None; stops the run past the iteration limit."""
        if self.max_total is not None and self.total >= self.max_total:
            message = (f"Graph execution exceeded maximum total iterations ({self.max_total}): "
                       f"Agent.max_total_iterations counts node executions; node {name!r} was next. Raise it "
                       "(None = no limit) if the graph is meant to run longer.")
            self.stopped = str(IterationLimitExceededError(message))
            self.errors.insert(0, message)
            return None
        limit = self.nodes[name].node_config.max_visits
        if limit is not None and self.visits.get(name, 0) >= limit:
            return str(VisitLimitExceededError(
                f"Node {name!r} exceeded maximum visits ({limit}): NodeConfig.max_visits is {limit}; raise it "
                "(None = no limit) if the loop is meant to run longer."))
        return None

    async def _dispatch(self, name: str) -> None:
        over = self._check_limits(name)
        if self.stopped is not None:
            await self._publish(self.agent.error_mailbox, self.stopped)
            return
        if over is not None:
            await self._fail(name, {"status": "error", "error": over, "result": over})
            return
        node = self.nodes[name]
        visits = self.visits.get(name, 0)
        if node.snapshot is SnapshotControl.ALWAYS or (node.snapshot is SnapshotControl.ONCE and not visits):
            await self._snapshot("before", name, extra_ready=(name,))
        self.visits[name] = visits + 1
        self.total += 1
        self.state[name] = RUNNING
        running = asyncio.get_running_loop().create_task(self._visit(name, visits + 1))
        self.running[name] = running
        self._names[running] = name
        running.add_done_callback(self._done.put_nowait)

    async def _complete(self, name: str, finished: asyncio.Task[tuple[str, ModuleResult]]) -> None:
        del self.running[name]
        self.finished += 1
        try:
            kind, result = finished.result()
        except Exception as exc:  # noqa: BLE001  # _visit catches everything; a bug guard
            kind, result = "failed", _error_result(exc)
        self.node_results[name] = result
        if name in self.rerun:  # re-planned by a jump while it ran: it runs again
            self.rerun.discard(name)
            self.state[name] = PENDING
            self._recount(name, forced=False)
        elif kind == "skipped":
            self._skip(name)
        elif kind == "failed":
            await self._fail(name, result)
        else:
            await self._succeeded(name, result)
        if self.agent.auto_snapshot:
            await self._snapshot("after", name)

    async def _succeeded(self, name: str, result: ModuleResult) -> None:
        self.state[name] = DONE
        jump: tuple[str, bool] | None = None
        new_nodes: list[Any] = []
        for item in _module_results(result):
            if item.get("new_nodes"):
                new_nodes.extend(item["new_nodes"])
            if item.get("decision") is not None:
                jump = (item["decision"], bool(item.get("cleanup", False)))
        try:
            if new_nodes:
                self._splice(name, new_nodes)
            if jump is not None:
                await self._jump(name, *jump)
                return
        except GraphDefinitionError as exc:
            await self._fail(name, _error_result(exc))
            return
        waiting, ready, state = self.waiting, self.ready, self.state
        for child in self.dependents[name]:
            if state[child] == PENDING and waiting[child] > 0:
                waiting[child] -= 1
                if not waiting[child]:
                    ready.append(child)

    def _recount(self, name: str, *, forced: bool) -> None:
        """Recompute what ``name`` (pending) waits for; skip or block it when a dependency never will run."""
        count = 0
        if not forced:
            for dep in self.deps[name]:
                state = self.state[dep]
                if state in (PENDING, RUNNING):
                    count += 1
                elif state == SKIPPED:
                    self._skip(name)
                    return
                elif state in (FAILED, BLOCKED):
                    self._block(name, self._chain_of(dep))
                    return
        self.waiting[name] = count
        if not count:
            self.ready.append(name)

    def _chain_of(self, name: str) -> list[str]:
        for chain in reversed(self.failed_chains):
            if name in chain:
                return chain
        chain = [name]
        self.failed_chains.append(chain)
        return chain

    def _walk(self, start: str) -> Iterator[str]:
        """``start`` and its pending transitive dependents, breadth first."""
        queue = deque([start])
        seen = {start}
        while queue:
            name = queue.popleft()
            yield name
            for child in self.dependents[name]:
                if child not in seen and self.state[child] == PENDING:
                    seen.add(child)
                    queue.append(child)

    def _skip(self, start: str) -> None:
        for name in list(self._walk(start)):
            self.state[name] = SKIPPED
            self.level_skipped.add(name)

    def _block(self, start: str, chain: list[str]) -> None:
        for name in list(self._walk(start)):
            self.state[name] = BLOCKED
            if name not in chain:
                chain.append(name)

    async def _fail(self, name: str, result: ModuleResult) -> None:
        self.node_results[name] = result
        chain: list[str] = []
        self.failed_chains.append(chain)
        self.state[name] = FAILED
        for blocked in list(self._walk(name)):
            chain.append(blocked)
            if blocked != name:
                self.state[blocked] = BLOCKED
        error = str(result.get("error") or result.get("result") or "failed")
        self.errors.append(f"node {name!r}: {error}")
        await self._publish(self.agent.error_mailbox, {"status": "error", "node": name, "error": error})

    async def _jump(self, source: str, target: str, cleanup: bool) -> None:
        """Rule 17: re-plan ``target`` and its dependents; skip ``source``'s branches not taken."""
        if target not in self.nodes:
            raise GraphDefinitionError(f"Node {source!r} jumped to unknown node {target!r}.")
        if self.state[target] in (FAILED, BLOCKED):
            raise GraphDefinitionError(f"Flow control in node {source!r} attempted to jump to failed node "
                                       f"{target!r} (it is in a failed chain).")
        replanned = affected(self.dependents, target)
        members = set(replanned)
        if cleanup:
            await self._close_generators(members)
        if self.agent.scheduling == "levels":
            return
        self.current_plan = _subset_levels(replanned, self.deps)
        self.history.append(self.current_plan)
        for name in replanned:
            if self.state[name] == RUNNING:
                self.rerun.add(name)
            else:
                self.state[name] = PENDING
        for name in replanned:
            if self.state[name] == PENDING:
                self._recount(name, forced=name == target)
        for child in self.dependents[source]:
            if child not in members and self.state[child] == PENDING:
                self._skip(child)

    def _splice(self, parent: str, new_nodes: list[Any]) -> list[str]:
        """Rule 19; returns the names added now. ``GraphDefinitionError`` (nothing added) when one is invalid."""
        fresh: list[Node] = []
        for new in new_nodes:
            if not isinstance(new, Node):
                raise GraphDefinitionError(f"Node {parent!r} returned new_nodes holding a "
                                           f"{type(new).__name__}; new_nodes must be Node objects.")
            if new.name in self.nodes:
                if self.added.get(new.name) == parent:
                    continue
                raise GraphDefinitionError(f"Node {parent!r} returned a new node {new.name!r}, but the graph "
                                           "already has a node of that name.")
            if any(n.name == new.name for n in fresh):
                raise GraphDefinitionError(f"Node {parent!r} returned the new node {new.name!r} twice.")
            fresh.append(new)
        names = {n.name for n in fresh} | set(self.nodes)
        for new in fresh:
            for path, decision, target in _jumps(new):
                if target not in names:
                    raise GraphDefinitionError(f"New node {new.name!r} (from {parent!r}): flow control {path!r}, "
                                               f"decision {decision!r}, jumps to unknown node {target!r}.")
            _compile_conditions(new)
        if not fresh:
            return []
        added = tuple(n.name for n in fresh)
        old = self.dependents[parent]
        for child in old:
            self.deps[child] = self.deps[child] + added
            if self.state[child] == PENDING:
                self.waiting[child] += len(added)
        self.dependents[parent] = old + added
        for new in fresh:
            self.nodes[new.name] = new
            self.deps[new.name] = (parent,)
            self.dependents[new.name] = old
            self.state[new.name] = PENDING
            self.waiting[new.name] = 1
            self.added[new.name] = parent
        if self.agent.scheduling == "levels":
            self.index = index_edges(self.nodes, self.deps)  # cannot fail: a splice adds no cycle
        else:
            self.history.append(_subset_levels(affected(self.dependents, parent)[1:], self.deps))
            self.current_plan = self.history[-1]
        return list(added)

    # --- levels scheduling (Asimov's) ---------------------------------------------------------------------

    async def _run_levels(self) -> None:
        while self.level_index < len(self.level_plan) and self.stopped is None:
            group = self.level_plan[self.level_index]
            failed = {n for chain in self.failed_chains for n in chain}
            eligible = [n for n in group if n not in self.level_executed and n not in self.level_skipped
                        and self.state[n] not in (SKIPPED, BLOCKED) and not any(d in failed for d in self.deps[n])]
            launched: list[str] = []
            for name in eligible:
                node = self.nodes[name]
                visits = self.visits.get(name, 0)
                if node.snapshot is SnapshotControl.ALWAYS or (node.snapshot is SnapshotControl.ONCE and not visits):
                    await self._snapshot("before", name)
                    break
            for name in eligible:
                over = self._check_limits(name)
                if self.stopped is not None:
                    await self._publish(self.agent.error_mailbox, self.stopped)
                    break
                if over is not None:
                    await self._fail(name, {"status": "error", "error": over, "result": over})
                    continue
                self.visits[name] = self.visits.get(name, 0) + 1
                self.total += 1
                self.state[name] = RUNNING
                launched.append(name)
            outcomes = await asyncio.gather(*(self._visit(n, self.visits[n]) for n in launched))
            replan: tuple[str, bool] | None = None
            for name, (kind, result) in zip(launched, outcomes, strict=True):
                self.finished += 1
                self.node_results[name] = result
                if kind == "failed":
                    await self._fail(name, result)
                    continue
                if kind == "skipped":
                    self.state[name] = SKIPPED
                    self.level_skipped.update(affected(self.dependents, name))
                    continue
                self.state[name] = DONE
                self.level_executed.add(name)
                try:
                    jump = None
                    for item in _module_results(result):
                        if item.get("new_nodes"):
                            added = self._splice(name, list(item["new_nodes"]))
                            if added:
                                replan = (added[0], False)
                        if item.get("decision") is not None:
                            jump = (str(item["decision"]), bool(item.get("cleanup", False)))
                    if jump is not None:
                        await self._jump(name, *jump)
                        replan = jump
                except GraphDefinitionError as exc:
                    await self._fail(name, _error_result(exc))
            if replan is not None:
                self.level_plan, skipped = asimov_plan_from(self.index, replan[0])
                for name in {n for group in self.level_plan for n in group}:
                    if self.state[name] in (DONE, SKIPPED):
                        self.state[name] = PENDING
                self.level_skipped = skipped
                self.level_executed = set()
                self.level_index = 0
                self.current_plan = self.level_plan
                self.history.append(self.level_plan)
            else:
                self.level_index += 1
            if self.agent.auto_snapshot and launched:
                await self._snapshot("after", launched[-1])

    # --- one visit ----------------------------------------------------------------------------------------

    async def _visit(self, name: str, visit: int) -> tuple[str, ModuleResult]:
        """Rule 10, in the node's own asyncio task; never raises (but for cancellation)."""
        node = self.nodes[name]
        config = node.node_config
        try:
            with _span("run_node", True, node=name, task_id=self.task.id) if node.trace else _NO_SPAN:
                if config.condition is not None or config.inputs:
                    skipped = await self._gate(node)
                    if skipped is not None:
                        return "skipped", skipped
                if self.node_runner is None:
                    result = await self._attempts(node)
                else:
                    context = RunContext(self.run_id, self.task, name, visit, self.cache, self.agent)
                    result = await self.node_runner(node, context, lambda: self._attempts(node))
                if not isinstance(result, dict):
                    raise NonRetryableError(f"Node {name!r} produced a {type(result).__name__}, not a dict.")
                if node.output_mailbox:
                    await self._publish(node.output_mailbox, result)
        except Exception as exc:  # noqa: BLE001  # any module error is the node's failure
            return "failed", _error_result(exc)
        return ("done" if result.get("status") == "success" else "failed"), result

    async def _gate(self, node: Node) -> ModuleResult | None:
        """The condition and the inputs (one ``get_many``); a skip result when the condition is false."""
        config, name = node.node_config, node.name
        condition = config.condition
        keys = set(config.inputs)
        if isinstance(condition, str):
            keys |= compile_condition(condition).identifiers
        values = await self.cache.get_many(keys) if keys else {}
        missing = [key for key in config.inputs if key not in values]
        if condition is not None:
            if isinstance(condition, str):
                compiled = compile_condition(condition)
                ok = compiled.evaluate(task=self.task_json if compiled.uses_task else None, variables=values,
                                       node=name, decision="condition")
            else:
                ok = await evaluate_any(condition, task=self.task_json,
                                        variables={k: values[k] for k in config.inputs if k in values},
                                        node=name, decision="condition")
            if not ok:
                return {"status": "skipped", "result": None, "reason": "its condition is false"}
        if missing:
            raise NonRetryableError(f"Node {name!r} needs input {missing[0]!r}, which is not in the cache "
                                    f"(namespace {self.namespace!r})" + (f"; also missing: {missing[1:]}"
                                                                          if missing[1:] else "") + ".")
        return None

    async def _attempts(self, node: Node) -> ModuleResult:
        """Rule 12: one run plus up to ``max_retries`` retries."""
        config = node.node_config
        attempts = 1 + config.max_retries if config.retry_on_failure else 1
        result: ModuleResult = {"status": "error", "error": "not run", "result": "not run"}
        for attempt in range(attempts):
            if attempt and config.retry_delay:
                await asyncio.sleep(config.retry_delay)
            try:
                result = await self._composite(node, node.name)
            except _FINAL as exc:
                return _error_result(exc)
            except Exception as exc:  # noqa: BLE001  # retried: rule 12
                result = _error_result(exc)
                continue
            if result.get("status") == "success":
                if config.outputs:
                    found = await self.cache.get_many(config.outputs)
                    missing = [key for key in config.outputs if key not in found]
                    if missing:
                        text = (f"Node {node.name!r} succeeded but did not write output {missing[0]!r} "
                                f"(NodeConfig.outputs) to the cache.")
                        return {"status": "error", "error": text, "result": text}
                return result
        return result

    async def _composite(self, node: Node, path: str) -> ModuleResult:
        modules = node.modules
        if node.node_config.parallel and len(modules) > 1:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self._module(m, f"{path}/{i}", node.name))
                             for i, m in enumerate(modules)]
            except BaseExceptionGroup as grouped:
                first = grouped.exceptions[0]
                raise first from None
            results = [t.result() for t in tasks]
            for result in results:
                if result.get("status") != "success":
                    return {**result, "all_results": results}
            return {"status": "success", "results": results}
        results = []
        for i, module in enumerate(modules):
            result = await self._module(module, f"{path}/{i}", node.name)
            if result.get("status") != "success":
                return result
            results.append(result)
            if module.config.stop_on_success:
                break
        return {"status": "success", "results": results}

    async def _module(self, module: AgentModule, path: str, node: str) -> ModuleResult:
        with _span("run_module", True, module=module.name, node=node) if module.trace else _NO_SPAN:
            if isinstance(module, Node):  # a nested subgraph: never holds a semaphore slot (rule 6)
                result = await self._composite(module, path)
            elif isinstance(module, FlowControlModule):
                result = await self._decide(module, node)
            else:
                async with self.semaphore:
                    result = await self._leaf(module, path, node)
            for middleware in module.config.middlewares:
                result = await middleware.process(result, self.cache)
            if not isinstance(result, dict):
                raise NonRetryableError(f"Module {module.name!r} of node {node!r} returned a "
                                        f"{type(result).__name__}; a module returns a dict (or yields dicts).")
            if module.output_mailbox:
                await self._publish(module.output_mailbox, result)
            return result

    async def _leaf(self, module: AgentModule, path: str, node: str) -> ModuleResult:
        """Rule 13: past its ``timeout`` the module is cancelled (``_Timeouts``) and the visit fails."""
        timeout = module.config.timeout
        if timeout is None:
            return await self._produce(module, path, node)
        task = asyncio.current_task()
        assert task is not None
        expired = [False]
        token = self.timeouts.start(timeout, task, expired)
        if token is None:
            return await self._leaf_on_another_loop(module, path, node, timeout)
        try:
            return await self._produce(module, path, node)
        except asyncio.CancelledError:
            if not expired[0] or task.uncancel() > 0:
                raise
            text = f"Module {module.name!r} execution timed out after {timeout:g} seconds"
            return {"status": "error", "error": text, "result": text, "module": module.name}
        finally:
            self.timeouts.stop(token)

    async def _leaf_on_another_loop(self, module: AgentModule, path: str, node: str, timeout: float) -> ModuleResult:
        try:
            async with asyncio.timeout(timeout) as scope:
                return await self._produce(module, path, node)
        except TimeoutError:
            if not scope.expired():
                raise
            text = f"Module {module.name!r} execution timed out after {timeout:g} seconds"
            return {"status": "error", "error": text, "result": text, "module": module.name}

    async def _produce(self, module: AgentModule, path: str, node: str) -> ModuleResult:
        key = (node, path)
        generator = self.generators.get(key)
        if generator is None:
            produced = module.process(self.cache, self.semaphore)
            if inspect.isawaitable(produced):
                result: ModuleResult = await produced
                return result
            if not hasattr(produced, "__anext__"):
                return produced  # type: ignore[return-value]  # checked by _module
            generator = produced
            self.generators[key] = generator
        try:
            item: ModuleResult = await generator.__anext__()
        except StopAsyncIteration:
            del self.generators[key]
            return {"status": "success", "result": "Generator Exhausted", "exhausted": True}
        except BaseException:
            self.generators.pop(key, None)  # a generator that raised (or was cancelled) is finished
            raise
        return item

    async def _decide(self, module: FlowControlModule, node: str) -> ModuleResult:
        """Rule 16: one ``get_many`` for every decision's identifiers and variables."""
        config = module.flow_config
        keys: set[str] = set()
        compiled: list[CompiledCondition | None] = []
        for decision in config.decisions:
            keys.update(decision.condition_variables)
            if isinstance(decision.condition, str):
                condition = compile_condition(decision.condition)
                keys |= condition.identifiers
                compiled.append(condition)
            else:
                compiled.append(None)
        values = await self.cache.get_many(keys) if keys else {}
        for i, decision in enumerate(config.decisions):
            lua = compiled[i]
            if lua is not None:
                chosen = lua.evaluate(task=self.task_json if lua.uses_task else None, variables=values,
                                      node=node, decision=i)
            elif decision.condition is not None:
                chosen = await evaluate_any(decision.condition, task=self.task_json, node=node, decision=i,
                                            variables={k: values[k] for k in decision.condition_variables
                                                       if k in values})
            else:
                chosen = True
            if chosen:
                if decision.condition_variables:
                    await self.cache.delete_many(decision.condition_variables)
                return {"status": "success", "decision": decision.next_node, "cleanup": decision.cleanup_on_jump,
                        "metadata": decision.metadata}
        if config.default is not None:
            return {"status": "success", "decision": config.default, "cleanup": config.cleanup_on_default}
        return {"status": "success", "decision": None, "cleanup": False}

    async def _close_generators(self, nodes: set[str] | None) -> None:
        """Close the generators of ``nodes`` (None: all); a generator that is running right now is left be."""
        for key in [k for k in self.generators if nodes is None or k[0] in nodes]:
            if self.state.get(key[0]) == RUNNING and nodes is not None:
                continue
            generator = self.generators.pop(key)
            close = getattr(generator, "aclose", None)
            if close is None:
                continue
            try:
                async with asyncio.timeout(GENERATOR_CLOSE_TIMEOUT):
                    await close()
            except Exception as exc:  # noqa: BLE001  # a generator's cleanup must not end the run
                log.warning("Closing the generator of %s (node %r) failed: %s", key[1], key[0], _error_text(exc))

    # --- snapshots ----------------------------------------------------------------------------------------

    async def _snapshot(self, when: Literal["before", "after"], node: str, extra_ready: tuple[str, ...] = ()) -> None:
        """Rule 20: capture the run synchronously, then dump the cache namespace and write the file."""
        if self.snap_root is None:
            self.snap_root = snapshot_root(self.agent.snapshot_dir)
            self.snap_seq = next_seq(self.snap_root, self.task.id)
        running = [n for n in self.running if n not in self.rerun]
        visits = dict(self.visits)
        for name in self.running:
            visits[name] -= 1
            if not visits[name]:
                del visits[name]
        by_state: dict[int, list[str]] = {}
        for name, state in self.state.items():
            by_state.setdefault(state, []).append(name)
        ready = list(dict.fromkeys([*extra_ready, *running, *(n for n in self.ready if self.state[n] == PENDING
                                                            and not self.waiting[n])]))
        results = {name: to_json_data(result, f"the result of node {name!r}")
                   for name, result in self.node_results.items()}
        progress = self.execution_state()
        progress.total_iterations = self.total - len(self.running)
        levels_state = None
        if self.agent.scheduling == "levels":
            levels_state = LevelsState(plan=self.level_plan, index=self.level_index,
                                       executed=sorted(self.level_executed), skipped=sorted(self.level_skipped))
        seq = self.snap_seq
        self.snap_seq += 1
        dump = await self.cache.dump_namespace()
        data = SnapshotData(seq=seq, when=when, node=node, task=self.task, namespace=self.namespace,
                            scheduling=self.agent.scheduling, state=progress, visits=visits,
                            failed_chains=self.failed_chains, node_results=results,
                            done=by_state.get(DONE, []), skipped=by_state.get(SKIPPED, []),
                            failed=by_state.get(FAILED, []), blocked=by_state.get(BLOCKED, []), ready=ready,
                            added_nodes=sorted(self.added), levels=levels_state, cache=dict(dump))
        write_snapshot(self.snap_root, data)

    async def restore(self, data: SnapshotData) -> None:
        """Set this (fresh) run to the snapshot's state and load its cache namespace."""
        self.visits = dict(data.visits)
        self.total = data.state.total_iterations
        self.failed_chains = [list(chain) for chain in data.failed_chains]
        self.node_results = dict(data.node_results)
        self.history = data.state.execution_history
        self.current_plan = data.state.current_plan
        self.finished = data.state.execution_index
        for names, state in ((data.done, DONE), (data.skipped, SKIPPED), (data.failed, FAILED),
                             (data.blocked, BLOCKED)):
            for name in names:
                self.state[name] = state
        self.ready.clear()
        forced = set(data.ready)
        for name in self.index.topo:
            if self.state[name] == PENDING:
                self._recount(name, forced=name in forced)
        if data.levels is not None:
            self.level_plan = data.levels.plan
            self.level_index = data.levels.index
            self.level_executed = set(data.levels.executed)
            self.level_skipped = set(data.levels.skipped)
        from flowmas.cache.base import check_dump

        try:
            dump = check_dump(data.cache)
        except CacheError as exc:
            raise SnapshotError(f"The snapshot's cache dump is damaged: {exc}") from None
        await self.cache.load_namespace(dump, replace=True)


def _module_results(result: ModuleResult) -> list[ModuleResult]:
    inner = result.get("results")
    if isinstance(inner, list):
        return [r for r in inner if isinstance(r, dict)]
    return [result]


def _jumps(node: Node) -> list[tuple[str, int | str, str]]:
    from flowmas.graph.planning import jump_targets

    return jump_targets(node)


def _subset_levels(members: list[str], deps: Mapping[str, tuple[str, ...]]) -> list[list[str]]:
    """Level plan of ``members`` by Kahn's algorithm inside the subset, O(members + their edges)."""
    inside = set(members)
    waiting = {name: sum(1 for d in deps[name] if d in inside) for name in members}
    children: dict[str, list[str]] = {name: [] for name in members}
    for name in members:
        for dep in deps[name]:
            if dep in inside:
                children[dep].append(name)
    current = [name for name in members if not waiting[name]]
    plan: list[list[str]] = []
    while current:
        plan.append(current)
        following: list[str] = []
        for name in current:
            for child in children[name]:
                waiting[child] -= 1
                if not waiting[child]:
                    following.append(child)
        current = following
    return plan
