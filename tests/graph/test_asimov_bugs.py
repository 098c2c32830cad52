"""A regression test per Asimov bug (anchor §5) that concerns the engine, with the behaviour flowmas chose.

#17 (pickle snapshots) is in tests/hostile/test_graphs.py; #18 and #19 are the cache's; #21-#24 are not the
engine's. "fixed" means the Asimov behaviour is gone; "kept" means flowmas reproduces it on purpose.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from flowmas.cache import BaseCache
from flowmas.errors import GraphDefinitionError
from flowmas.graph import (
    Agent,
    AgentModule,
    FlowControlConfig,
    FlowControlModule,
    FlowDecision,
    ModuleConfig,
    Node,
    NodeConfig,
    SnapshotControl,
    Task,
    read_snapshot,
)
from tests.graph.conftest import Boom, Counter, Ex, Stream, ex, node
from tests.graph.test_semantics import SpyCache, loop_agent


def task(**params: Any) -> Task:
    return Task(type="test", objective="bugs", params=params)


async def test_bug_01_no_retries_still_runs_once(mem: BaseCache) -> None:
    calls: list[str] = []
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("Once", modules=[ex("once", calls)], retry_on_failure=False),
                              node("Zero", modules=[ex("zero", calls)], max_retries=0)])
    out = await agent.run_task(task())
    assert out["status"] == "complete" and sorted(calls) == ["once", "zero"]  # fixed: Asimov ran neither


async def test_bug_02_cycles_and_unknown_dependencies_fail_fast(mem: BaseCache) -> None:
    calls: list[str] = []
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("Root", modules=[ex("root", calls)]), node("A", "B"), node("B", "A")])
    with pytest.raises(GraphDefinitionError, match="cycle"):
        await asyncio.wait_for(agent.run_task(task()), 2)  # fixed: Asimov's planner looped forever
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("Root", modules=[ex("root", calls)]), node("A", "Typo")])
    with pytest.raises(GraphDefinitionError, match="'Typo'"):
        await agent.run_task(task())
    assert calls == []  # found before anything ran (Asimov: KeyError mid-run)


async def test_bug_03_no_level_barriers(mem: BaseCache) -> None:
    done: list[str] = []
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("A", modules=[ex("A", done, delay=0.3)]), node("B", modules=[ex("B", done)]),
                              node("C", "B", modules=[ex("C", done)])])
    start = time.perf_counter()
    run = asyncio.create_task(agent.run_task(task()))
    while "C" not in done:
        await asyncio.sleep(0.005)
    assert time.perf_counter() - start < 0.25  # fixed: Asimov made C wait for A
    await run


async def test_bug_04_a_node_does_not_run_without_a_skipped_dependency(mem: BaseCache) -> None:
    jump = FlowControlModule(name="fc", flow_config=FlowControlConfig(decisions=[FlowDecision(next_node="X")]))
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([Node(name="F", modules=[jump]), node("X", "F"), node("Y", "F"), node("Z", "X", "Y"),
                              node("W", "Y"), node("Unrelated"), node("Later", "Unrelated")])
    calls_before = await agent.run_task(task())
    assert set(calls_before["result"]) == {"F", "X", "Unrelated", "Later"}  # fixed (levels mode keeps it)


async def test_bug_05_jumping_to_a_failed_node_fails_the_jump(mem: BaseCache) -> None:
    jump = FlowControlModule(name="fc", flow_config=FlowControlConfig(decisions=[FlowDecision(next_node="Bad")]))
    calls: list[str] = []
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("Bad", modules=[Boom(name="bad", calls=calls)], retry_on_failure=False),
                              node("Slow", modules=[ex("slow", delay=0.05)]),
                              Node(name="F", dependencies=["Slow"], modules=[jump])])
    out = await agent.run_task(task())
    assert calls == ["bad"]  # fixed: Asimov's guard was dead and re-ran the failed node
    assert "attempted to jump to failed node 'Bad'" in out["result"]["F"]["error"]
    assert ["F"] in out["failed_chains"]


class Spawn(AgentModule):
    async def process(self, cache: Any, semaphore: Any) -> dict[str, Any]:
        return {"status": "success", "new_nodes": [node("New")]}


@pytest.mark.parametrize("scheduling", ["ready", "levels"])
async def test_bug_06_new_nodes_beside_a_plain_sibling(mem: BaseCache, scheduling: str) -> None:
    agent = Agent(cache=mem, scheduling=scheduling)  # type: ignore[arg-type]
    agent.add_multiple_nodes([Node(name="Spawner", modules=[Spawn(name="s")]), node("Plain"),
                              node("After", "Spawner")])
    out = await agent.run_task(task())
    assert out["status"] == "complete" and {"New", "After", "Plain"} <= set(out["result"])  # fixed: KeyError


async def test_bug_07_status_counts_each_node_once_and_sets_the_task(cache: BaseCache) -> None:
    agent = Agent(cache=cache)
    agent.add_multiple_nodes([node("A"), node("B", "A", modules=[Boom(name="b", calls=[])], retry_on_failure=False),
                              node("C", "A", modules=[Boom(name="c", calls=[])], retry_on_failure=False),
                              node("D", "B", "C")])
    t = task()
    out = await agent.run_task(t)
    assert out["status"] == "partial_failure"  # fixed: Asimov summed chain lengths (4 ≥ 4 nodes ⇒ FAILED)
    assert t.status == "partial_failure" and t.result is out["result"] and t.error
    message = await cache.namespaced(t.id).get_message("agent_output", timeout=1)
    assert message["status"] == "partial_failure"  # a string, not a pickled enum


async def test_bug_08_an_agent_can_be_reused(mem: BaseCache) -> None:
    agent = Agent(cache=mem, max_total_iterations=100)
    agent.add_multiple_nodes([node(f"N{i}", *([f"N{i - 1}"] if i else [])) for i in range(40)])
    for _ in range(3):
        out = await agent.run_task(task())
        assert out["status"] == "complete"  # fixed: Asimov's third run hit the iteration limit
        assert agent.execution_state.total_iterations == 40


async def test_bug_09_semaphore_read_per_run_and_no_nested_deadlock(mem: BaseCache) -> None:
    agent = Agent(cache=mem, max_concurrent_tasks=5)
    agent.add_node(Node(name="Outer", modules=[Node(name="Inner", modules=[ex("leaf")])]))
    agent.max_concurrent_tasks = 1
    start = time.perf_counter()
    out = await agent.run_task(task())
    assert out["status"] == "complete" and time.perf_counter() - start < 0.5  # fixed: deadlock until timeout
    with pytest.raises(ValidationError):
        agent.max_concurrent_tasks = 0


async def test_bug_10_node_config_is_used_and_unknown_config_is_refused(mem: BaseCache) -> None:
    agent = Agent(cache=mem)
    agent.add_node(node("Never", condition="false"))
    out = await agent.run_task(task())
    assert out["result"]["Never"]["status"] == "skipped"  # fixed: Asimov ran it
    for bad in ({"retry_from": "X"},):
        with pytest.raises(ValidationError, match="retry_from"):
            NodeConfig(**bad)
    with pytest.raises(ValidationError, match="max_visits"):
        ModuleConfig(max_visits=2)  # type: ignore[call-arg]


async def test_bug_11_exhausted_generators_restart_and_cleanup_is_targeted(mem: BaseCache) -> None:
    events: list[str] = []
    loop = FlowControlModule(name="fc", flow_config=FlowControlConfig(
        decisions=[FlowDecision(next_node="S", condition="i < 4")], cleanup_on_default=False))
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([Node(name="S", modules=[Stream(name="s", n=1, events=events), Counter(name="c")]),
                              Node(name="F", dependencies=["S"], modules=[loop])])
    results: list[Any] = []

    async def runner(node: Node, context: Any, call: Any) -> dict[str, Any]:
        result: dict[str, Any] = await call()
        if node.name == "S":
            results.append(result["results"][0]["result"])
        return result

    await agent.run_task(task(), node_runner=runner)
    assert results == [1, "Generator Exhausted", 1, "Generator Exhausted"]  # fixed: not "Exhausted" forever


async def test_bug_12_conditions_do_not_leak_between_agents(mem: BaseCache) -> None:
    first, second = task(), task()
    await mem.namespaced(first.id).set("count", 7)

    def build() -> Agent:
        fc = FlowControlModule(name="fc", flow_config=FlowControlConfig(
            decisions=[FlowDecision(next_node="Seven", condition="count == 7")], default="Other"))
        agent = Agent(cache=mem)
        agent.add_multiple_nodes([Node(name="D", modules=[fc]), node("Seven", "D"), node("Other", "D")])
        return agent

    assert "Seven" in (await build().run_task(first))["result"]
    assert "Other" in (await build().run_task(second))["result"]  # fixed: Asimov's v_<key> globals leaked
    sandbox = Agent(cache=mem)
    sandbox.add_node(node("Os", condition="os == nil and io == nil and python == nil"))
    assert (await sandbox.run_task(task()))["result"]["Os"]["status"] == "success"


@pytest.mark.parametrize("condition", ["count>5", "(count > 5)", "d['k'] == 3", "task.objective == 'bugs'",
                                       "task.params.n >= 3"])
async def test_bug_13_conditions_bind_without_spaces(mem: BaseCache, condition: str) -> None:
    t = task(n=3)
    await mem.namespaced(t.id).set("count", 6)
    await mem.namespaced(t.id).set("d", {"k": 3})
    agent = Agent(cache=mem)
    agent.add_node(node("N", condition=condition))
    assert (await agent.run_task(t))["result"]["N"]["status"] == "success"  # fixed: textual binding


async def test_bug_14_lua_truthiness_and_no_retry_of_condition_errors(mem: BaseCache) -> None:
    t = task()
    await mem.namespaced(t.id).set("zero", 0)
    await mem.namespaced(t.id).set("empty", "")
    calls: list[str] = []
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("Zero", condition="zero"), node("Empty", condition="empty"),
                              node("Broken", condition="nothing.here", modules=[ex("b", calls)])])
    out = await agent.run_task(t)
    assert out["result"]["Zero"]["status"] == out["result"]["Empty"]["status"] == "success"  # Lua: 0, "" true
    assert "nothing.here" in out["result"]["Broken"]["error"] and calls == []


async def test_bug_15_snapshots_of_an_unprefixed_cache_hold_the_data(cache: BaseCache, _snapshots: Path) -> None:
    t = task()
    calls: list[str] = []

    def build() -> Agent:
        agent = Agent(cache=cache)  # the caller's cache has no prefix: the run's namespace is the task id
        agent.add_multiple_nodes([node("W", modules=[ex("w", calls, writes={"needed": [1, 2]})]),
                                  node("R", "W", inputs=["needed"], snapshot=SnapshotControl.ALWAYS,
                                       modules=[ex("r", calls)])])
        return agent

    await build().run_task(t)
    path = next((_snapshots / t.id).glob("*.json"))
    assert read_snapshot(path).cache["values"]["needed"] == [1, 2]
    await cache.namespaced(t.id).clear()
    calls.clear()
    out = await build().run_from_snapshot(path)
    assert out["status"] == "complete" and calls == ["r"]  # fixed: Asimov's snapshot was empty on Redis


async def test_bug_16_no_key_scan_per_decision() -> None:
    spy = SpyCache()
    for i in range(2000):
        await spy.set(f"noise{i}", i)
    agent = loop_agent(spy, 20)
    spy.ops.clear()
    out = await agent.run_task(task())
    assert out["status"] == "complete"
    assert "keys" not in spy.ops and spy.ops.count("get_many") == 20  # one batched read per decision


async def test_bug_20_snapshots_keep_counters_and_mailboxes(mem: BaseCache, _snapshots: Path,
                                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    t = task()
    agent = loop_agent(mem, 3)
    agent.nodes["Done"] = agent.nodes["Done"].model_copy(update={"snapshot": SnapshotControl.ALWAYS})
    await mem.namespaced(t.id).publish_to_mailbox("inbox", {"hello": 1})
    await agent.run_task(t)
    last = read_snapshot(sorted((_snapshots / t.id).glob("*.json"))[-1])
    assert last.node == "Done" and last.visits == {"G": 3, "F": 3}
    assert last.cache["mailboxes"]["inbox"] == [{"hello": 1}]
    monkeypatch.delenv("FLOWMAS_SNAPSHOT_DIR")
    monkeypatch.setenv("FLOWMAS_HOME", str(tmp_path / "home"))
    other = Agent(cache=mem)
    other.add_node(node("A", snapshot=SnapshotControl.ONCE))
    t2 = task()
    await other.run_task(t2)
    assert (tmp_path / "home" / "snapshots" / t2.id / "000000_A.json").exists()  # fixed: not the temp root


async def test_bug_20_failed_chains_survive_a_snapshot(mem: BaseCache, _snapshots: Path) -> None:
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("Bad", modules=[Boom(name="b", calls=[])], retry_on_failure=False),
                              node("Blocked", "Bad"),
                              node("Slow", modules=[ex("slow", delay=0.05)]),
                              node("Snap", "Slow", modules=[Ex(name="snap")], snapshot=SnapshotControl.ALWAYS)])
    t = task()
    await agent.run_task(t)
    data = read_snapshot(next((_snapshots / t.id).glob("*.json")))
    assert data.failed_chains == [["Bad", "Blocked"]] and data.failed == ["Bad"] and data.blocked == ["Blocked"]
