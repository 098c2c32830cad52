"""Hostile graphs: cycles, unknown names, huge chains, modules that misbehave, snapshot files built to harm.

Each test checks the error type and that the message names what is wrong (node, key, limit), and that nothing
ran, hung or executed that should not have.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import ValidationError

from flowmas.cache import BaseCache, EmbeddedCache
from flowmas.errors import ConditionError, GraphDefinitionError, SnapshotError
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
    engine,
    latest_snapshot,
    read_snapshot,
)


@pytest_asyncio.fixture(loop_scope="function")
async def mem() -> AsyncIterator[BaseCache]:
    made = EmbeddedCache()
    yield made
    await made.close()


@pytest.fixture(autouse=True)
def snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLOWMAS_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    return tmp_path / "snaps"


class Ok(AgentModule):
    value: Any = None

    async def process(self, cache: Any, semaphore: Any) -> Any:
        return {"status": "success", "result": self.value}


def n(name: str, *deps: str, **fields: Any) -> Node:
    return Node(name=name, dependencies=list(deps), modules=fields.pop("modules", [Ok(name="ok")]), **fields)


def task(**fields: Any) -> Task:
    return Task(type="hostile", objective="break it", **fields)


# --- graph shapes ------------------------------------------------------------------------------------------


async def test_a_long_cycle_is_named_not_hung(mem: BaseCache) -> None:
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([n(f"c{i}", f"c{(i + 1) % 1000}") for i in range(1000)])
    start = time.perf_counter()
    with pytest.raises(GraphDefinitionError) as caught:
        await agent.run_task(task())
    assert time.perf_counter() - start < 1
    message = str(caught.value)
    assert "Dependency cycle: 'c0' -> 'c1'" in message and "-> ..." in message and "1000 node(s)" in message
    assert len(message) < 1000


async def test_self_dependency_and_a_cycle_behind_a_root(mem: BaseCache) -> None:
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([n("Root"), n("Me", "Root", "Me")])
    with pytest.raises(GraphDefinitionError, match=r"'Me' -> 'Me'"):
        agent.compile_execution_plan()


async def test_many_unknown_dependencies_are_listed_briefly(mem: BaseCache) -> None:
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([n(f"x{i}", f"ghost{i}") for i in range(100)])
    with pytest.raises(GraphDefinitionError) as caught:
        agent.compile_execution_plan()
    assert "'x0' depends on unknown node(s) 'ghost0'" in str(caught.value) and "and 80 more" in str(caught.value)


@pytest.mark.parametrize("config", [FlowControlConfig(decisions=[FlowDecision(next_node="nowhere")]),
                                    FlowControlConfig(default="nowhere")])
async def test_jumps_to_nowhere(mem: BaseCache, config: FlowControlConfig) -> None:
    agent = Agent(cache=mem)
    agent.add_node(Node(name="J", modules=[Node(name="nested", modules=[FlowControlModule(name="fc",
                                                                                          flow_config=config)])]))
    with pytest.raises(GraphDefinitionError, match=r"'nowhere'") as caught:
        await agent.run_task(task())
    assert "'J/0/0'" in str(caught.value)


class Jumper(AgentModule):
    async def process(self, cache: Any, semaphore: Any) -> dict[str, Any]:
        return {"status": "success", "decision": "nowhere"}


async def test_a_dynamic_jump_to_nowhere_fails_the_node(mem: BaseCache) -> None:
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([Node(name="J", modules=[Jumper(name="j")]), n("After", "J")])
    out = await agent.run_task(task())
    assert "jumped to unknown node 'nowhere'" in out["result"]["J"]["error"]
    assert out["failed_chains"] == [["J", "After"]]


async def test_a_5000_node_chain(mem: BaseCache) -> None:
    agent = Agent(cache=mem)
    for i in range(4999, -1, -1):  # inserted dependents first: Asimov's recursive DFS overflowed here
        agent.add_node(n(f"n{i}", *([f"n{i - 1}"] if i else [])))
    start = time.perf_counter()
    plan = agent.compile_execution_plan()
    assert len(plan) == 5000 and time.perf_counter() - start < 1
    out = await agent.run_task(task())
    assert out["status"] == "complete" and len(out["result"]) == 5000


# --- misbehaving modules ----------------------------------------------------------------------------------------


async def test_a_module_returning_non_json(mem: BaseCache) -> None:
    agent = Agent(cache=mem)
    odd = {1, 2}
    agent.add_node(n("Odd", modules=[Ok(name="odd", value=object())]))
    agent.add_node(n("Set", modules=[Ok(name="set", value=odd)]))
    t = task()
    out = await agent.run_task(t)
    assert out["status"] == "complete"  # in memory, results may be any Python object
    message = await mem.namespaced(t.id).get_message("agent_output", timeout=1)
    assert "__non_json__" in json.dumps(message)  # the mailbox gets a marked repr, never a crash
    assert sorted(message["result"]["Set"]["results"][0]["result"]) == [1, 2]


class NotADict(AgentModule):
    value: Any = None

    async def process(self, cache: Any, semaphore: Any) -> Any:
        return self.value


@pytest.mark.parametrize("value", [None, [1, 2], "success", 42])
async def test_a_module_returning_a_non_dict(mem: BaseCache, value: Any) -> None:
    agent = Agent(cache=mem)
    agent.add_node(n("Bad", modules=[NotADict(name="nd", value=value)]))
    out = await agent.run_task(task())
    assert out["status"] == "failed"
    assert f"Module 'nd' of node 'Bad' returned a {type(value).__name__}" in out["result"]["Bad"]["error"]


class Forever(AgentModule):
    events: Any = None
    stubborn: bool = False

    async def process(self, cache: Any, semaphore: Any) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        try:
            while True:
                yield {"status": "success", "result": "tick"}
        finally:
            self.events.append("closing")
            if self.stubborn:
                await asyncio.sleep(60)  # a cleanup that never ends
            self.events.append("closed")


async def test_a_generator_that_never_ends_is_closed(mem: BaseCache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "GENERATOR_CLOSE_TIMEOUT", 0.1)
    events: list[str] = []
    stubborn: list[str] = []
    loop = FlowControlModule(name="fc", flow_config=FlowControlConfig(
        decisions=[FlowDecision(next_node="G", condition="i < 3", cleanup_on_jump=True)]))

    class Bump(AgentModule):
        async def process(self, cache: Any, semaphore: Any) -> dict[str, Any]:
            await cache.set("i", await cache.get("i", 0) + 1)
            return {"status": "success"}

    agent = Agent(cache=mem)
    agent.add_multiple_nodes([Node(name="G", modules=[Forever(name="f", events=events), Bump(name="b")]),
                              Node(name="F", dependencies=["G"], modules=[loop]),
                              Node(name="S", modules=[Forever(name="s", events=stubborn, stubborn=True)])])
    start = time.perf_counter()
    out = await agent.run_task(task())
    assert out["status"] == "complete" and time.perf_counter() - start < 2
    assert events == ["closing", "closed"] * 3
    assert stubborn == ["closing"]  # its cleanup was given up on after the timeout, not awaited forever


async def test_a_lua_condition_cannot_reach_the_system(mem: BaseCache, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    agent = Agent(cache=mem)
    agent.add_node(n("N", node_config=NodeConfig(condition=f"os.execute('touch {marker}') == 0")))
    out = await agent.run_task(task())
    assert "os" in out["result"]["N"]["error"] and not marker.exists()
    with pytest.raises(ConditionError):
        bad = Agent(cache=mem)
        bad.add_node(n("N", node_config=NodeConfig(condition="x = 1")))  # a statement, not an expression
        await bad.run_task(task())


# --- snapshot files built to harm -------------------------------------------------------------------------------


async def _one_snapshot(mem: BaseCache, snapshots: Path) -> Path:
    agent = Agent(cache=mem)
    agent.add_node(n("A", snapshot=SnapshotControl.ALWAYS))
    t = task()
    await agent.run_task(t)
    path = latest_snapshot(t.id)
    assert path is not None
    return path


def _agent(mem: BaseCache) -> Agent:
    agent = Agent(cache=mem)
    agent.add_node(n("A"))
    return agent


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage", b"[1, 2, 3]", b'{"format": "something else"}',
                                     b'{"format": "flowmas.graph.snapshot", "version": 99}', b"{" * 100_000])
async def test_garbage_snapshot_files(mem: BaseCache, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(SnapshotError, match="snapshot"):
        await _agent(mem).run_from_snapshot(path)


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.target,))


async def test_a_pickle_payload_never_runs(mem: BaseCache, tmp_path: Path) -> None:
    marker = tmp_path / "pickled-code-ran"
    path = tmp_path / "000000_A.json"
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(SnapshotError, match="not JSON"):
        await _agent(mem).run_from_snapshot(path)
    assert not marker.exists()


async def test_tampered_fields_are_refused(mem: BaseCache, snapshots: Path) -> None:
    path = await _one_snapshot(mem, snapshots)
    good = json.loads(path.read_text())
    tampered = [
        {**good, "task": {**good["task"], "id": "../../etc"}},  # the task id becomes a directory name
        {**good, "visits": {"A": "many"}},
        {**good, "seq": -1},
        {**good, "cache": {**good["cache"], "mailboxes": {"box": "not a list"}}},
        {**good, "cache": {**good["cache"], "raw": {"k": "!!not base64!!"}}},
        {**good, "extra_field": {"py/object": "os.system"}},
    ]
    for i, content in enumerate(tampered):
        bad = path.with_name(f"00010{i}_A.json")
        bad.write_text(json.dumps(content))
        with pytest.raises(SnapshotError):
            await _agent(mem).run_from_snapshot(bad)


async def test_task_ids_cannot_traverse_paths(mem: BaseCache, snapshots: Path) -> None:
    for bad in ("../escape", "a/b", "..", ".hidden", "", "x" * 300, "nul\x00byte"):
        with pytest.raises(ValidationError, match="task id"):
            task(id=bad)
        with pytest.raises(SnapshotError):
            latest_snapshot(bad)
    with pytest.raises(ValueError, match="task id"):
        await _agent(mem).run_task(task(), namespace="../other-run")
    assert not (snapshots.parent / "escape").exists()


async def test_node_names_cannot_escape_the_snapshot_directory(mem: BaseCache, snapshots: Path) -> None:
    agent = Agent(cache=mem)
    agent.add_node(n("../../evil/name", snapshot=SnapshotControl.ALWAYS))
    t = task()
    await agent.run_task(t)
    files = list(snapshots.rglob("*.json"))
    assert len(files) == 1 and files[0].parent == snapshots / t.id
    assert read_snapshot(files[0]).node == "../../evil/name"


async def test_an_unwritable_snapshot_directory_is_a_clear_error(mem: BaseCache, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FLOWMAS_SNAPSHOT_DIR", str(blocker))
    agent = Agent(cache=mem)
    agent.add_node(n("A", snapshot=SnapshotControl.ALWAYS))
    with pytest.raises(SnapshotError, match="FLOWMAS_SNAPSHOT_DIR"):
        await agent.run_task(task())


# --- absurd limits ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "word"), [({"max_visits": -1}, "None for no limit"),
                                              ({"max_visits": 0}, "None for no limit"),
                                              ({"max_retries": -1}, "max_retries"),
                                              ({"max_retries": 10**9}, "max_retries"),
                                              ({"retry_delay": -1}, "retry_delay"),
                                              ({"retry_delay": float("inf")}, "retry_delay"),
                                              ({"paralel": True}, "paralel")])
def test_absurd_node_config(fields: dict[str, Any], word: str) -> None:
    with pytest.raises(ValidationError, match=word):
        NodeConfig(**fields)


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
def test_absurd_module_timeout(timeout: float) -> None:
    with pytest.raises(ValidationError, match="timeout"):
        ModuleConfig(timeout=timeout)


@pytest.mark.parametrize("fields", [{"max_concurrent_tasks": 0}, {"max_concurrent_tasks": -5},
                                    {"max_total_iterations": 0}, {"scheduling": "random"}])
def test_absurd_agent_limits(mem: BaseCache, fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(fields))):
        Agent(cache=mem, **fields)


def test_add_node_refuses_what_is_not_a_node(mem: BaseCache) -> None:
    with pytest.raises(GraphDefinitionError, match="takes a Node"):
        Agent(cache=mem).add_node(Ok(name="module"))  # type: ignore[arg-type]
