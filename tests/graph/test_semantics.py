"""One test (or a few) per rule of ``flowmas.graph.engine``'s module docstring, numbered as there."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from flowmas.cache import BaseCache, EmbeddedCache
from flowmas.errors import ConditionError, GraphDefinitionError
from flowmas.graph import (
    Agent,
    AgentModule,
    FlowControlConfig,
    FlowControlModule,
    FlowDecision,
    ModuleConfig,
    Node,
    NodeConfig,
    NonRetryableError,
    RunContext,
    Task,
)
from tests.graph.conftest import Boom, Counter, Ex, Stream, Tag, ex, node


def task(**params: Any) -> Task:
    return Task(type="test", objective="rules", params=params)


def loop_agent(cache: BaseCache, turns: int, **config: Any) -> Agent:
    """G bumps ``i``; F jumps back to G while ``i < turns``; Done follows F."""
    agent = Agent(cache=cache, **config.pop("agent", {}))
    again = FlowControlModule(name="again", flow_config=FlowControlConfig(
        decisions=[FlowDecision(next_node="G", condition=f"i < {turns}")]))
    agent.add_multiple_nodes([
        Node(name="G", modules=[Counter(name="bump")], node_config=NodeConfig(**config)),
        Node(name="F", dependencies=["G"], modules=[again], node_config=NodeConfig(**config)),
        node("Done", "F"),
    ])
    return agent


class SpyCache(EmbeddedCache):
    """Counts round trips; ``namespaced`` views share the counters (copy.copy keeps the same list)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    async def get_many(self, keys: Any) -> dict[str, Any]:
        self.ops.append("get_many")
        return await super().get_many(keys)

    async def keys(self) -> set[str]:
        self.ops.append("keys")
        return await super().keys()

    async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        self.ops.append("get")
        return await super().get(key, *args, **kwargs)


# --- runs (1-3) -------------------------------------------------------------------------------------------


async def test_1_two_concurrent_runs_of_one_agent_share_nothing(cache: BaseCache) -> None:
    agent = loop_agent(cache, 5)
    first, second = task(), task()
    out1, out2 = await asyncio.gather(agent.run_task(first), agent.run_task(second))
    assert out1["status"] == out2["status"] == "complete"
    assert out1["result"]["G"]["results"][0]["result"] == 5 == out2["result"]["G"]["results"][0]["result"]
    assert await cache.namespaced(first.id).get("i") == 5 and await cache.namespaced(second.id).get("i") == 5
    assert first.result is not second.result


async def test_1_agent_reports_the_latest_run(mem: BaseCache) -> None:
    agent = Agent(cache=mem)
    agent.add_node(node("A"))
    await agent.run_task(task())
    assert set(agent.node_results) == {"A"}
    assert agent.execution_state.total_iterations == 1
    assert agent.execution_state.current_plan == [["A"]]


async def test_2_output_shape_task_fields_and_mailboxes(cache: BaseCache) -> None:
    agent = Agent(cache=cache)
    agent.add_multiple_nodes([node("A"), node("B", modules=[Boom(name="b", calls=[])], retry_on_failure=False)])
    t = task()
    out = await agent.run_task(t)
    assert set(out) == {"status", "result", "failed_chains"}
    assert out["status"] == "partial_failure" and isinstance(out["status"], str)
    assert t.status == "partial_failure" and t.result == out["result"]
    assert t.error is not None and "'B'" in t.error and "attempt 1" in t.error
    view = cache.namespaced(t.id)
    assert await view.get_message("agent_output", timeout=1) == {**out, "failed_chains": [["B"]]}
    assert (await view.get_message("agent_error", timeout=1))["node"] == "B"
    assert (await view.get("task"))["status"] == "partial_failure"


async def test_3_failed_when_every_node_failed_or_was_blocked(mem: BaseCache) -> None:
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("A", modules=[Boom(name="a", calls=[])], retry_on_failure=False),
                              node("B", "A"), node("C", "A", "B")])
    out = await agent.run_task(task())
    assert out["status"] == "failed"
    assert out["failed_chains"] == [["A", "B", "C"]]


