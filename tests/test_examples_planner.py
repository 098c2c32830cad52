"""``examples/planner.py`` end to end against the local LLM wire server: one planning call, the planned tool calls
as spliced nodes, a streamed summary. Both calls go through the official OpenAI SDK over a real socket."""

from __future__ import annotations

import json
from typing import Any

import pytest

from examples.planner import build, graph
from flowmas.cache import Cache, EmbeddedCache
from flowmas.graph import Middleware, Task
from flowmas.graph.loading import load_graph
from flowmas.llm import OpenAIClient
from tests.servers.llm import LLMServer, Reply, ToolCall


class Partials(Middleware):
    def __init__(self) -> None:
        self.deltas: list[str] = []

    async def process(self, data: dict[str, Any], cache: Cache) -> dict[str, Any]:
        if data.get("status") == "partial":
            self.deltas.append(data["delta"])
        return data


async def test_plan_fan_out_summarise(llm_server: LLMServer) -> None:
    llm_server.enqueue(
        Reply(tool_calls=[ToolCall("search", {"source": "web", "topic": "lua"}),
                          ToolCall("search", {"source": "papers", "topic": "lua"}),
                          ToolCall("search", {"source": "moon", "topic": "lua"})]),
        Reply(text="Lua is small and embeddable; sandboxing needs a fresh environment.", chunks=3),
    )
    partials = Partials()
    agent = build(OpenAIClient("planner", base_url=llm_server.url + "/v1", api_key="test"),
                  summary_middlewares=[partials])
    agent.cache = EmbeddedCache()
    task = Task(id="plan-1", type="research", objective="o", params={"topic": "lua"})

    output = await agent.run_task(task)

    assert output["status"] == "complete", output
    assert set(output["result"]) == {"plan", "call_1", "call_2", "call_3", "summarise"}
    plan_request, summary_request = llm_server.requests
    assert plan_request.json["tool_choice"] == "required" and plan_request.json["tools"][0]["function"]["name"] == \
        "search"
    prompt = json.dumps(summary_request.json)
    assert "Lua is small and embeddable." in prompt  # web's result reached the summary
    assert "Sandboxing an interpreter needs a fresh environment." in prompt  # papers'
    assert "Unknown source 'moon'" in prompt  # a failed call is reported, not fatal
    cache = agent.cache.namespaced("plan-1")
    assert await cache.get("summary") == "Lua is small and embeddable; sandboxing needs a fresh environment."
    assert "".join(partials.deltas) == await cache.get("summary") and len(partials.deltas) == 3


async def test_the_graph_factory_loads_and_reads_its_environment(llm_server: LLMServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANNER_BASE_URL", llm_server.url + "/v1")
    monkeypatch.setenv("PLANNER_MODEL", "local-model")
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    assert callable(graph)
    agent = load_graph("examples.planner:graph")
    agent.cache = EmbeddedCache()
    llm_server.enqueue(Reply(tool_calls=[ToolCall("search", {"source": "notes", "topic": "redis"})]),
                       Reply(text="SCAN walks the keyspace."))
    output = await agent.run_task(Task(type="r", objective="o", params={"topic": "redis"}))
    assert output["status"] == "complete", output
    assert {r.model for r in llm_server.requests} == {"local-model"}
