"""One contract, every client: the real SDKs (anthropic, openai, boto3, AnthropicVertex) against the local wire
server (tests/servers/llm.py), parametrized over anthropic, openai-chat, openai-responses, bedrock and vertex.

Each case scripts the server's answers, runs the flowmas client and checks what the caller sees and what went
over the wire (the recorded request bodies).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flowmas.errors import (
    ContextLengthExceededError,
    LLMConnectionError,
    LLMHTTPError,
    TransientError,
)
from flowmas.llm import (
    BaseClient,
    BlockStop,
    MessageStart,
    MessageStop,
    RetryPolicy,
    TextDelta,
    Tool,
    ToolCallBlock,
    ToolCallDelta,
    ToolResultEvent,
    Usage,
    UsageEvent,
)
from tests.servers.llm import Fault, LLMServer, RecordedRequest, Reply, ToolCall
from tests.servers.llm import Usage as WireUsage

pytestmark = pytest.mark.asyncio(loop_scope="session")  # the client fixture closes its SDK in the tests' loop

KINDS = ["anthropic", "openai-chat", "openai-responses", "bedrock", "vertex"]
WIRE = {"anthropic": "anthropic", "openai-chat": "openai-chat", "openai-responses": "openai-responses",
        "bedrock": "bedrock", "vertex": "vertex"}


class Sleeps:
    """The retry policy's sleep: records the delays and yields without waiting long."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def make_client(kind: str, url: str, sleeps: Sleeps | None = None, **options: Any) -> BaseClient[Any]:
    from flowmas.llm import AnthropicClient, BedrockClient, OpenAIClient, VertexClient

    retry = RetryPolicy(initial_delay=0.01, max_delay=0.05, sleep=sleeps or Sleeps())
    common: dict[str, Any] = {"retry": retry, "timeout": 10.0, **options}
    if kind == "anthropic":
        return AnthropicClient("claude-test", api_key="test-key", base_url=url, **common)
    if kind == "openai-chat":
        return OpenAIClient("gpt-test", api_key="test-key", base_url=url + "/v1", **common)
    if kind == "openai-responses":
        return OpenAIClient("gpt-test", api_key="test-key", base_url=url + "/v1", api="responses", **common)
    if kind == "bedrock":
        return BedrockClient("anthropic.claude-test", region="us-east-1", endpoint_url=url,
                             aws_access_key_id="testing", aws_secret_access_key="testing-secret", **common)
    return VertexClient("claude-test@1", region="us-east5", project_id="proj-1", access_token="vertex-token",
                        base_url=url + "/v1", **common)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(kind: str, llm_server: LLMServer, sleeps: Sleeps) -> AsyncIterator[BaseClient[Any]]:
    c = make_client(kind, llm_server.url, sleeps)
    yield c
    await c.aclose()


def sent(server: LLMServer, kind: str) -> list[RecordedRequest]:
    return server.requests_for(WIRE[kind])  # type: ignore[arg-type]


def weather_tool(log: list[tuple[str, float, float]] | None = None) -> Tool:
    async def get_weather(city: str, days: int = 1) -> dict[str, Any]:
        """Get the weather.

        Args:
            city: The city.
            days: Days ahead.
        """
        start = time.perf_counter()
        await asyncio.sleep(0.15)
        if log is not None:
            log.append((city, start, time.perf_counter()))
        return {"city": city, "forecast": "sunny", "days": days}

    return Tool.from_function(get_weather)


def tool_results_in(body: dict[str, Any], kind: str) -> list[str]:
    """The tool-result texts a recorded request body carries, per protocol."""
    out: list[str] = []
    if kind in ("anthropic", "vertex"):
        for m in body["messages"]:
            for b in m["content"] if isinstance(m["content"], list) else []:
                if b.get("type") == "tool_result":
                    out.append(b["content"] if isinstance(b["content"], str) else b["content"][0]["text"])
    elif kind == "openai-chat":
        out = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    elif kind == "openai-responses":
        out = [i["output"] for i in body["input"] if i.get("type") == "function_call_output"]
    else:
        for m in body["messages"]:
            for b in m["content"]:
                if "toolResult" in b:
                    out.append(b["toolResult"]["content"][0]["text"])
    return out