# --- validation (4) ---------------------------------------------------------------------------------------


async def test_4_validation_errors_name_the_nodes(mem: BaseCache) -> None:
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("A", "Ghost"), node("B", "A")])
    with pytest.raises(GraphDefinitionError, match=r"'A' depends on unknown node\(s\) 'Ghost'"):
        await agent.run_task(task())
    cyclic = Agent(cache=mem)
    cyclic.add_multiple_nodes([node("A", "C"), node("B", "A"), node("C", "B"), node("Free")])
    with pytest.raises(GraphDefinitionError, match=r"cycle: '\w' -> '\w' -> '\w' -> '\w'"):
        await cyclic.run_task(task())
    jumper = Agent(cache=mem)
    jumper.add_node(Node(name="J", modules=[FlowControlModule(name="fc", flow_config=FlowControlConfig(
        decisions=[FlowDecision(next_node="Nowhere")]))]))
    with pytest.raises(GraphDefinitionError, match=r"decision 0, jumps to unknown node 'Nowhere'"):
        await jumper.run_task(task())
    with pytest.raises(GraphDefinitionError, match="Node with name 'J' already exists"):
        jumper.add_node(node("J"))
    with pytest.raises(ValueError):  # Asimov callers catch ValueError
        jumper.add_node(node("J"))


async def test_4_lua_syntax_errors_are_found_before_running(mem: BaseCache) -> None:
    calls: list[str] = []
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("A", modules=[ex("a", calls)]),
                              node("B", "A", condition="x >")])
    with pytest.raises(ConditionError, match=r"node 'B'.*'condition'"):
        await agent.run_task(task())
    assert calls == []


# --- scheduling (5-8) -------------------------------------------------------------------------------------


def barrier_agent(cache: BaseCache, finished: dict[str, float], scheduling: str) -> Agent:
    class Stamp(Ex):
        async def process(self, cache: Any, semaphore: Any) -> dict[str, Any]:
            result = await super().process(cache, semaphore)
            finished[self.name] = time.perf_counter()
            return result

    agent = Agent(cache=cache, scheduling=scheduling)  # type: ignore[arg-type]
    agent.add_multiple_nodes([node("A", modules=[Stamp(name="A", delay=0.4)]), node("B", modules=[Stamp(name="B")]),
                              node("C", "B", modules=[Stamp(name="C")])])
    return agent


async def test_5_no_level_barrier_and_levels_mode_keeps_it(mem: BaseCache) -> None:
    finished: dict[str, float] = {}
    await barrier_agent(mem, finished, "ready").run_task(task())
    assert finished["C"] < finished["A"]  # C depends only on B: it does not wait for slow A
    finished.clear()
    await barrier_agent(mem, finished, "levels").run_task(task())
    assert finished["C"] > finished["A"]  # Asimov's level barrier, on request


async def test_6_nested_subgraphs_cannot_deadlock_on_the_semaphore(mem: BaseCache) -> None:
    inner = Node(name="inner", modules=[ex("x"), Node(name="deeper", modules=[ex("y"), ex("z")],
                                                      node_config=NodeConfig(parallel=True))],
                 node_config=NodeConfig(parallel=True))
    agent = Agent(cache=mem, max_concurrent_tasks=1)
    agent.add_node(Node(name="Outer", modules=[inner, ex("w")], node_config=NodeConfig(parallel=True)))
    start = time.perf_counter()
    out = await asyncio.wait_for(agent.run_task(task()), 5)
    assert time.perf_counter() - start < 1
    assert out["status"] == "complete"
    inner_results = out["result"]["Outer"]["results"][0]["results"]
    assert [r["result"] for r in inner_results[1]["results"]] == ["y", "z"]


