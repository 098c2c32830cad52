"""Validation and planning in O(nodes + edges), iterative (no recursion limit), never a hang.

``build_index`` checks a graph once (unknown dependencies, dependency cycles, jump targets that do not
exist: each a ``GraphDefinitionError`` naming the nodes) and returns a ``GraphIndex``: dependencies,
dependents, a topological order and every node's level (its longest dependency path from a root), by
Kahn's algorithm. Flow-control jumps are not dependency edges, so loops through them are allowed.

``levels`` groups nodes by level — Asimov's plan shape, including its order inside a group (reverse
insertion order). ``affected`` is the incremental re-plan of a jump: the target and its transitive
dependents, found by one breadth-first walk. ``asimov_plan_from`` reproduces Asimov's ``plan from a node``
(slice the level plan at the target's level, skip the target's siblings and their dependents, then un-skip
every dependent of the target) for ``scheduling="levels"``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flowmas.errors import GraphDefinitionError
from flowmas.graph.model import AgentModule, FlowControlModule, Node

__all__ = ["GraphIndex", "affected", "asimov_plan_from", "build_index", "flow_controls", "index_edges",
           "iter_modules", "jump_targets", "levels"]

_SHOWN = 20


@dataclass(frozen=True, slots=True)
class GraphIndex:
    """A validated graph: ``order`` is insertion order, ``deps``/``dependents`` the edges both ways."""

    order: tuple[str, ...]
    deps: Mapping[str, tuple[str, ...]]
    dependents: Mapping[str, tuple[str, ...]]
    topo: tuple[str, ...]
    level: Mapping[str, int]


def iter_modules(node: AgentModule) -> Iterable[tuple[str, AgentModule]]:
    """Every module below ``node`` (nested subgraphs included) with its path, depth first, iteratively."""
    stack: list[tuple[str, AgentModule]] = [(node.name, node)]
    while stack:
        path, module = stack.pop()
        if isinstance(module, Node):
            children = list(enumerate(module.modules))
            stack.extend((f"{path}/{i}", child) for i, child in reversed(children))
        if module is not node:
            yield path, module


def flow_controls(node: Node) -> list[tuple[str, FlowControlModule]]:
    """The flow-control modules below ``node`` with their paths (a fast path for the usual flat node)."""
    for module in node.modules:
        if isinstance(module, Node | FlowControlModule):
            break
    else:
        return []
    return [(path, m) for path, m in iter_modules(node) if isinstance(m, FlowControlModule)]


def jump_targets(node: Node) -> list[tuple[str, int | str, str]]:
    """``(module path, decision index or 'default', target)`` for every flow-control jump in ``node``."""
    found: list[tuple[str, int | str, str]] = []
    for path, module in flow_controls(node):
        found += [(path, i, d.next_node) for i, d in enumerate(module.flow_config.decisions)]
        if module.flow_config.default is not None:
            found.append((path, "default", module.flow_config.default))
    return found


def _names(names: Iterable[str]) -> str:
    items = list(names)
    shown = ", ".join(repr(n) for n in items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def build_index(nodes: Mapping[str, Node]) -> GraphIndex:
    """Validate ``nodes`` (name → node) and index them; ``GraphDefinitionError`` lists every problem found."""
    order = tuple(nodes)
    problems: list[str] = []
    deps: dict[str, tuple[str, ...]] = {}
    for name, node in nodes.items():
        own = tuple(dict.fromkeys(node.dependencies))  # a repeated dependency is one edge
        unknown = [d for d in own if d not in nodes]
        if unknown:
            problems.append(f"node {name!r} depends on unknown node(s) {_names(unknown)}")
        deps[name] = tuple(d for d in own if d in nodes)
        for path, decision, target in jump_targets(node):
            if target not in nodes:
                problems.append(f"flow control {path!r} (node {name!r}), decision {decision!r}, jumps to unknown "
                                f"node {target!r}")
    if problems:
        raise GraphDefinitionError("Invalid graph: " + "; ".join(problems[:_SHOWN])
                                   + (f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else "")
                                   + ".")
    return index_edges(order, deps)


def index_edges(names: Iterable[str], deps: Mapping[str, tuple[str, ...]]) -> GraphIndex:
    """Index already-checked edges (every dependency is a node): Kahn's algorithm, levels, cycle check."""
    order = tuple(names)
    dependents: dict[str, list[str]] = {name: [] for name in order}
    for name in order:
        for dep in deps[name]:
            dependents[dep].append(name)
    waiting = {name: len(deps[name]) for name in order}
    level = dict.fromkeys(order, 0)
    queue = deque(name for name in order if not waiting[name])
    topo: list[str] = []
    while queue:
        name = queue.popleft()
        topo.append(name)
        next_level = level[name] + 1
        for child in dependents[name]:
            if level[child] < next_level:
                level[child] = next_level
            waiting[child] -= 1
            if not waiting[child]:
                queue.append(child)
    if len(topo) < len(order):
        raise GraphDefinitionError(_cycle_message(order, deps, waiting))
    return GraphIndex(order, dict(deps), {k: tuple(v) for k, v in dependents.items()}, tuple(topo), level)