# ------------------------------------------------------------------------------------------ plain answers


async def test_plain_answer(client: BaseClient[Any], llm_server: LLMServer, kind: str) -> None:
    llm_server.enqueue(Reply(text="Hello there", usage=WireUsage(input=12, output=7, cache_read=3, cache_write=2)))
    response = await client.complete("Hi", system="Be brief.", max_tokens=50, temperature=0.5)
    assert response.text == "Hello there"
    assert response.stop_reason == "end_turn"
    assert response.usage == Usage(input_tokens=12, output_tokens=7, cache_read_input_tokens=3,
                                   cache_write_input_tokens=2)
    assert response.provider == client.provider and response.model and response.latency > 0
    [request] = sent(llm_server, kind)
    body = request.json
    if kind in ("anthropic", "vertex"):
        assert body["max_tokens"] == 50 and body["system"][0]["text"] == "Be brief." and body["temperature"] == 0.5
        assert request.auth == "bearer"
    elif kind == "openai-chat":
        assert body["max_tokens"] == 50 and body["messages"][0] == {"role": "system", "content": "Be brief."}
    elif kind == "openai-responses":
        assert body["max_output_tokens"] == 50 and body["instructions"] == "Be brief." and body["store"] is False
    else:
        assert body["inferenceConfig"] == {"maxTokens": 50, "temperature": 0.5}
        assert body["system"] == [{"text": "Be brief."}]


async def test_asimov_aliases(client: BaseClient[Any], llm_server: LLMServer) -> None:
    llm_server.enqueue(Reply(text="one"), Reply(text="two parts", chunks=2))
    assert await client.get_generation([{"role": "user", "content": "hi"}]) == "one"
    pieces = [p async for p in client.connect_and_listen([{"role": "user", "content": "hi"}])]
    assert "".join(pieces) == "two parts" and len(pieces) == 2


# -------------------------------------------------------------------------------------------- streaming


async def test_streaming_events_in_order(client: BaseClient[Any], llm_server: LLMServer) -> None:
    llm_server.enqueue(Reply(text="The quick brown fox", chunks=4, usage=WireUsage(input=9, output=4)))
    started = time.perf_counter()
    first_at = None
    events = []
    async for event in client.stream("Hi"):
        if first_at is None:
            first_at = time.perf_counter() - started
        events.append(event)
    assert isinstance(events[0], MessageStart) and events[0].attempt == 1
    assert isinstance(events[-1], MessageStop) and isinstance(events[-2], UsageEvent)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 4 and "".join(d.text for d in deltas) == "The quick brown fox"
    stops = [e for e in events if isinstance(e, BlockStop)]
    assert len(stops) == 1 and stops[0].block.text == "The quick brown fox"  # type: ignore[union-attr]
    response = events[-1].response
    assert response.text == "The quick brown fox" and response.stop_reason == "end_turn"
    assert response.usage == Usage(input_tokens=9, output_tokens=4)
    assert first_at is not None and first_at < 2.0


async def test_streaming_tool_call_deltas_parse_partial_arguments(
    client: BaseClient[Any], llm_server: LLMServer
) -> None:
    args = {"city": "Paris", "days": 3, "note": "a fairly long note to split"}
    llm_server.enqueue(Reply(text="Let me check.", tool_calls=[ToolCall("get_weather", args)], chunks=4))
    events = [e async for e in client.stream("Weather?", tools=[weather_tool().spec])]
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len(deltas) >= 2
    assert all(d.name == "get_weather" and d.id for d in deltas)
    assert deltas[-1].arguments == args and json.loads(deltas[-1].arguments_json) == args
    assert any(d.arguments != args for d in deltas[:-1])  # partial values came first
    response = events[-1].response  # type: ignore[union-attr]
    assert response.stop_reason == "tool_use" and response.text == "Let me check."
    assert response.tool_calls == [ToolCallBlock(id=deltas[0].id, name="get_weather", arguments=args)]