async def test_7_condition_false_skips_the_node_and_its_dependents(cache: BaseCache) -> None:
    t = task(go=False)
    await cache.namespaced(t.id).set("enabled", 0)
    agent = Agent(cache=cache)
    agent.add_multiple_nodes([
        node("Lua", condition="task.params.go"), node("AfterLua", "Lua"), node("AfterAfter", "AfterLua"),
        node("Zero", condition="enabled"),  # Lua truthiness: 0 is true
        node("Callable", condition=lambda task, variables: task["params"]["go"] is False),
    ])
    out = await agent.run_task(t)
    assert out["status"] == "complete"
    assert out["result"]["Lua"]["status"] == "skipped"
    assert "AfterLua" not in out["result"] and "AfterAfter" not in out["result"]
    assert out["result"]["Zero"]["status"] == "success" and out["result"]["Callable"]["status"] == "success"


async def test_8_a_failure_blocks_its_dependents_only(mem: BaseCache) -> None:
    calls: list[str] = []
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("A", modules=[ex("a", calls)]),
                              node("Bad", "A", modules=[Boom(name="bad", calls=calls)], retry_on_failure=False),
                              node("X", "Bad", modules=[ex("x", calls)]), node("Y", "A", modules=[ex("y", calls)])])
    out = await agent.run_task(task())
    assert out["failed_chains"] == [["Bad", "X"]]
    assert sorted(calls) == ["a", "bad", "y"]


# --- running a node (9-15) ---------------------------------------------------------------------------------


async def test_9_max_visits_default_is_100_and_ends_the_run_loudly(mem: BaseCache) -> None:
    out = await loop_agent(mem, 150).run_task(task())
    assert out["status"] == "failed"
    error = out["result"]["G"]["error"]
    assert "'G'" in error and "maximum visits (100)" in error and "max_visits" in error
    assert out["failed_chains"] == [["G", "F", "Done"]]


async def test_9_max_visits_none_is_unlimited(mem: BaseCache) -> None:
    out = await loop_agent(mem, 150, max_visits=None).run_task(task())
    assert out["status"] == "complete" and out["result"]["G"]["results"][0]["result"] == 150


async def test_9_max_total_iterations_counts_node_executions(mem: BaseCache) -> None:
    agent = loop_agent(mem, 50, agent={"max_total_iterations": 11})
    t = task()
    out = await agent.run_task(t)
    assert out["status"] == "failed"
    assert agent.execution_state.total_iterations == 11
    assert t.error is not None and "maximum total iterations (11)" in t.error and "node 'F' was next" in t.error
    assert await mem.namespaced(t.id).get("i") == 6


async def test_10_inputs_and_outputs_are_checked_against_the_cache(cache: BaseCache) -> None:
    t = task()
    await cache.namespaced(t.id).set("have", 1)
    agent = Agent(cache=cache)
    agent.add_multiple_nodes([
        node("NeedsMissing", inputs=["have", "missing"]),
        node("NeedsHave", inputs=["have"], outputs=["made"], modules=[ex("w", writes={"made": 2})]),
        node("Forgets", outputs=["never_written"]),
    ])
    out = await agent.run_task(t)
    assert "'missing'" in out["result"]["NeedsMissing"]["error"]
    assert out["result"]["NeedsHave"]["status"] == "success"
    assert "'never_written'" in out["result"]["Forgets"]["error"]


async def test_10_condition_and_inputs_are_one_round_trip() -> None:
    spy = SpyCache()
    agent = Agent(cache=spy)
    agent.add_node(node("A", condition="a == nil and b == nil", inputs=[]))
    await agent.run_task(task())
    assert spy.ops.count("get_many") == 1 and "keys" not in spy.ops and "get" not in spy.ops


async def test_11_sequential_parallel_and_stop_on_success(mem: BaseCache) -> None:
    calls: list[str] = []
    soft = Boom(name="soft", calls=calls, soft=True)
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([
        node("Seq", modules=[ex("s1", calls), soft, ex("s3", calls)], retry_on_failure=False),
        node("Par", modules=[ex("p1", calls), Boom(name="psoft", calls=calls, soft=True)], parallel=True,
             retry_on_failure=False),
        node("Stop", modules=[ex("first", calls, config=ModuleConfig(stop_on_success=True)), ex("second", calls)]),
    ])
    out = await agent.run_task(task())
    assert out["result"]["Seq"] == {"status": "error", "error": "soft soft failure 1"}
    assert "s3" not in calls and "second" not in calls
    assert len(out["result"]["Par"]["all_results"]) == 2
    assert out["result"]["Stop"]["results"] == [{"status": "success", "result": "first"}]