def _cycle_message(order: tuple[str, ...], deps: Mapping[str, tuple[str, ...]], waiting: Mapping[str, int]) -> str:
    """Name one cycle among the nodes Kahn's algorithm could not order (each has an unordered dependency)."""
    stuck = {name for name in order if waiting[name]}
    start = next(name for name in order if name in stuck)
    seen: dict[str, int] = {}
    path: list[str] = []
    name = start
    while name not in seen:
        seen[name] = len(path)
        path.append(name)
        name = next(d for d in deps[name] if d in stuck)
    cycle = [*path[seen[name]:], name]
    shown = " -> ".join(repr(n) for n in cycle[:_SHOWN]) + (" -> ..." if len(cycle) > _SHOWN else "")
    return (f"Dependency cycle: {shown} (each depends on the next). {len(stuck)} node(s) cannot be ordered. "
            "A loop must go through a flow-control jump (FlowDecision), not through dependencies.")


def levels(index: GraphIndex, subset: Iterable[str] | None = None) -> list[list[str]]:
    """The level plan of ``subset`` (default: every node), Asimov's order inside a level (reverse insertion).

    With a subset, levels are recomputed inside it (its nodes' longest paths through the subset)."""
    if subset is None:
        grouped: dict[int, list[str]] = {}
        for name in reversed(index.order):
            grouped.setdefault(index.level[name], []).append(name)
        return [grouped[k] for k in sorted(grouped)]
    members = set(subset)
    position = {name: i for i, name in enumerate(index.order)}
    local: dict[str, int] = {}
    for name in index.topo:  # topological order: every dependency's level is known first
        if name in members:
            local[name] = max((local[d] + 1 for d in index.deps[name] if d in members), default=0)
    grouped = {}
    for name in sorted(members, key=position.__getitem__, reverse=True):
        grouped.setdefault(local[name], []).append(name)
    return [grouped[k] for k in sorted(grouped)]


def affected(index_dependents: Mapping[str, Iterable[str]], start: str) -> list[str]:
    """``start`` and its transitive dependents, breadth first (the re-plan of a jump to ``start``)."""
    seen = {start}
    found = [start]
    queue = deque([start])
    while queue:
        for child in index_dependents[queue.popleft()]:
            if child not in seen:
                seen.add(child)
                found.append(child)
                queue.append(child)
    return found


def asimov_plan_from(index: GraphIndex, start: str) -> tuple[list[list[str]], set[str]]:
    """Asimov's re-plan from ``start``: the level plan from ``start``'s level on, and the nodes to skip (its
    siblings in that level and their dependents, except the dependents of ``start``, which are un-skipped even
    when they also depend on a skipped sibling: Asimov's "Z runs without Y")."""
    plan = levels(index)
    where = next((i for i, group in enumerate(plan) if start in group), None)
    if where is None:
        return plan, set()
    plan = plan[where:]
    skipped: set[str] = set()
    for sibling in plan[0]:
        if sibling != start:
            skipped.update(affected(index.dependents, sibling))
    skipped.difference_update(affected(index.dependents, start))
    return plan, skipped