# ------------------------------------------------------------------------------------------ the tool loop


async def test_two_step_tool_loop_with_parallel_calls_and_summed_usage(
    client: BaseClient[Any], llm_server: LLMServer, kind: str
) -> None:
    llm_server.enqueue(
        Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Rome"})],
              usage=WireUsage(input=100, output=20, cache_write=50)),
        Reply(text="Sunny in both.", usage=WireUsage(input=150, output=8, cache_read=50)),
    )
    log: list[tuple[str, float, float]] = []
    result = await client.tool_chain("Weather in Paris and Rome?", [weather_tool(log)])
    assert result.text == "Sunny in both." and result.iterations == 2 and not result.stopped_by_tool
    assert result.usage == Usage(input_tokens=250, output_tokens=28, cache_read_input_tokens=50,
                                 cache_write_input_tokens=50)
    (_, _, first_end), (_, second_start, _) = sorted(log, key=lambda entry: entry[1])
    assert second_start < first_end, "the two tool calls ran one after the other"
    roles = [m.role for m in result.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    second = sent(llm_server, kind)[1].json
    results = [json.loads(text) for text in tool_results_in(second, kind)]
    assert results == [{"city": "Paris", "forecast": "sunny", "days": 1},
                       {"city": "Rome", "forecast": "sunny", "days": 1}]


async def test_tool_loop_streams_to_middlewares(client: BaseClient[Any], llm_server: LLMServer) -> None:
    llm_server.enqueue(Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo", "days": 2})], chunks=3),
                       Reply(text="Cold.", chunks=2))
    seen: list[Any] = []

    async def middleware(event: Any) -> None:
        seen.append(event)

    result = await client.tool_chain("Weather in Oslo?", [weather_tool()], middlewares=[middleware, seen.append])
    assert result.text == "Cold."
    kinds = [type(e).__name__ for e in seen[::2]]  # each event went to both middlewares, in order
    assert seen[::2] == seen[1::2]
    assert kinds[0] == "MessageStart" and "ToolCallDelta" in kinds and "ToolResultEvent" in kinds
    assert kinds.index("ToolResultEvent") < len(kinds) - kinds[::-1].index("MessageStart")
    partial = [e.arguments for e in seen[::2] if isinstance(e, ToolCallDelta)]
    assert partial[-1] == {"city": "Oslo", "days": 2}
    tool_event = next(e for e in seen if isinstance(e, ToolResultEvent))
    assert json.loads(tool_event.block.text)["city"] == "Oslo"


async def test_tool_errors_reach_the_model(client: BaseClient[Any], llm_server: LLMServer, kind: str) -> None:
    def explode(city: str) -> str:
        """Fails."""
        raise RuntimeError(f"no data for {city}")

    llm_server.enqueue(Reply(tool_calls=[ToolCall("explode", {"city": "Atlantis"})]), Reply(text="Sorry."))
    result = await client.tool_chain("?", [explode])
    assert result.text == "Sorry."
    [text] = tool_results_in(sent(llm_server, kind)[1].json, kind)
    assert "RuntimeError: no data for Atlantis" in text
    body = sent(llm_server, kind)[1].json
    if kind in ("anthropic", "vertex"):
        block = next(b for m in body["messages"] for b in m["content"] if b.get("type") == "tool_result")
        assert block["is_error"] is True
    elif kind == "bedrock":
        block = next(b for m in body["messages"] for b in m["content"] if "toolResult" in b)
        assert block["toolResult"]["status"] == "error"


# ------------------------------------------------------------------------------------------------ faults


async def test_429_retry_after_is_honoured(
    client: BaseClient[Any], llm_server: LLMServer, kind: str, sleeps: Sleeps
) -> None:
    llm_server.enqueue(Fault(429, retry_after=1.25), Reply(text="finally"))
    assert (await client.complete("Hi")).text == "finally"
    assert sleeps.delays == [1.25]
    assert len(sent(llm_server, kind)) == 2


async def test_500_and_529_are_retried(
    client: BaseClient[Any], llm_server: LLMServer, kind: str, sleeps: Sleeps
) -> None:
    llm_server.enqueue(Fault(500), Fault(503), Reply(text="ok now"))
    assert (await client.complete("Hi")).text == "ok now"
    assert len(sleeps.delays) == 2 and all(0 <= d <= 0.05 for d in sleeps.delays)


async def test_dropped_answer_is_transient_and_retried_by_complete(
    client: BaseClient[Any], llm_server: LLMServer, kind: str
) -> None:
    llm_server.enqueue(Fault(drop_after_events=2), Reply(text="second try"))
    assert (await client.complete("Hi")).text == "second try"
    assert len(sent(llm_server, kind)) == 2


async def test_stream_dropped_midway_raises_transient(client: BaseClient[Any], llm_server: LLMServer) -> None:
    llm_server.enqueue(Fault(drop_after_events=3, reply=Reply(text="a b c d e f", chunks=6)), Reply(text="x"))
    events = []
    with pytest.raises(LLMConnectionError) as caught:
        async for event in client.stream("Hi"):
            events.append(event)
    assert isinstance(caught.value, TransientError)
    assert events and isinstance(events[0], MessageStart)
    assert llm_server.pending == 1  # not retried once events were out


async def test_stream_retries_before_its_first_event(
    client: BaseClient[Any], llm_server: LLMServer, sleeps: Sleeps
) -> None:
    llm_server.enqueue(Fault(429, retry_after=0.5), Reply(text="streamed"))
    events = [e async for e in client.stream("Hi")]
    assert events[-1].response.text == "streamed"  # type: ignore[union-attr]
    assert sleeps.delays == [0.5]


async def test_400_raises_with_message_and_request_id(
    client: BaseClient[Any], llm_server: LLMServer, kind: str
) -> None:
    llm_server.enqueue(Fault(400, message="messages.0: something is wrong"))
    with pytest.raises(LLMHTTPError) as caught:
        await client.complete("Hi")
    err = caught.value
    assert type(err) is LLMHTTPError and not isinstance(err, TransientError)
    assert err.status == 400 and err.provider == client.provider
    assert "something is wrong" in str(err) and err.request_id and err.request_id in str(err)
    assert len(sent(llm_server, kind)) == 1


async def test_context_length_is_its_own_error(client: BaseClient[Any], llm_server: LLMServer) -> None:
    llm_server.enqueue(Fault(400, error_type="context_length_exceeded"))
    with pytest.raises(ContextLengthExceededError) as caught:
        await client.complete("Hi")
    assert caught.value.status == 400


async def test_401_is_not_retried(client: BaseClient[Any], llm_server: LLMServer, kind: str) -> None:
    llm_server.enqueue(Fault(401 if kind != "bedrock" else 403), Reply(text="never"))
    with pytest.raises(LLMHTTPError) as caught:
        await client.complete("Hi")
    assert caught.value.status in (401, 403) and not isinstance(caught.value, TransientError)
    assert "test-key" not in str(caught.value) and "testing-secret" not in str(caught.value)
    assert len(sent(llm_server, kind)) == 1 and llm_server.pending == 1


# ---------------------------------------------------------------------------------- inputs and mapping


async def test_caller_inputs_are_not_mutated(client: BaseClient[Any], llm_server: LLMServer) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    spec = {"name": "get_weather", "description": "Weather.", "input_schema": schema}
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Weather in Paris?"}]
    before = copy.deepcopy((spec, messages))

    async def get_weather(args: dict[str, Any]) -> str:
        return f"sunny in {args['city']}"

    llm_server.enqueue(Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]), Reply(text="Sunny."),
                       Reply(text="again"))
    result = await client.tool_chain(messages, [(get_weather, spec)])
    await client.complete(result.messages, tools=[spec])
    assert (spec, messages) == before
    assert [m.role for m in result.messages[:2]] == ["system", "user"]  # the transcript: our Message objects


