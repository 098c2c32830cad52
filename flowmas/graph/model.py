"""The task-graph data model (Asimov Agents' names, pydantic v2): tasks, modules, nodes, flow control.

These are *definitions*: nothing here holds per-run state (plan, visits, results, generators), so one ``Agent``
can run many tasks, concurrently too (``flowmas.graph.engine`` keeps per-run state in a ``GraphRun``). Configs
forbid unknown fields: Asimov accepted ``ModuleConfig(max_visits=2)`` and ignored it (bug #10), here it is an
error naming the field.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowmas.cache import Cache

__all__ = [
    "TASK_ID_PATTERN",
    "AgentModule",
    "Condition",
    "ExecutionState",
    "FlowControlConfig",
    "FlowControlModule",
    "FlowDecision",
    "Middleware",
    "ModuleConfig",
    "ModuleResult",
    "ModuleType",
    "Node",
    "NodeConfig",
    "SnapshotControl",
    "Task",
    "TaskStatus",
    "check_task_id",
]

TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""A task id names a snapshot directory and a cache namespace, so it is a safe file name: no '/', no '..'."""

ModuleResult = dict[str, Any]
Condition = str | Callable[..., Any]
"""A Lua expression (sandboxed, ``flowmas.graph.conditions``) or a Python callable (sync or async)."""


def check_task_id(value: object) -> str:
    """``value`` as a task id (a UUID becomes its text), or ``ValueError`` saying what a task id may hold."""
    if isinstance(value, UUID):
        return str(value)
    if not isinstance(value, str) or not TASK_ID_PATTERN.fullmatch(value):
        shown = repr(value)[:80]
        raise ValueError(f"Invalid task id {shown}: a task id names a snapshot directory, so it is 1–200 "
                         "characters of letters, digits, '.', '_' and '-', starting with a letter or digit.")
    return value


class TaskStatus(StrEnum):
    """Asimov's values; outputs and mailboxes carry the string value, never the enum object."""

    WAITING = "waiting"
    EXECUTING = "executing"
    COMPLETE = "complete"
    FAILED = "failed"
    PARTIAL = "partial_failure"


class Task(BaseModel):
    """What a run works on. The engine sets ``status``, ``result`` (the node results) and ``error``."""

    model_config = ConfigDict(validate_assignment=True)

    id: str = Field(default_factory=lambda: str(uuid4()))
    type: str
    objective: str
    params: dict[str, Any] = Field(default_factory=dict)
    status: TaskStatus = TaskStatus.WAITING
    result: Any = None
    error: str | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: object) -> str:
        return check_task_id(value)

    def update_status(self, status: TaskStatus) -> None:
        self.status = status

    def set_result(self, result: Any) -> None:
        self.result = result
        self.status = TaskStatus.COMPLETE

    def set_error(self, error: str) -> None:
        self.error = error
        self.status = TaskStatus.FAILED


class ModuleType(StrEnum):
    """A label for faces and tools (the Prefect face tracks executors, not flow control)."""

    EXECUTOR = "executor"
    FLOW_CONTROL = "flow_control"
    SUBGRAPH = "subgraph"


class SnapshotControl(StrEnum):
    """When a node is snapshotted before it runs: never, before its first visit only, before every visit."""

    NEVER = "never"
    ONCE = "once"
    ALWAYS = "always"


class Middleware:
    """Post-processes a module result (and every item an async-generator module yields), in list order."""

    async def process(self, data: ModuleResult, cache: Cache) -> ModuleResult:
        return data


