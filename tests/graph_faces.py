"""Graphs the tests of the graph's faces (flow, container, CLI) name by import path: ``tests.graph_faces:<name>``.

``RUNS`` counts each node's executions per task id in this process (the flow runs in the test's process), so a
test can tell that a resumed run did not run a completed node again.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from flowmas.cache import Cache
from flowmas.graph import Agent, AgentModule, ModuleResult, Node, NodeConfig
from flowmas.graph.runs import agent_mailbox, channel_mailbox, platform_cache

RUNS: Counter[tuple[str, str]] = Counter()


async def _task_id(cache: Cache) -> str:
    task = await cache.get("task")
    return str(task["id"])


class Step(AgentModule):
    """Counts itself; ``unjsonable_first``: its first run returns a value no snapshot can hold, which stops the
    run half way (the snapshot after it fails), as a crash would; ``fail``: always an error."""

    unjsonable_first: bool = False
    fail: bool = False

    async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
        key = (await _task_id(cache), self.name)
        RUNS[key] += 1
        if self.fail:
            return {"status": "error", "error": f"{self.name} always fails"}
        if self.unjsonable_first and RUNS[key] == 1:
            return {"status": "success", "result": object()}
        return {"status": "success", "result": f"{self.name} run {RUNS[key]}"}


def _chain(*steps: Step, track: bool | None = None) -> Agent:
    agent = Agent()
    previous: list[str] = []
    for step in steps:
        agent.add_node(Node(name=step.name, modules=[step], dependencies=previous,
                            node_config=NodeConfig(track=track, max_retries=0)))
        previous = [step.name]
    return agent


flaky = _chain(Step(name="a"), Step(name="b", unjsonable_first=True), Step(name="c"), track=True)
"""a -> b -> c, every node tracked; b's first run stops the run after it (its result cannot be snapshotted)."""

failing = _chain(Step(name="first"), Step(name="broken", fail=True), Step(name="after"))
"""first -> broken -> after: broken fails, after is blocked (partial_failure)."""


class Listen(AgentModule):
    """Waits for one message to the Graphs agent and one broadcast on the task's channel (platform mailboxes)."""

    async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
        task = await cache.get("task")
        channel = task["params"]["channel"]
        platform = platform_cache(cache)
        sent = await platform.get_message(agent_mailbox("graphs"), timeout=60)
        broadcast = await platform.get_message(channel_mailbox(channel), timeout=60)
        return {"status": "success", "result": {"sent": sent, "broadcast": broadcast}}


listener = Agent()
listener.add_node(Node(name="listen", modules=[Listen(name="listen", config={"timeout": 90})]))

not_an_agent = 42


def factory() -> Agent:
    return _chain(Step(name="only"))


def broken_factory() -> Agent:
    raise RuntimeError("the factory broke")