@pytest.mark.parametrize("choice", ["auto", "any", "required", "none", "get_weather"])
async def test_tool_choice_mapping_on_the_wire(
    client: BaseClient[Any], llm_server: LLMServer, kind: str, choice: str
) -> None:
    await client.complete("Hi", tools=[weather_tool().spec], tool_choice=choice)
    body = sent(llm_server, kind)[0].json
    normal = {"required": "any"}.get(choice, choice)
    if kind in ("anthropic", "vertex"):
        expected: Any = {"type": "tool", "name": "get_weather"} if normal == "get_weather" else {"type": normal}
        assert body["tool_choice"] == expected
    elif kind == "openai-chat":
        expected = ({"type": "function", "function": {"name": "get_weather"}} if normal == "get_weather"
                    else {"any": "required"}.get(normal, normal))
        assert body["tool_choice"] == expected
    elif kind == "openai-responses":
        expected = ({"type": "function", "name": "get_weather"} if normal == "get_weather"
                    else {"any": "required"}.get(normal, normal))
        assert body["tool_choice"] == expected
    elif normal == "none":
        assert "toolConfig" not in body
    else:
        expected = {"tool": {"name": "get_weather"}} if normal == "get_weather" else {normal: {}}
        assert body["toolConfig"]["toolChoice"] == expected


