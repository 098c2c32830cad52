"""What every face of the graph engine needs before a run: the graph, the task, the cache, the plan in words.

    load_graph("examples.research:graph")  -> Agent     a module attribute: an Agent, or a zero-argument factory
                                                        returning one; the project's directory and the current
                                                        directory are importable (as for the project's agents)
    parse_task('{"type": ..., "objective": ...}') -> Task   JSON text or a dict; errors name the field
    default_cache(settings)                -> BaseCache  FLOWMAS_CACHE_URL (Redis), else this process's one
                                                        EmbeddedCache (``process_cache()``)
    describe_plan(agent, name)             -> str        the validated level plan, one line per node

Every mistake is a ``ConfigurationError`` (the CLI's exit code 2, a 400 for the container) naming the path or
field and what was found there; a graph that does not validate keeps the engine's ``GraphDefinitionError``.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flowmas.cache import BaseCache, cache_from_url, process_cache
from flowmas.errors import ConfigurationError
from flowmas.graph.engine import Agent
from flowmas.graph.model import FlowControlModule, ModuleType, Node, Task
from flowmas.graph.planning import iter_modules, jump_targets
from flowmas.settings import FlowmasSettings, find_project_file
from flowmas.text import one_line, shorten

__all__ = ["MAX_PATH_CHARS", "MAX_TASK_BYTES", "default_cache", "describe_plan", "graph_roots", "load_graph",
           "node_kind", "parse_task", "process_cache", "tracked"]

MAX_PATH_CHARS = 300
MAX_TASK_BYTES = 4 * 2**20
"""Largest task JSON accepted (text): a task is a description and parameters, not a data set."""
_IMPORT_LOCK = threading.Lock()


def graph_roots(settings: FlowmasSettings | None = None) -> list[Path]:
    """Where graph modules are imported from, besides ``sys.path``: the project's directory, then the cwd."""
    roots: list[Path] = []
    try:
        project = find_project_file(settings=settings)
    except ConfigurationError:
        project = None
    if project is not None:
        roots.append(project.expanduser().resolve().parent)
    roots.append(Path.cwd())
    return list(dict.fromkeys(roots))


def _shown(value: object, limit: int = 120) -> str:
    return shorten(one_line(str(value)), limit)


def load_graph(path: str, *, settings: FlowmasSettings | None = None) -> Agent:
    """The ``Agent`` that ``module:attr`` names (``attr`` may be dotted, or a zero-argument factory)."""
    if isinstance(path, str) and len(path) > MAX_PATH_CHARS:
        raise ConfigurationError(f"Graph {_shown(path, 80)!r}: an import path of {len(path)} characters; the limit "
                                 f"is {MAX_PATH_CHARS}.")
    if not isinstance(path, str) or path.count(":") != 1:
        raise ConfigurationError(f"Graph {_shown(path)!r}: name it MODULE:ATTR, e.g. examples.research:graph "
                                 "(a module importable from the project's directory, ':', then the Agent).")
    module_name, attr = (part.strip() for part in path.split(":"))
    if not module_name or not attr or not all(p.isidentifier() for p in (*module_name.split("."), *attr.split("."))):
        raise ConfigurationError(f"Graph {_shown(path)!r}: {module_name or '(empty)'!r} must be a dotted module name "
                                 f"and {attr or '(empty)'!r} an attribute name, e.g. examples.research:graph.")
    with _IMPORT_LOCK:
        for root in reversed(graph_roots(settings)):
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))  # the project's modules, as `python -m` would see them
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001  # any import error is the user's module's problem: say which
            kind = "not found" if isinstance(exc, ModuleNotFoundError) and exc.name == module_name else \
                f"{type(exc).__name__}: {_shown(exc, 200)}"
            raise ConfigurationError(f"Graph {path!r}: cannot import module {module_name!r} ({kind}). Is it "
                                     "importable from the project's directory or the current one?") from None
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise ConfigurationError(f"Graph {path!r}: module {module_name!r} has no attribute {attr!r}.")
        found = getattr(found, part)
    if not isinstance(found, Agent) and callable(found) and not isinstance(found, type):
        try:
            found = found()
        except Exception as exc:  # noqa: BLE001  # the user's factory: say how it failed
            raise ConfigurationError(f"Graph {path!r}: the factory {attr!r} failed ({type(exc).__name__}: "
                                     f"{_shown(exc, 200)}).") from None
    if not isinstance(found, Agent):
        raise ConfigurationError(f"Graph {path!r}: {attr!r} is a {type(found).__name__}, not a flowmas.graph.Agent "
                                 "(or a zero-argument function returning one).")
    return found


