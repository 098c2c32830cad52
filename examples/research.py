"""A small research graph with no LLM: plan, fan out to three sources, summarise in rounds, publish.

    plan ──┬── search_web ────┐
           ├── search_papers ─┼── summarise ── review ── publish
           └── search_notes ──┘        ▲          │
                                       └──────────┘  while rounds < max_rounds (Lua, read from the cache)

The sources are dictionaries in this file, so a run is deterministic and takes milliseconds. Every module
reads the task from the cache (the engine stores it under ``task``) and writes what the next ones read:
``topic``, ``max_rounds``, ``found:<source>``, ``rounds``, ``draft``. The searches retry after a delay, so the
Prefect face runs each as a task run (``NodeConfig.track`` unset: executors that retry after a delay are
tracked); ``summarise`` is tracked explicitly; ``plan``, ``review`` and ``publish`` run inline.

    flowmas graph plan examples.research:graph
    flowmas graph run examples.research:graph --task '{"type": "r", "objective": "x", "params": {"topic": "lua"}}'

Task params: ``topic`` (one of ``prefect``, ``redis``, ``lua``; default ``prefect``) and ``rounds`` (summary
rounds, default 2).
"""

from __future__ import annotations

import asyncio
from typing import Any

from flowmas.cache import Cache
from flowmas.graph import (
    Agent,
    AgentModule,
    FlowControlConfig,
    FlowControlModule,
    FlowDecision,
    ModuleResult,
    Node,
    NodeConfig,
)

SOURCES: dict[str, dict[str, list[str]]] = {
    "web": {"prefect": ["Prefect runs Python flows with retries.", "Deployments are served by runners."],
            "redis": ["Redis keeps keys in memory.", "Lists make simple queues."],
            "lua": ["Lua is small and embeddable."]},
    "papers": {"prefect": ["Workflow engines trade overhead for durability."],
               "redis": ["In-memory stores answer in microseconds."],
               "lua": ["Sandboxing an interpreter needs a fresh environment."]},
    "notes": {"prefect": ["A task run costs milliseconds; keep trivial steps inline."],
              "redis": ["SCAN walks the whole keyspace."],
              "lua": ["Conditions read their variables in one batch."]},
}


class Plan(AgentModule):
    """Reads the task's params; writes ``topic`` and ``max_rounds``."""

    async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
        task = await cache.get("task")
        params = task.get("params") or {}
        topic = str(params.get("topic", "prefect"))
        if topic not in SOURCES["web"]:
            return {"status": "error", "error": f"Unknown topic {topic!r}; try one of {sorted(SOURCES['web'])}."}
        await cache.set("topic", topic)
        await cache.set("max_rounds", int(params.get("rounds", 2)))
        await cache.set("rounds", 0)
        return {"status": "success", "result": {"topic": topic, "sources": sorted(SOURCES)}}


class Search(AgentModule):
    """Looks the topic up in one source; writes ``found:<source>``."""

    source: str
    delay: float = 0.0

    async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        facts = SOURCES[self.source].get(await cache.get("topic"), [])
        await cache.set(f"found:{self.source}", facts)
        return {"status": "success", "result": len(facts)}


class Summarise(AgentModule):
    """Joins what the sources found into ``draft``; one more round each visit."""

    async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
        found = await cache.get_many([f"found:{source}" for source in SOURCES])
        facts = [fact for source in SOURCES for fact in found.get(f"found:{source}", [])]
        rounds = int(await cache.get("rounds", 0)) + 1
        await cache.set("rounds", rounds)
        draft = f"{len(facts)} facts, round {rounds}: " + " ".join(facts)
        await cache.set("draft", draft)
        return {"status": "success", "result": f"round {rounds}: {len(facts)} facts"}


class Publish(AgentModule):
    """The report: topic, rounds and the final draft."""

    async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
        values = await cache.get_many(["topic", "rounds", "draft"])
        return {"status": "success", "result": {"topic": values.get("topic"), "rounds": values.get("rounds"),
                                                "report": values.get("draft")}}


def build(*, search_delay: float = 0.0) -> Agent:
    """A fresh research graph (``search_delay``: seconds each search takes, for demos of parallelism)."""
    agent = Agent()
    agent.add_node(Node(name="plan", modules=[Plan(name="plan")]))
    for source in SOURCES:
        agent.add_node(Node(name=f"search_{source}", dependencies=["plan"],
                            modules=[Search(name=f"search_{source}", source=source, delay=search_delay)],
                            node_config=NodeConfig(retry_delay=0.5)))
    agent.add_node(Node(name="summarise", dependencies=[f"search_{source}" for source in SOURCES],
                        modules=[Summarise(name="summarise")], node_config=NodeConfig(track=True)))
    agent.add_node(Node(name="review", dependencies=["summarise"], modules=[FlowControlModule(
        name="review", flow_config=FlowControlConfig(
            decisions=[FlowDecision(next_node="summarise", condition="rounds < max_rounds")]))]))
    agent.add_node(Node(name="publish", dependencies=["review"], modules=[Publish(name="publish")]))
    return agent


graph = build()
"""The graph ``examples.research:graph`` names."""
