"""A graph that plans with one model call, fans out the tool calls it planned, and summarises with a second call.

    plan ── (call_1, call_2, …: one node per planned tool call, spliced in by plan) ── summarise

``plan`` asks the model once, offering the tools and requiring a tool call (``tool_choice="any"``); every tool
call of its answer becomes a node of its own (``new_nodes``), so the calls run in parallel, each writing
``result:<n>``. ``summarise`` (which the engine makes wait for every spliced node) gathers them into
``findings`` and an ``LLMExecutor`` writes the ``summary`` (streaming: its partials reach the middlewares).

The tool is ``search(source, topic)`` over the dictionaries of ``examples.research`` (deterministic, offline).
The model is any ``flowmas.llm`` client: ``build(client)``. ``graph`` (a factory, as ``load_graph`` accepts)
uses ``OpenAIClient($PLANNER_MODEL, base_url=$PLANNER_BASE_URL)`` — an OpenAI-compatible server works:

    PLANNER_BASE_URL=http://localhost:8000/v1 PLANNER_MODEL=qwen2.5 \\
        flowmas graph run examples.planner:graph --task '{"type": "p", "objective": "o", "params": {"topic": "lua"}}'
"""

from __future__ import annotations

import os
from typing import Any

from examples.research import SOURCES
from flowmas.cache import Cache
from flowmas.graph import Agent, AgentModule, ModuleResult, Node, NodeConfig
from flowmas.graph.llm_modules import LLMExecutor, render_prompt

PLAN_PROMPT = (
    "Research the topic {topic!r}. Call the search tool once for every source worth searching "
    "(sources: web, papers, notes); call them all now, in one answer."
)
SUMMARY_PROMPT = "Summarise what the searches found about {topic} in two sentences.\n\nFindings:\n{findings}"


def search(source: str, topic: str) -> list[str]:
    """Facts about a topic from one source.

    Args:
        source: web, papers or notes.
        topic: what to look up (prefect, redis or lua).
    """
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; use one of {sorted(SOURCES)}.")
    return SOURCES[source].get(topic.strip().lower(), [])


TOOLS = {"search": search}


class Plan(AgentModule):
    """One model call with the tools offered; each tool call it answers becomes a node (a fan-out)."""

    client: Any = None
    prompt: str = PLAN_PROMPT

    async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
        from flowmas.llm import Tool

        task = await cache.get("task")
        await cache.set("topic", str((task.get("params") or {}).get("topic", "prefect")))
        prompt = await render_prompt(self.prompt, cache, ["topic"])
        specs = [Tool.from_function(fn).spec for fn in TOOLS.values()]
        response = await self.client.complete(prompt, tools=specs, tool_choice="any")
        calls = response.tool_calls
        if not calls:
            return {"status": "error", "error": "The model planned no tool call."}
        await cache.set("planned", len(calls))
        nodes = [Node(name=f"call_{n}", modules=[RunTool(name=f"call_{n}", number=n, tool=call.name,
                                                          arguments=call.arguments)])
                 for n, call in enumerate(calls, start=1)]
        return {"status": "success", "result": [{"tool": c.name, "arguments": c.arguments} for c in calls],
                "usage": response.usage.model_dump(), "new_nodes": nodes}


class RunTool(AgentModule):
    """Runs one planned tool call; writes ``result:<number>`` (an error text when the call failed)."""

    number: int
    tool: str
    arguments: dict[str, Any]

    async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
        from flowmas.llm import Tool

        fn = TOOLS.get(self.tool)
        if fn is None:
            outcome: Any = f"error: no tool {self.tool!r}"
        else:
            try:
                outcome = await Tool.from_function(fn).invoke(self.arguments)
            except Exception as exc:  # noqa: BLE001 - the summary reports a failed call, the run goes on
                outcome = f"error: {type(exc).__name__}: {exc}"
        await cache.set(f"result:{self.number}", {"tool": self.tool, "arguments": self.arguments, "result": outcome})
        return {"status": "success", "result": outcome}


class Gather(AgentModule):
    """Joins every ``result:<n>`` into the text ``findings``."""

    async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
        planned = int(await cache.get("planned", 0))
        found = await cache.get_many([f"result:{n}" for n in range(1, planned + 1)])
        lines = []
        for n in range(1, planned + 1):
            item = found.get(f"result:{n}") or {}
            lines.append(f"- {item.get('tool')}({item.get('arguments')}): {item.get('result')}")
        await cache.set("findings", "\n".join(lines))
        return {"status": "success", "result": len(lines)}


def build(client: Any, *, summary_middlewares: list[Any] | None = None) -> Agent:
    """The planner graph over ``client`` (``summary_middlewares`` see the summary stream as it comes)."""
    from flowmas.graph import ModuleConfig

    agent = Agent()
    agent.add_node(Node(name="plan", modules=[Plan(name="plan", client=client)],
                        node_config=NodeConfig(max_retries=0)))
    agent.add_node(Node(name="summarise", dependencies=["plan"], node_config=NodeConfig(max_retries=0), modules=[
        Gather(name="gather"),
        LLMExecutor(name="summary", client=client, prompt=SUMMARY_PROMPT, inputs=["topic", "findings"],
                    output_key="summary", config=ModuleConfig(middlewares=list(summary_middlewares or []))),
    ]))
    return agent


def graph() -> Agent:
    """``examples.planner:graph``: the planner over ``OpenAIClient($PLANNER_MODEL, base_url=$PLANNER_BASE_URL)``."""
    from flowmas.llm import OpenAIClient

    return build(OpenAIClient(os.environ.get("PLANNER_MODEL", "gpt-4o-mini"),
                              base_url=os.environ.get("PLANNER_BASE_URL") or None))