def parse_task(value: str | bytes | Mapping[str, Any] | Task) -> Task:
    """A ``Task`` from JSON text or a dict: ``type`` and ``objective`` are required, ``id`` a safe name."""
    if isinstance(value, Task):
        return value
    data: Any = value
    if isinstance(value, str | bytes):
        if len(value) > MAX_TASK_BYTES:
            raise ConfigurationError(f"The task JSON is {len(value)} characters; the limit is {MAX_TASK_BYTES}.")
        try:
            data = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise ConfigurationError(f"The task is not valid JSON ({_shown(exc, 160)}); give an object like "
                                     '{"type": "research", "objective": "...", "params": {...}}.') from None
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"The task must be a JSON object, not {type(data).__name__}; e.g. "
                                 '{"type": "research", "objective": "..."}.')
    try:
        return Task.model_validate(dict(data))
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False)[:5]:
            where = ".".join(str(p) for p in error["loc"]) or "(the task)"
            problems.append(f"{where}: {error['msg']}")
        raise ConfigurationError(f"The task is invalid: {_shown('; '.join(problems), 400)}. A task has type (str), "
                                 "objective (str), optional id, params (object).") from None
    except RecursionError:
        raise ConfigurationError("The task is nested too deeply.") from None


def default_cache(settings: FlowmasSettings | None = None) -> BaseCache:
    """FLOWMAS_CACHE_URL's cache (a new client: close it), else ``process_cache()`` (never closed)."""
    settings = settings or FlowmasSettings()
    url = settings.cache_url.get_secret_value() if settings.cache_url is not None else None
    if url is None or url.strip() in ("", "memory://", "memory:"):
        return process_cache()
    return cache_from_url(url)


def node_kind(node: Node) -> str:
    """``executor``, ``flow control`` or ``subgraph``: what a node's modules are (its own ``type`` aside)."""
    kinds = {module.type for _, module in iter_modules(node) if module is not node and not isinstance(module, Node)}
    if kinds and kinds <= {ModuleType.FLOW_CONTROL}:
        return "flow control"
    if any(isinstance(m, Node) for m in node.modules):
        return "subgraph"
    return "executor"


def _is_executor(node: Node) -> bool:
    return any(not isinstance(m, FlowControlModule | Node) for _, m in iter_modules(node) if m is not node)


def describe_plan(agent: Agent, name: str = "graph") -> str:
    """The graph validated, as text: its settings, the level plan, and each node's dependencies and jumps."""
    plan = agent.compile_execution_plan()  # validates: GraphDefinitionError / ConditionError
    lines = [(f"{name}: {len(agent.nodes)} nodes, scheduling={agent.scheduling}, max_concurrent_tasks="
              f"{agent.max_concurrent_tasks}, max_total_iterations={agent.max_total_iterations}")]
    for number, level in enumerate(plan, 1):
        lines.append(f"  level {number}: {', '.join(level)}")
    width = max((len(n) for n in agent.nodes), default=4)
    for node_name, node in agent.nodes.items():
        config = node.node_config
        parts = [node_kind(node)]
        if node.dependencies:
            parts.append(f"after {', '.join(node.dependencies)}")
        if isinstance(config.condition, str):
            parts.append(f"if {config.condition}")
        elif config.condition is not None:
            parts.append("if <callable>")
        jumps = []
        for _, decision, target in jump_targets(node):
            if decision == "default":
                jumps.append(f"else {target}")
            else:
                fc = [m for _, m in iter_modules(node) if isinstance(m, FlowControlModule)]
                condition = next((d.condition for m in fc for i, d in enumerate(m.flow_config.decisions)
                                  if i == decision and d.next_node == target), None)
                jumps.append(f"{target} if {condition}" if isinstance(condition, str) else target)
        if jumps:
            parts.append(f"jumps: {'; '.join(jumps)}")
        parts.append(f"max_visits={config.max_visits}")
        from_track = "tracked" if tracked(node) else "inline"
        parts.append(from_track)
        lines.append(f"  {node_name:<{width}}  {' | '.join(parts)}")
    return "\n".join(lines)


def tracked(node: Node) -> bool:
    """Whether a face shows this node's visits as their own runs (Prefect task runs).

    ``NodeConfig.track`` decides when set. Unset (``None``): a node is tracked when it has an executor (a module
    that is neither flow control nor a nested node) *and* retries after a delay (``retry_delay > 0``) — a
    delay is what tells the node waits on something outside (an LLM, an HTTP service) and may take a while;
    flow control and quick steps run inline, costing microseconds instead of a task run each.
    """
    config = node.node_config
    if config.track is not None:
        return config.track
    return config.retry_delay > 0 and _is_executor(node)