@pytest.mark.parametrize(("config", "attempts"), [({}, 3), ({"max_retries": 0}, 1), ({"max_retries": 4}, 5),
                                                  ({"retry_on_failure": False, "max_retries": 5}, 1)])
async def test_12_max_retries_counts_retries(mem: BaseCache, config: dict[str, Any], attempts: int) -> None:
    calls: list[str] = []
    agent = Agent(cache=mem)
    agent.add_node(node("N", modules=[Boom(name="b", calls=calls)], **config))
    out = await agent.run_task(task())
    assert len(calls) == attempts and out["status"] == "failed"


async def test_12_non_retryable_error_and_soft_failures_and_delay(mem: BaseCache) -> None:
    calls: list[str] = []
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("Final", modules=[Boom(name="final", calls=calls, final=True)]),
                              node("Soft", modules=[Boom(name="soft", calls=calls, soft=True, fail_times=1)],
                                   retry_delay=0.1)])
    start = time.perf_counter()
    out = await agent.run_task(task())
    assert calls.count("final") == 1 and "cannot be retried" in out["result"]["Final"]["error"]
    assert calls.count("soft") == 2 and out["result"]["Soft"]["results"][0]["result"] == "attempt 2"
    assert time.perf_counter() - start >= 0.1


async def test_13_timeout_cancels_the_module(mem: BaseCache) -> None:
    cancelled: list[bool] = []

    class Sleeper(AgentModule):
        async def process(self, cache: Any, semaphore: Any) -> dict[str, Any]:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            return {"status": "success"}

    agent = Agent(cache=mem)
    agent.add_node(node("N", modules=[Sleeper(name="sleepy", config=ModuleConfig(timeout=0.05))], max_retries=1))
    out = await agent.run_task(task())
    assert out["result"]["N"]["error"] == "Module 'sleepy' execution timed out after 0.05 seconds"
    assert cancelled == [True, True]


async def test_13_timeouts_of_mixed_lengths_fire_each_on_time_and_spare_the_rest(mem: BaseCache) -> None:
    class Sleeper(AgentModule):
        seconds: float

        async def process(self, cache: Any, semaphore: Any) -> dict[str, Any]:
            await asyncio.sleep(self.seconds)
            return {"status": "success", "result": self.seconds}

    def sleeper(name: str, seconds: float, limit: float) -> Node:
        return node(name, modules=[Sleeper(name=name.lower(), seconds=seconds, config=ModuleConfig(timeout=limit))],
                    retry_on_failure=False)

    agent = Agent(cache=mem, max_concurrent_tasks=10)
    agent.add_multiple_nodes([sleeper("Long", 5, 0.3), sleeper("Short", 5, 0.05), sleeper("Quick", 0.01, 0.05),
                              sleeper("Patient", 0.15, 10)])
    start = time.perf_counter()
    out = await agent.run_task(task())
    elapsed = time.perf_counter() - start

    results = out["result"]
    assert results["Short"]["error"] == "Module 'short' execution timed out after 0.05 seconds"
    assert results["Long"]["error"] == "Module 'long' execution timed out after 0.3 seconds"
    assert results["Quick"]["status"] == "success" and results["Patient"]["status"] == "success"
    assert 0.3 <= elapsed < 2


async def test_13_a_run_cancelled_from_outside_is_cancelled_not_timed_out(mem: BaseCache) -> None:
    started = asyncio.Event()

    class Sleeper(AgentModule):
        async def process(self, cache: Any, semaphore: Any) -> dict[str, Any]:
            started.set()
            await asyncio.sleep(10)
            return {"status": "success"}

    agent = Agent(cache=mem)
    agent.add_node(node("N", modules=[Sleeper(name="s", config=ModuleConfig(timeout=5))]))
    cancelled = task()
    run = asyncio.create_task(agent.run_task(cancelled))
    await started.wait()
    run.cancel()

    with pytest.raises(asyncio.CancelledError):
        await run
    assert cancelled.status == "failed" and "timed out" not in str(cancelled.error)


