"""Planning without running: Kahn's validation, Asimov's level plan and its order, incremental re-plans, scale."""

from __future__ import annotations

import random
import time

import pytest

from flowmas.cache import BaseCache
from flowmas.errors import GraphDefinitionError
from flowmas.graph import Agent, Node, Task
from flowmas.graph.planning import affected, asimov_plan_from, build_index, levels
from tests.graph.conftest import node


def nodes(*specs: tuple[str, ...]) -> dict[str, Node]:
    return {spec[0]: node(spec[0], *spec[1:]) for spec in specs}


def test_levels_are_longest_paths_in_asimovs_order() -> None:
    index = build_index(nodes(("B",), ("A",), ("C", "A"), ("D", "C", "B"), ("E", "A")))
    assert levels(index) == [["A", "B"], ["E", "C"], ["D"]]  # reverse insertion order inside a level
    assert index.level == {"B": 0, "A": 0, "C": 1, "D": 2, "E": 1}
    assert index.dependents["A"] == ("C", "E")


def test_repeated_dependencies_are_one_edge() -> None:
    index = build_index(nodes(("A",), ("B", "A", "A")))
    assert index.deps["B"] == ("A",) and levels(index) == [["A"], ["B"]]


def test_affected_is_the_target_and_its_transitive_dependents() -> None:
    index = build_index(nodes(("A",), ("B", "A"), ("C", "B"), ("D", "A"), ("X",), ("Y", "X")))
    assert affected(index.dependents, "B") == ["B", "C"]
    assert set(affected(index.dependents, "A")) == {"A", "B", "C", "D"}
    assert levels(index, affected(index.dependents, "A")) == [["A"], ["D", "B"], ["C"]]


def test_asimov_plan_from_skips_siblings_and_unskips_dependents() -> None:
    index = build_index(nodes(("F",), ("X", "F"), ("Y", "F"), ("Z", "X", "Y"), ("W", "Y")))
    plan, skipped = asimov_plan_from(index, "X")
    assert plan == [["Y", "X"], ["W", "Z"]]
    assert skipped == {"Y", "W"}  # Z is un-skipped although Y is skipped: Asimov's rule
    assert asimov_plan_from(index, "F") == (levels(index), set())


def test_compile_execution_plan_from(mem: BaseCache) -> None:
    agent = Agent(cache=mem)
    agent.add_multiple_nodes(nodes(("A",), ("B", "A"), ("C", "B"), ("Other",)).values())
    assert agent.compile_execution_plan() == [["Other", "A"], ["B"], ["C"]]
    assert agent.compile_execution_plan_from("B") == [["B"], ["C"]]
    with pytest.raises(GraphDefinitionError, match="Unknown node 'Nope'"):
        agent.compile_execution_plan_from("Nope")


def random_dag(count: int, seed: int = 7) -> dict[str, Node]:
    rng = random.Random(seed)
    made: dict[str, Node] = {}
    for i in range(count):
        deps = [f"n{j}" for j in rng.sample(range(i), min(i, 3))]
        made[f"n{i}"] = node(f"n{i}", *deps)
    return made


def test_a_400_node_plan_is_fast_and_topological() -> None:
    graph = random_dag(400)
    start = time.perf_counter()
    for _ in range(5):
        index = build_index(graph)
        plan = levels(index)
    per_plan = (time.perf_counter() - start) / 5
    assert per_plan < 0.05  # Asimov: 520-960 ms; the target is <= ~10 ms (measured ~2 ms; slack for CI noise)
    position = {name: i for i, group in enumerate(plan) for name in group}
    assert sum(len(g) for g in plan) == 400
    for name, n in graph.items():
        assert all(position[d] < position[name] for d in n.dependencies)


async def test_a_400_node_graph_runs(mem: BaseCache) -> None:
    agent = Agent(cache=mem, max_concurrent_tasks=8)
    agent.add_multiple_nodes(random_dag(400).values())
    start = time.perf_counter()
    out = await agent.run_task(Task(type="t", objective="400"))
    assert time.perf_counter() - start < 5
    assert out["status"] == "complete" and len(out["result"]) == 400
    assert agent.execution_state.total_iterations == 400


def test_a_5000_node_chain_inserted_backwards_validates_without_recursion() -> None:
    graph = {f"n{i}": node(f"n{i}", *([f"n{i - 1}"] if i else [])) for i in range(4999, -1, -1)}
    index = build_index(graph)
    assert index.topo[0] == "n0" and index.topo[-1] == "n4999" and index.level["n4999"] == 4999
