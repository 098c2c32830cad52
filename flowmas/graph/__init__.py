"""Agent task graphs (``flowmas.graph``): Asimov Agents' model and names on a dependency-driven engine.

``engine``'s module docstring states every rule the engine follows; ``planning`` validates and plans in
O(nodes + edges); ``snapshots`` writes and reads JSON snapshots; ``conditions`` evaluates sandboxed Lua.
The package imports no face (Prefect, FastAPI): a face calls ``Agent.run_task`` once per run and may wrap
each node through ``node_runner``.
"""

from flowmas.errors import (
    ConditionError,
    GraphDefinitionError,
    GraphError,
    IterationLimitExceededError,
    NonRetryableError,
    NonRetryableException,
    SnapshotError,
    VisitLimitExceededError,
)
from flowmas.graph.engine import Agent, GraphRun, NodeRunner, RunContext
from flowmas.graph.model import (
    AgentModule,
    ExecutionState,
    FlowControlConfig,
    FlowControlModule,
    FlowDecision,
    Middleware,
    ModuleConfig,
    ModuleResult,
    ModuleType,
    Node,
    NodeConfig,
    SnapshotControl,
    Task,
    TaskStatus,
)
from flowmas.graph.planning import GraphIndex, build_index
from flowmas.graph.snapshots import SnapshotData, latest_snapshot, read_snapshot

__all__ = [
    "Agent",
    "AgentModule",
    "ConditionError",
    "ExecutionState",
    "FlowControlConfig",
    "FlowControlModule",
    "FlowDecision",
    "GraphDefinitionError",
    "GraphError",
    "GraphIndex",
    "GraphRun",
    "IterationLimitExceededError",
    "Middleware",
    "ModuleConfig",
    "ModuleResult",
    "ModuleType",
    "Node",
    "NodeConfig",
    "NodeRunner",
    "NonRetryableError",
    "NonRetryableException",
    "RunContext",
    "SnapshotControl",
    "SnapshotData",
    "SnapshotError",
    "Task",
    "TaskStatus",
    "VisitLimitExceededError",
    "build_index",
    "latest_snapshot",
    "read_snapshot",
]