async def test_14_middlewares_generators_and_exhaustion(cache: BaseCache) -> None:
    events: list[str] = []
    stream = Stream(name="stream", n=2, events=events, config=ModuleConfig(middlewares=[Tag("m1"), Tag("m2")]))
    again = FlowControlModule(name="again", flow_config=FlowControlConfig(
        decisions=[FlowDecision(next_node="S", condition="i < 5")], cleanup_on_default=False))
    agent = Agent(cache=cache)
    agent.add_multiple_nodes([Node(name="S", modules=[stream, Counter(name="c")]), Node(name="F", dependencies=["S"],
                                                                                        modules=[again])])
    seen: list[Any] = []

    async def runner(node: Node, context: RunContext, call: Any) -> dict[str, Any]:
        result: dict[str, Any] = await call()
        if node.name == "S":
            seen.append((result["results"][0].get("result"), result["results"][0]["tags"]))
        return result

    out = await agent.run_task(task(), node_runner=runner)
    assert out["status"] == "complete"
    # one item per visit; exhausted reported once, then the generator starts afresh
    assert [s[0] for s in seen] == [1, 2, "Generator Exhausted", 1, 2]
    assert all(s[1] == ["m1", "m2"] for s in seen)
    assert events == ["start", "close", "start", "close"]  # the second one closed when the run ended


async def test_15_node_runner_wraps_every_visit(mem: BaseCache) -> None:
    contexts: list[tuple[str, int, str]] = []

    async def runner(node: Node, context: RunContext, call: Any) -> dict[str, Any]:
        contexts.append((context.node, context.visit, context.task.id))
        assert context.cache is not None and context.agent is agent
        result: dict[str, Any] = await call()
        return result

    agent = loop_agent(mem, 2)
    t = task()
    await agent.run_task(t, node_runner=runner)
    assert [(n, v) for n, v, _ in contexts] == [("G", 1), ("F", 1), ("G", 2), ("F", 2), ("Done", 1)]
    assert {i for _, _, i in contexts} == {t.id}


# --- flow control (16-18) ------------------------------------------------------------------------------------


async def test_16_decisions_in_order_then_default_and_flags_are_consumed() -> None:
    spy = SpyCache()
    t = task()
    view = spy.namespaced(t.id)
    await view.set("a", 1)
    await view.set("flag", True)
    fc = FlowControlModule(name="fc", flow_config=FlowControlConfig(decisions=[
        FlowDecision(next_node="X", condition="a > 5"),
        FlowDecision(next_node="Y", condition="flag", condition_variables=["flag"]),
        FlowDecision(next_node="X"),
    ], default="X"))
    agent = Agent(cache=spy)
    agent.add_multiple_nodes([Node(name="D", modules=[fc]), node("X", "D"), node("Y", "D")])
    spy.ops.clear()
    out = await agent.run_task(t)
    assert "Y" in out["result"] and "X" not in out["result"]
    assert await view.get("flag", None) is None and await view.get("a") == 1
    assert spy.ops.count("get_many") == 1 and "keys" not in spy.ops  # never a key scan


async def test_16_default_and_no_decision(mem: BaseCache) -> None:
    default = FlowControlModule(name="fc", flow_config=FlowControlConfig(
        decisions=[FlowDecision(next_node="X", condition="false")], default="Y"))
    nothing = FlowControlModule(name="fc2", flow_config=FlowControlConfig(
        decisions=[FlowDecision(next_node="P", condition="nil")]))
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([Node(name="D", modules=[default]), node("X", "D"), node("Y", "D"),
                              Node(name="E", modules=[nothing]), node("P", "E"), node("Q", "E")])
    out = await agent.run_task(task())
    assert "Y" in out["result"] and "X" not in out["result"]
    assert "P" in out["result"] and "Q" in out["result"]  # no match, no default: no jump


