"""``LLMExecutor`` and ``ToolAgentExecutor`` in real graphs, against the local LLM wire server (official SDKs).

Partials reach the module's middlewares in order while the model streams, then the result passes through them
as the engine's rule 14 says; the tool loop's transcript, tool calls and usage land in the result.
"""

from __future__ import annotations

from typing import Any

import pytest

from flowmas.cache import Cache, EmbeddedCache
from flowmas.graph import Agent, Middleware, ModuleConfig, Node, NodeConfig, Task
from flowmas.graph.llm_modules import LLMExecutor, ToolAgentExecutor
from flowmas.llm import AnthropicClient, OpenAIClient, RetryPolicy, Tool
from tests.servers.llm import Fault, LLMServer, Reply, ToolCall, Usage

NO_WAIT = RetryPolicy(max_attempts=2, initial_delay=0, max_delay=0)


class Recorder(Middleware):
    """Keeps every item it sees, in order."""

    seen: list[dict[str, Any]]

    def __init__(self) -> None:
        self.seen = []

    async def process(self, data: dict[str, Any], cache: Cache) -> dict[str, Any]:
        self.seen.append(dict(data))
        return data


def openai(server: LLMServer) -> OpenAIClient:
    return OpenAIClient("gpt-test", base_url=server.url + "/v1", api_key="test", retry=NO_WAIT)


def anthropic(server: LLMServer) -> AnthropicClient:
    return AnthropicClient("claude-test", base_url=server.url, api_key="test", retry=NO_WAIT)


async def run(module: Any, params: dict[str, Any] | None = None, *, retries: int = 0) -> tuple[dict[str, Any], Cache]:
    """Runs a one-node graph; its output and the run's cache view."""
    agent = Agent(cache=EmbeddedCache())
    agent.add_node(Node(name="n", modules=[module], node_config=NodeConfig(max_retries=retries)))
    task = Task(type="t", objective="Say hello", params=params or {})
    output = await agent.run_task(task)
    return output, agent.cache.namespaced(task.id)


@pytest.mark.parametrize("make", [openai, anthropic])
async def test_streamed_partials_reach_the_middlewares_in_order(llm_server: LLMServer, make: Any) -> None:
    llm_server.enqueue(Reply(text="Hello, graph world!", chunks=4, usage=Usage(input=7, output=4)))
    recorder = Recorder()
    module = LLMExecutor(name="speak", client=make(llm_server), prompt="{objective} to {who}",
                         output_key="greeting", config=ModuleConfig(middlewares=[recorder]))

    output, cache = await run(module, {"who": "Ada"})

    assert output["status"] == "complete", output
    partials = [item for item in recorder.seen if item["status"] == "partial"]
    assert [p["delta"] for p in partials] == ["Hello", ", gra", "ph wo", "rld!"]
    assert [p["text"] for p in partials][-1] == "Hello, graph world!"
    assert recorder.seen[-1]["status"] == "success" and recorder.seen[:-1] == partials  # partials first
    assert recorder.seen[-1]["usage"]["input_tokens"] == 7
    [request] = llm_server.requests
    assert request.stream and "Say hello to Ada" in str(request.json)
    assert await cache.get("greeting") == "Hello, graph world!"


async def test_without_middlewares_one_plain_call_and_inputs_from_the_cache(llm_server: LLMServer) -> None:
    llm_server.enqueue(Reply(text="short"))
    cache = EmbeddedCache()
    agent = Agent(cache=cache)

    class Seed(LLMExecutor):
        async def process(self, cache: Cache, semaphore: Any) -> dict[str, Any]:
            await cache.set("notes", "alpha beta")
            return await super().process(cache, semaphore)

    agent.add_node(Node(name="n", node_config=NodeConfig(max_retries=0), modules=[
        Seed(name="s", client=lambda: openai(llm_server), prompt="Summarise {notes}", inputs=["notes"])]))
    task = Task(id="inputs-1", type="t", objective="o")
    output = await agent.run_task(task)
    assert output["status"] == "complete", output
    [request] = llm_server.requests
    assert not request.stream and "Summarise alpha beta" in str(request.json)
    assert await cache.namespaced("inputs-1").get("answer") == "short"


async def test_a_400_fails_the_node_at_once_and_a_missing_input_names_itself(llm_server: LLMServer) -> None:
    llm_server.enqueue(Fault(status=400, message="bad request"))
    output, _ = await run(LLMExecutor(name="m", client=openai(llm_server)), retries=2)
    assert output["status"] == "failed"
    assert len(llm_server.requests) == 1  # NonRetryableError: the node's retries do not apply
    llm_server.enqueue(Fault(status=429, retry_after=0), Fault(status=429, retry_after=0), Reply(text="third"))
    output, _ = await run(LLMExecutor(name="m", client=openai(llm_server)), retries=2)
    assert output["status"] == "complete"  # transient: the client's retry, then the node's
    assert len(llm_server.requests) == 4
    output, _ = await run(LLMExecutor(name="m", client=openai(llm_server), inputs=["nothing"]))
    assert "Input 'nothing'" in str(output)
    output, _ = await run(LLMExecutor(name="m", client=openai(llm_server), prompt="{unknown}"))
    assert "{unknown}" in str(output)


def add(x: int, y: int) -> int:
    """Adds two integers."""
    return x + y


@pytest.mark.parametrize("make", [openai, anthropic])
async def test_tool_agent_runs_the_loop_and_reports_transcript_calls_and_usage(llm_server: LLMServer,
                                                                               make: Any) -> None:
    llm_server.enqueue(
        Reply(tool_calls=[ToolCall("add", {"x": 2, "y": 3}), ToolCall("nope", {})], usage=Usage(input=10, output=3)),
        Reply(text="2 + 3 = 5", usage=Usage(input=20, output=4)),
    )
    recorder = Recorder()
    module = ToolAgentExecutor(name="agent", client=make(llm_server), tools=[Tool.from_function(add)],
                               prompt="{objective}", config=ModuleConfig(middlewares=[recorder]))

    output, _ = await run(module)

    assert output["status"] == "complete", output
    result = output["result"]["n"]["results"][0]
    assert result["result"] == "2 + 3 = 5"
    assert result["usage"]["input_tokens"] == 30 and result["usage"]["output_tokens"] == 7
    assert result["iterations"] == 2
    calls = {c["name"]: c for c in result["tool_calls"]}
    assert calls["add"]["result"] == "5" and not calls["add"]["is_error"]
    assert calls["nope"]["is_error"] and "Unknown tool" in calls["nope"]["result"]  # the loop went on
    assert [m["role"] for m in result["transcript"]] == ["user", "assistant", "tool", "assistant"]
    kinds = [item.get("type") for item in recorder.seen if item["status"] == "partial"]
    assert "tool_call" in kinds and kinds.count("tool_result") == 2 and kinds[-1] == "text"
    assert kinds.index("tool_result") > kinds.index("tool_call")


async def test_tool_agent_tools_from_a_factory_and_the_iteration_limit(llm_server: LLMServer) -> None:
    llm_server.enqueue(*[Reply(tool_calls=[ToolCall("add", {"x": 1, "y": 1})]) for _ in range(2)])
    module = ToolAgentExecutor(name="loop", client=openai(llm_server), tools=lambda: [Tool.from_function(add)],
                               max_iterations=2)
    output, _ = await run(module)
    assert output["status"] == "failed"
    error = output["result"]["n"]
    assert "max_iterations=2" in error["error"] and len(error["tool_calls"]) == 2