@pytest.mark.parametrize("kind", ["anthropic", "vertex"])
async def test_cache_breakpoints_on_the_wire(client: BaseClient[Any], llm_server: LLMServer, kind: str) -> None:
    llm_server.enqueue(Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]), Reply(text="done"))
    await client.tool_chain("Weather?", [weather_tool()], system="You are terse.")
    body = sent(llm_server, kind)[1].json
    marks = [("tool", t["name"]) for t in body["tools"] if "cache_control" in t]
    marks += [("system", b["text"]) for b in body["system"] if "cache_control" in b]
    for i, m in enumerate(body["messages"]):
        marks += [(f"message{i}", b["type"]) for b in m["content"] if "cache_control" in b]
    assert marks == [("tool", "get_weather"), ("system", "You are terse."), ("message0", "text"),
                     ("message2", "tool_result")]
    assert all(t.get("cache_control", {"type": "ephemeral"}) == {"type": "ephemeral"} for t in body["tools"])


async def test_one_sdk_client_is_reused(client: BaseClient[Any], llm_server: LLMServer) -> None:
    await client.complete("a")
    first = client._sdk()
    await client.complete("b")
    assert client._sdk() is first


async def test_breaking_out_of_a_stream_closes_it(client: BaseClient[Any], llm_server: LLMServer) -> None:
    llm_server.enqueue(Reply(text="a long answer that we stop reading", chunks=8), Reply(text="next"))
    stream = client.stream("Hi")
    async for event in stream:
        if isinstance(event, TextDelta):
            break
    await stream.aclose()
    assert (await asyncio.wait_for(client.complete("again"), 5)).text == "next"


async def test_images_on_the_wire(client: BaseClient[Any], llm_server: LLMServer, kind: str) -> None:
    from flowmas.llm import ImageBlock, Message

    image = ImageBlock.from_bytes(b"\x89PNG\r\n\x1a\nfake", "image/png")
    await client.complete([Message.user("What is this?", images=[image])])
    body = sent(llm_server, kind)[0].json
    if kind in ("anthropic", "vertex"):
        assert body["messages"][0]["content"][1]["source"] == {"type": "base64", "media_type": "image/png",
                                                               "data": image.data}
    elif kind == "openai-chat":
        assert body["messages"][0]["content"][1]["image_url"]["url"] == f"data:image/png;base64,{image.data}"
    elif kind == "openai-responses":
        assert body["input"][0]["content"][1] == {"type": "input_image",
                                                  "image_url": f"data:image/png;base64,{image.data}"}
    else:
        assert body["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": image.data}}}


@pytest.mark.parametrize("kind", ["anthropic", "vertex"])
async def test_thinking_budget_on_the_wire(llm_server: LLMServer, kind: str) -> None:
    client = make_client(kind, llm_server.url, thinking=2048)
    try:
        await client.complete("Think.", max_tokens=100)
    finally:
        await client.aclose()
    body = sent(llm_server, kind)[0].json
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048} and body["max_tokens"] == 2148