async def test_16_condition_errors_name_node_decision_and_source(mem: BaseCache) -> None:
    fc = FlowControlModule(name="fc", flow_config=FlowControlConfig(decisions=[
        FlowDecision(next_node="X", condition="missing.field > 1")]))
    calls: list[str] = []
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([Node(name="D", modules=[ex("d", calls), fc]), node("X", "D")])
    out = await agent.run_task(task())
    error = out["result"]["D"]["error"]
    assert "'D'" in error and "decision 0" in error and "missing.field > 1" in error
    assert calls == ["d"]  # a ConditionError is not retried


async def test_17_jump_replans_incrementally(mem: BaseCache) -> None:
    calls: list[str] = []
    agent = Agent(cache=mem)
    back = FlowControlModule(name="fc", flow_config=FlowControlConfig(
        decisions=[FlowDecision(next_node="G", condition="i < 3")], default="Out"))
    agent.add_multiple_nodes([
        node("Setup", modules=[ex("setup", calls)]),
        node("Side", modules=[ex("side", calls)]),
        Node(name="G", dependencies=["Setup"], modules=[Counter(name="c"), ex("g", calls)]),
        Node(name="F", dependencies=["G"], modules=[back]),
        node("Out", "F", modules=[ex("out", calls)]),
        node("NotTaken", "F", modules=[ex("nottaken", calls)]),
        node("AfterNotTaken", "NotTaken", modules=[ex("afternottaken", calls)]),
    ])
    out = await agent.run_task(task())
    assert calls.count("setup") == 1 and calls.count("side") == 1  # not re-run by the jumps
    assert calls.count("g") == 3 and calls.count("out") == 1
    assert "nottaken" not in calls and "afternottaken" not in calls
    assert out["status"] == "complete"
    assert agent.execution_state.execution_history[1] == [["G"], ["F"], ["Out", "NotTaken"], ["AfterNotTaken"]]


async def test_17_cleanup_closes_only_the_replanned_generators(mem: BaseCache) -> None:
    looped: list[str] = []
    kept: list[str] = []
    agent = Agent(cache=mem)
    back = FlowControlModule(name="fc", flow_config=FlowControlConfig(
        decisions=[FlowDecision(next_node="G", condition="i < 3", cleanup_on_jump=True)]))
    agent.add_multiple_nodes([
        Node(name="Keep", modules=[Stream(name="keep", n=None, events=kept)]),
        Node(name="G", modules=[Stream(name="loop", n=None, events=looped), Counter(name="c")]),
        Node(name="F", dependencies=["G"], modules=[back]),
    ])
    await agent.run_task(task())
    assert looped == ["start", "close"] * 3  # closed before every re-run
    assert kept == ["start", "close"]  # untouched by the jumps, closed at the end of the run


async def test_18_levels_mode_reproduces_asimovs_jump(mem: BaseCache) -> None:
    """Jump to X with sibling Y; Z depends on X and Y; W on Y: Asimov runs X and Z (Z without Y)."""

    def build(scheduling: str) -> Agent:
        jump = FlowControlModule(name="fc", flow_config=FlowControlConfig(decisions=[FlowDecision(next_node="X")]))
        agent = Agent(cache=mem, scheduling=scheduling)  # type: ignore[arg-type]
        agent.add_multiple_nodes([Node(name="F", modules=[jump]), node("X", "F"), node("Y", "F"),
                                  node("Z", "X", "Y"), node("W", "Y")])
        return agent

    levels_out = await build("levels").run_task(task())
    assert set(levels_out["result"]) == {"F", "X", "Z"}
    ready_out = await build("ready").run_task(task())
    assert set(ready_out["result"]) == {"F", "X"}  # ready mode: Z needs Y, which was skipped (bug #4 fixed)


# --- dynamic nodes (19) -----------------------------------------------------------------------------------


class Spawner(AgentModule):
    calls: Any = None

    async def process(self, cache: Any, semaphore: Any) -> dict[str, Any]:
        return {"status": "success", "new_nodes": [node("N1", modules=[Ex(name="n1", calls=self.calls)]),
                                                   node("N2", modules=[Ex(name="n2", calls=self.calls, delay=0.05)])]}


