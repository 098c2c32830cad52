"""Snapshots: JSON round trips, resume with counters, and snapshot → SIGKILL → resume in a new process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from flowmas.cache import BaseCache
from flowmas.errors import SnapshotError
from flowmas.graph import Agent, Node, SnapshotControl, Task, latest_snapshot, read_snapshot
from tests.graph.conftest import Boom, Counter, ex, node
from tests.graph.test_semantics import loop_agent


def task() -> Task:
    return Task(type="test", objective="snapshots")


async def test_auto_snapshot_after_each_node_round_trips_as_json(cache: BaseCache, _snapshots: Path) -> None:
    agent = Agent(cache=cache, auto_snapshot=True)
    agent.add_multiple_nodes([node("A", modules=[ex("a", writes={"k": {"nested": [1, None]}})]), node("B", "A")])
    t = task()
    await cache.namespaced(t.id).publish_to_mailbox("box", "message")
    await agent.run_task(t)
    files = sorted((_snapshots / t.id).glob("*.json"))
    assert [f.name for f in files] == ["000000_A.json", "000001_B.json"]
    first = json.loads(files[0].read_text())  # plain JSON, nothing else
    assert first["format"] == "flowmas.graph.snapshot" and first["when"] == "after"
    data = read_snapshot(files[0])
    assert data.done == ["A"] and data.ready == ["B"] and data.visits == {"A": 1}
    assert data.state.total_iterations == 1 and data.task.id == t.id
    assert data.cache["values"]["k"] == {"nested": [1, None]} and data.cache["mailboxes"]["box"] == ["message"]
    assert data.node_results["A"]["results"][0]["result"] == "a"
    assert latest_snapshot(t.id) == files[1]


async def test_resume_continues_with_the_counters(mem: BaseCache, _snapshots: Path) -> None:
    t = task()
    agent = loop_agent(mem, 4)
    agent.nodes["G"] = agent.nodes["G"].model_copy(update={"snapshot": SnapshotControl.ALWAYS})
    await agent.run_task(t)
    snaps = sorted((_snapshots / t.id).glob("*.json"))
    assert len(snaps) == 4
    third = read_snapshot(snaps[2])  # before G's third visit: i == 2
    assert third.visits == {"G": 2, "F": 2} and third.cache["values"]["i"] == 2
    await mem.namespaced(t.id).clear()
    resumed = loop_agent(mem, 4)
    out = await resumed.run_from_snapshot(snaps[2])
    assert out["status"] == "complete" and out["result"]["G"]["results"][0]["result"] == 4
    assert resumed.execution_state.total_iterations == 4 + 4 + 1  # G×4, F×4, Done: counted across the resume
    assert len(resumed.execution_state.execution_history) > len(third.state.execution_history)


async def test_resume_keeps_visit_limits(mem: BaseCache, _snapshots: Path) -> None:
    t = task()
    agent = loop_agent(mem, 10, max_visits=3)
    agent.nodes["G"] = agent.nodes["G"].model_copy(update={"snapshot": SnapshotControl.ALWAYS,
                                                            "node_config": agent.nodes["G"].node_config})
    out = await agent.run_task(t)
    assert "maximum visits (3)" in out["result"]["G"]["error"]
    last = sorted((_snapshots / t.id).glob("*.json"))[-1]
    again = await loop_agent(mem, 10, max_visits=3).run_from_snapshot(last)
    assert "maximum visits (3)" in again["result"]["G"]["error"]  # the counts came back with the snapshot


async def test_run_task_resume_uses_the_latest_snapshot(mem: BaseCache, _snapshots: Path) -> None:
    calls: list[str] = []

    def build() -> Agent:
        agent = Agent(cache=mem, auto_snapshot=True)
        agent.add_multiple_nodes([node("A", modules=[ex("a", calls)]), node("B", "A", modules=[ex("b", calls)])])
        return agent

    t = task()
    await build().run_task(t, resume=True)  # nothing to resume: a normal run
    assert calls == ["a", "b"]
    calls.clear()
    out = await build().run_task(t, resume=True)
    assert calls == [] and out["status"] == "complete"  # the latest snapshot is after B: nothing left
    assert (_snapshots / t.id / "000002_B.json").exists() is False


async def test_levels_mode_snapshots_resume(mem: BaseCache, _snapshots: Path) -> None:
    calls: list[str] = []

    def build() -> Agent:
        agent = Agent(cache=mem, scheduling="levels")
        agent.add_multiple_nodes([node("A", modules=[ex("a", calls)]),
                                  node("B", "A", modules=[ex("b", calls)], snapshot=SnapshotControl.ONCE),
                                  node("C", "B", modules=[ex("c", calls)])])
        return agent

    t = task()
    await build().run_task(t)
    calls.clear()
    out = await build().run_from_snapshot(_snapshots / t.id)  # a directory: its newest snapshot
    assert out["status"] == "complete" and calls == ["b", "c"]


async def test_a_snapshot_naming_unknown_nodes_is_refused(mem: BaseCache, _snapshots: Path) -> None:
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("A"), node("B", "A", snapshot="always")])
    t = task()
    await agent.run_task(t)
    other = Agent(cache=mem)
    other.add_node(node("B"))
    with pytest.raises(SnapshotError, match="lacks: 'A'"):
        await other.run_from_snapshot(next((_snapshots / t.id).glob("*.json")))


async def test_non_json_results_are_a_clear_snapshot_error(mem: BaseCache, _snapshots: Path) -> None:
    agent = Agent(cache=mem, auto_snapshot=True)
    agent.add_node(node("Odd", modules=[ex("odd", value=object())]))
    t = task()
    with pytest.raises(SnapshotError, match="result of node 'Odd'"):
        await agent.run_task(t)
    assert t.status == "failed" and t.error is not None and "Odd" in t.error


async def test_in_flight_nodes_run_again_after_resume(mem: BaseCache, _snapshots: Path) -> None:
    agent = Agent(cache=mem)
    agent.add_multiple_nodes([node("Slow", modules=[ex("slow", delay=0.1)]),
                              node("Fast", modules=[ex("fast", delay=0.01)]),
                              node("Snap", "Fast", snapshot="always")])
    t = task()
    await agent.run_task(t)
    data = read_snapshot(next((_snapshots / t.id).glob("*.json")))
    assert set(data.ready) == {"Snap", "Slow"} and "Slow" not in data.visits and data.state.total_iterations == 1


# --- snapshot → SIGKILL → resume in a new process ------------------------------------------------------------

SCRIPT = textwrap.dedent('''
    import asyncio, json, os, sys, time
    from typing import Any
    from flowmas.cache import cache_from_url
    from flowmas.graph import Agent, AgentModule, Node, NodeConfig, Task, latest_snapshot

    MARK = os.environ["MARK"]

    class Step(AgentModule):
        async def process(self, cache: Any, semaphore: Any) -> dict:
            with open(MARK + ".calls", "a") as f:
                f.write(self.name + "\\n")
            if self.name == "c" and os.environ.get("HANG") == "1":
                open(MARK, "w").close()
                await asyncio.sleep(120)
            await cache.set("seen_" + self.name, True)
            return {"status": "success", "result": self.name}

    async def main() -> None:
        url = os.environ["CACHE_URL"] or None
        options = {"key_root": os.environ["KEY_ROOT"]} if url else {}
        agent = Agent(cache=cache_from_url(url, **options), auto_snapshot=True)
        names = ["A", "B", "C", "D"]
        for i, name in enumerate(names):
            agent.add_node(Node(name=name, dependencies=names[i - 1:i], modules=[Step(name=name.lower())],
                                node_config=NodeConfig(inputs=["seen_b"] if name == "D" else [])))
        task = Task(id=os.environ["TASK_ID"], type="t", objective="o")
        out = await agent.run_task(task, resume=True)
        state = agent.execution_state
        print(json.dumps({"out": out, "total": state.total_iterations}))

    asyncio.run(main())
''')


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_snapshot_kill_resume_in_a_new_process(tmp_path: Path, _snapshots: Path, redis_url: str,
                                               backend: str) -> None:
    script = tmp_path / "graph_run.py"
    script.write_text(SCRIPT)
    mark = tmp_path / "reached"
    task_id = f"kill-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "MARK": str(mark), "TASK_ID": task_id, "FLOWMAS_SNAPSHOT_DIR": str(_snapshots),
           "CACHE_URL": redis_url if backend == "redis" else "", "KEY_ROOT": f"fmkill-{uuid.uuid4().hex[:8]}",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    first = subprocess.Popen([sys.executable, str(script)], env={**env, "HANG": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not mark.exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the graph never reached node C"
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL
    snaps = sorted(p.name for p in (_snapshots / task_id).glob("*.json"))
    assert snaps == ["000000_A.json", "000001_B.json"]
    second = subprocess.run([sys.executable, str(script)], env={**env, "HANG": "0"}, capture_output=True,
                            text=True, timeout=60, check=False)
    assert second.returncode == 0, second.stderr
    result: dict[str, Any] = json.loads(second.stdout.strip().splitlines()[-1])
    assert result["out"]["status"] == "complete"
    assert set(result["out"]["result"]) == {"A", "B", "C", "D"}
    assert result["total"] == 4  # A and B counted before the kill, C and D after
    calls = Path(str(mark) + ".calls").read_text().split()
    assert calls == ["a", "b", "c", "c", "d"]  # A and B did not run again; C (killed) did
    if backend == "redis":
        import redis

        client = redis.Redis.from_url(redis_url)
        names = list(client.scan_iter(match=f"{env['KEY_ROOT']}*"))
        if names:
            client.delete(*names)
        client.close()


async def test_failed_nodes_and_counters_in_snapshot(mem: BaseCache, _snapshots: Path) -> None:
    agent = Agent(cache=mem, auto_snapshot=True)
    agent.add_multiple_nodes([node("Bad", modules=[Boom(name="b", calls=[])], retry_on_failure=False),
                              Node(name="C", modules=[Counter(name="c")])])
    t = task()
    await agent.run_task(t)
    last = read_snapshot(sorted((_snapshots / t.id).glob("*.json"))[-1])
    assert last.failed_chains == [["Bad"]] and last.failed == ["Bad"] and last.done == ["C"]