class ModuleConfig(BaseModel):
    """Per-module settings. ``timeout`` (seconds, ``None`` = none) cancels one module run."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    stop_on_success: bool = False
    middlewares: list[Middleware] = Field(default_factory=list)
    timeout: float | None = Field(default=60.0, gt=0, allow_inf_nan=False)
    context: dict[str, Any] = Field(default_factory=dict)


class AgentModule(BaseModel):
    """One unit of work. Subclasses implement ``process(cache, semaphore)``: return a dict (or an awaitable of
    one), or be an async generator yielding dicts — one item per node visit (how streaming modules live
    across loop turns). ``status == "success"`` in the dict means success; ``new_nodes`` splices nodes in
    after this module's node; ``decision`` jumps (flow control).

    ``semaphore`` is the run's concurrency limit; the engine already holds one slot while ``process`` runs,
    so do not acquire it again inside (use your own for sub-work)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    type: ModuleType = ModuleType.EXECUTOR
    config: ModuleConfig = Field(default_factory=ModuleConfig)
    dependencies: list[str] = Field(default_factory=list)
    input_mailboxes: list[str] = Field(default_factory=list)
    output_mailbox: str = ""
    trace: bool = False

    def process(self, cache: Cache, semaphore: Any) -> Awaitable[ModuleResult] | AsyncIterator[ModuleResult]:
        raise NotImplementedError(f"Module {self.name!r} ({type(self).__name__}) does not implement process().")


class NodeConfig(BaseModel):
    """Per-node settings (the engine's module docstring states what each one does).

    ``max_retries`` counts *retries* (one run plus up to that many); the default 2 keeps Asimov's default of
    three attempts. ``max_visits`` (default 100; ``None`` = unlimited) caps how often the node runs in one
    run. ``track`` is for faces: ``None`` lets the face decide whether the node is a tracked task run.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    parallel: bool = False
    condition: Condition | None = None
    retry_on_failure: bool = True
    max_retries: int = Field(default=2, ge=0, le=1000)
    retry_delay: float = Field(default=0.0, ge=0, le=3600, allow_inf_nan=False)
    max_visits: int | None = Field(default=100, ge=1, le=10**9)
    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    track: bool | None = None

    @field_validator("max_visits", mode="before")
    @classmethod
    def _visits(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise ValueError(f"max_visits must be at least 1 (got {value}); use None for no limit.")
        return value


class Node(AgentModule):
    """A named step of the graph: its modules run in order (or together with ``parallel``) after its
    ``dependencies``. A ``Node`` used as another node's module is a nested subgraph (run inline)."""

    type: ModuleType = ModuleType.SUBGRAPH
    modules: list[AgentModule] = Field(default_factory=list)
    node_config: NodeConfig = Field(default_factory=NodeConfig)
    snapshot: SnapshotControl = SnapshotControl.NEVER


class FlowDecision(BaseModel):
    """Jump to ``next_node`` when ``condition`` holds (no condition: always). The chosen decision's
    ``condition_variables`` are deleted from the cache ("consume a flag")."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    next_node: str
    condition: Condition | None = None
    condition_variables: list[str] = Field(default_factory=list)
    cleanup_on_jump: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)


class FlowControlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decisions: list[FlowDecision] = Field(default_factory=list)
    default: str | None = None
    cleanup_on_default: bool = True


class FlowControlModule(AgentModule):
    """Decisions tried in order, then ``default``; evaluated by the engine (it knows the node, the run's cache
    and the compiled conditions), so ``process`` is not called."""

    type: ModuleType = ModuleType.FLOW_CONTROL
    flow_config: FlowControlConfig = Field(default_factory=FlowControlConfig)


class ExecutionState(BaseModel):
    """A run's progress in Asimov's shape. ``current_plan`` is the level plan of what is left to run after the
    latest (re)plan; ``execution_history`` holds every plan (the first, then one per jump or splice);
    ``total_iterations`` counts node executions; ``execution_index`` counts finished node visits (the level
    index in ``scheduling="levels"``)."""

    execution_index: int = 0
    current_plan: list[list[str]] = Field(default_factory=list)
    execution_history: list[list[list[str]]] = Field(default_factory=list)
    total_iterations: int = 0


Scheduling = Literal["ready", "levels"]


def task_json(task: Task) -> Mapping[str, Any]:
    return task.model_dump(mode="json")