async def test_19_new_nodes_are_spliced_after_their_parent(cache: BaseCache) -> None:
    calls: list[str] = []
    agent = Agent(cache=cache)
    agent.add_multiple_nodes([Node(name="P", modules=[Spawner(name="spawn", calls=calls)]),
                              node("After", "P", modules=[ex("after", calls)])])
    out = await agent.run_task(task())
    assert out["status"] == "complete"
    assert sorted(calls[:2]) == ["n1", "n2"] and calls[2] == "after" and len(calls) == 3
    assert set(agent.nodes) == {"P", "After"}


async def test_19_a_name_clash_fails_the_parent(mem: BaseCache) -> None:
    class Clash(AgentModule):
        async def process(self, cache: Any, semaphore: Any) -> dict[str, Any]:
            return {"status": "success", "new_nodes": [node("Other")]}

    agent = Agent(cache=mem)
    agent.add_multiple_nodes([Node(name="P", modules=[Clash(name="c")]), node("Other")])
    out = await agent.run_task(task())
    assert "already has a node of that name" in out["result"]["P"]["error"]


# --- tracing (21) -----------------------------------------------------------------------------------------


async def test_21_trace_opens_spans_without_an_sdk(mem: BaseCache) -> None:
    from flowmas.graph import engine

    agent = Agent(cache=mem, trace=True)
    agent.add_node(Node(name="A", modules=[ex("a", trace=True)], trace=True))
    out = await agent.run_task(task())
    assert out["status"] == "complete"
    assert engine._tracer is not None  # opentelemetry-api is installed here: a (no-op) tracer


async def test_nonretryable_alias() -> None:
    from flowmas.graph import NonRetryableException

    assert NonRetryableException is NonRetryableError


async def test_2_module_and_node_output_mailboxes(cache: BaseCache) -> None:
    agent = Agent(cache=cache)
    agent.add_node(Node(name="N", output_mailbox="node_box", modules=[ex("m", output_mailbox="module_box")]))
    t = task()
    await agent.run_task(t)
    view = cache.namespaced(t.id)
    assert await view.get_message("module_box", timeout=1) == {"status": "success", "result": "m"}
    assert await view.get_message("node_box", timeout=1) == {"status": "success",
                                                             "results": [{"status": "success", "result": "m"}]}


async def test_16_a_python_callable_decides_too(mem: BaseCache) -> None:
    t = task(route="b")
    await mem.namespaced(t.id).set("hint", "ignored")
    seen: list[dict[str, Any]] = []

    async def route(task: Any, variables: Any) -> bool:
        seen.append(dict(variables))
        return bool(task["params"]["route"] == "b")

    fc = FlowControlModule(name="fc", flow_config=FlowControlConfig(decisions=[
        FlowDecision(next_node="B", condition=route, condition_variables=["hint"])], default="A"))
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([Node(name="D", modules=[fc]), node("A", "D"), node("B", "D")])
    out = await agent.run_task(t)
    assert "B" in out["result"] and "A" not in out["result"]
    assert seen == [{"hint": "ignored"}] and await mem.namespaced(t.id).get("hint", None) is None


async def test_21_without_opentelemetry_tracing_is_off_and_says_so_once(
        mem: BaseCache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import sys

    from flowmas.graph import engine

    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails as if not installed
    monkeypatch.setattr(engine, "_tracer", None)
    monkeypatch.setattr(engine, "_tracer_checked", False)
    agent = Agent(cache=mem, trace=True)
    agent.add_multiple_nodes([Node(name="A", modules=[ex("a", trace=True)], trace=True),
                              Node(name="B", modules=[ex("b", trace=True)], trace=True)])
    with caplog.at_level("DEBUG", logger="flowmas.graph.engine"):
        out = await agent.run_task(task())
    assert out["status"] == "complete"
    said = "opentelemetry-api is not installed: trace=True opens no spans."
    assert [r.message for r in caplog.records].count(said) == 1
