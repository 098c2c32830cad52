"""The per-call fast paths: the per-message conversion cache, span skipping, unvalidated construction, Bedrock's
stream reader threads. Each must give exactly what the plain path gives."""

from __future__ import annotations

import asyncio
import copy
import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from flowmas.llm import AnthropicClient, BedrockClient, Message, OpenAIClient, Tool, telemetry
from flowmas.llm import anthropic as anthropic_adapter
from flowmas.llm import bedrock as bedrock_adapter
from flowmas.llm import openai as openai_adapter
from flowmas.llm._convert import ConvertedMessages, extend, merge_role
from flowmas.llm.caching import place_breakpoints, place_new_breakpoints
from flowmas.llm.client import Request
from flowmas.llm.types import (
    ImageBlock,
    Response,
    TextBlock,
    ToolCallBlock,
    ToolResultBlock,
    Usage,
    response,
    text_block,
    tool_call_block,
    tool_result_block,
    usage,
)

PNG = ImageBlock.from_bytes(b"\x89PNG\r\n\x1a\n0000", "image/png")


def transcript() -> list[Message]:
    """A conversation that grows by turns and exercises merging: system text, two user turns in a row, text and
    tool calls, tool results (one an error, one with an image), an empty assistant turn."""
    return [
        Message.system("Be terse."),
        Message.user("Hi"),
        Message.user("Look", images=[PNG]),
        Message.assistant("Let me check.", tool_calls=[ToolCallBlock(id="c1", name="get", arguments={"k": 1})]),
        Message.tool_results([ToolResultBlock(tool_call_id="c1", name="get", content="one")]),
        Message.assistant(tool_calls=[ToolCallBlock(id="c2", name="get", arguments={"k": 2}),
                                      ToolCallBlock(id="c3", name="bad", arguments={})]),
        Message.tool_results([ToolResultBlock(tool_call_id="c2", name="get", content=[TextBlock(text="two"), PNG]),
                              ToolResultBlock(tool_call_id="c3", name="bad", content="boom", is_error=True)]),
        Message.assistant(""),
        Message.user("Thanks"),
        Message.assistant("Done."),
    ]


def requests(client: Any, messages: list[Message]) -> Iterator[Request]:
    """The requests of a growing transcript: every prefix with a user message, as a tool loop sends them."""
    for n in range(2, len(messages) + 1):
        yield client.build_request(messages[:n], tools=[{"name": "get", "input_schema": {"type": "object"}}])


def counting(convert: Callable[[Message], Any], seen: list[Message]) -> Callable[[Message], Any]:
    def wrapper(message: Message) -> Any:
        seen.append(message)
        return convert(message)

    return wrapper


BUILDERS: dict[str, tuple[Callable[[], Any], Callable[[Any, Request], Any], Callable[[Any, Request], Any]]] = {
    # kind: (client, cached params, plain params)
    "anthropic": (
        lambda: AnthropicClient("claude-test", api_key="k"),
        lambda c, r: anthropic_adapter.build_params(r, caching=True, cache=c._converted),
        lambda c, r: anthropic_adapter.build_params(r, caching=True),
    ),
    "bedrock": (
        lambda: BedrockClient("anthropic.claude-test", region="us-east-1", caching=True),
        lambda c, r: bedrock_adapter.build_params(r, caching=True, cache=c._converted),
        lambda c, r: bedrock_adapter.build_params(r, caching=True),
    ),
    "openai-chat": (
        lambda: OpenAIClient("gpt-test", api_key="k"),
        lambda c, r: c.build_params(r, stream=False),
        lambda c, r: {**c.build_params(r, stream=False), "messages": openai_adapter.chat_messages(r)},
    ),
    "openai-responses": (
        lambda: OpenAIClient("gpt-test", api_key="k", api="responses"),
        lambda c, r: c.build_params(r, stream=False),
        lambda c, r: {**c.build_params(r, stream=False), "input": openai_adapter.responses_input(r)},
    ),
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_cached_conversion_sends_what_the_plain_one_sends_and_converts_each_message_once(kind: str) -> None:
    make, cached, plain = BUILDERS[kind]
    client = make()
    seen: list[Message] = []
    attribute = {"openai-chat": "_chat_items", "openai-responses": "_responses_items"}.get(kind, "_converted")
    convert = getattr(client, attribute)._convert
    setattr(client, attribute, ConvertedMessages(counting(convert, seen)))
    messages = transcript()
    before = [m.model_dump() for m in messages]
    sent: list[tuple[Any, Any]] = []
    for request in requests(client, messages):
        params = cached(client, request)
        assert params == plain(client, request)
        sent.append((params, copy.deepcopy(params)))
        assert params == cached(client, request)  # the same request again: from the cache, still the same
    # every message converted once (the first request's two messages included), whatever the number of calls
    assert sorted(map(id, seen)) == sorted(map(id, messages))
    # nothing sent earlier was changed by a later call (shared dicts are never mutated), nor the caller's messages
    assert all(params == snapshot for params, snapshot in sent)
    assert [m.model_dump() for m in messages] == before


def test_a_request_that_is_not_the_previous_one_continued_is_converted_right() -> None:
    client = AnthropicClient("claude-test", api_key="k")
    messages = transcript()
    other = [Message.user("Other"), Message.assistant("Yes."), Message.user("And?")]
    for request in [*requests(client, messages), *requests(client, other), *requests(client, messages[:5])]:
        assert (anthropic_adapter.build_params(request, caching=True, cache=client._converted)
                == anthropic_adapter.build_params(request, caching=True))


def test_the_cache_drops_a_message_with_its_last_reference() -> None:
    cache: ConvertedMessages[Any] = ConvertedMessages(lambda m: m.text)
    messages = [Message.user(f"m{i}") for i in range(5)]
    assert cache(messages) == ["m0", "m1", "m2", "m3", "m4"]
    assert len(cache) == 5
    del messages
    gc.collect()
    assert len(cache) == 0


def test_build_reuses_the_previous_result_only_for_the_same_messages() -> None:
    seen: list[Message] = []
    cache: ConvertedMessages[Any] = ConvertedMessages(counting(lambda m: [m.text], seen))
    a, b, c = Message.user("a"), Message.assistant("b"), Message.user("c")
    assert cache.build([a, b], extend) == ["a", "b"]
    first = cache.build([a, b, c], extend)
    assert first == ["a", "b", "c"] and len(seen) == 3
    first.append("changed by the caller")  # the caller owns the returned list
    assert cache.build([a, b, c], extend) == ["a", "b", "c"]
    assert cache.build([c, a], extend) == ["c", "a"] and len(seen) == 3


def test_merged_turns_are_new_dicts() -> None:
    cache: ConvertedMessages[Any] = ConvertedMessages(anthropic_adapter.message_param)
    one, two = Message.user("one"), Message.user("two")
    merged = cache.build([one, two], merge_role)
    assert merged == [{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]
    assert cache.build([one, two, Message.assistant("x")], merge_role)[0] == merged[0]
    assert cache([one])[0] == {"role": "user", "content": [{"type": "text", "text": "one"}]}


def test_new_breakpoints_are_placed_as_by_the_general_rule_without_touching_shared_messages() -> None:
    client = AnthropicClient("claude-test", api_key="k")
    for request in requests(client, transcript()):
        shared = anthropic_adapter.build_messages(request, client._converted)
        snapshot = copy.deepcopy(shared)
        tools, system = [{"name": "t", "input_schema": {}}], [{"type": "text", "text": "s"}]
        general = (copy.deepcopy(tools), copy.deepcopy(system), copy.deepcopy(shared))
        fresh = (tools, system, list(shared))
        assert place_new_breakpoints(*fresh) == place_breakpoints(*general)
        assert fresh == general
        assert shared == snapshot  # the copies were marked, not the cached dicts


# --- spans ---------------------------------------------------------------------------------------------------


class FakeAnthropicSDK:
    """``messages.create`` answering a text reply without any I/O."""

    def __init__(self) -> None:
        from anthropic.types import Message as WireMessage

        self.reply = WireMessage.model_validate({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 2}})
        self.messages = self

    async def create(self, **params: Any) -> Any:
        return self.reply


async def test_spans_appear_once_a_tracer_provider_is_configured_after_the_client_was_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # no provider configured (restored afterwards)
    monkeypatch.setattr(telemetry, "_tracer", trace.ProxyTracer("flowmas.llm"))  # what get_tracer hands out then
    client = AnthropicClient("claude-test", api_key="k")
    fake = FakeAnthropicSDK()
    monkeypatch.setattr(client, "_sdk", lambda: fake)
    assert (await client.complete("Hi")).text == "hello"
    assert telemetry.active() is None  # no provider: no span is made at all

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)  # what trace.set_tracer_provider sets
    assert telemetry.active() is not None
    await client.complete("Hi")
    await client.tool_chain("Hi", [Tool.from_function(lambda: "x", name="noop")])
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["chat claude-test", "chat claude-test", "invoke_agent tool_chain"]
    attributes = dict(exporter.get_finished_spans()[0].attributes or {})
    assert attributes["gen_ai.usage.output_tokens"] == 2 and attributes["gen_ai.system"] == "anthropic"


def test_a_noop_tracer_makes_no_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    monkeypatch.setattr(telemetry, "_tracer", trace.NoOpTracer())
    assert telemetry.active() is None
    with telemetry.span("x", {}) as current:
        assert current is None
    monkeypatch.setattr(telemetry, "_tracer", None)  # opentelemetry not installed
    assert telemetry.active() is None


# --- unvalidated construction --------------------------------------------------------------------------------


def test_fast_constructors_equal_validated_models() -> None:
    assert Message.user("hi") == Message(role="user", content=[TextBlock(text="hi")])
    assert Message.user("") == Message(role="user", content=[])
    assert Message.user("hi").model_fields_set == Message(role="user", content=[]).model_fields_set
    results = [ToolResultBlock(tool_call_id="a", content="x")]
    assert Message.tool_results(results) == Message(role="tool", content=results)
    assert text_block("t") == TextBlock(text="t")
    assert tool_call_block("i", "n", {"a": 1}) == ToolCallBlock(id="i", name="n", arguments={"a": 1})
    assert tool_result_block("i", "n", "out", True) == ToolResultBlock(tool_call_id="i", name="n", content="out",
                                                                       is_error=True)
    assert usage(1, 2, 3, 4) == Usage(input_tokens=1, output_tokens=2, cache_read_input_tokens=3,
                                      cache_write_input_tokens=4)
    assert Usage(input_tokens=1) + Usage(output_tokens=2) == Usage(input_tokens=1, output_tokens=2)
    made = response([TextBlock(text="a")], "end_turn", "stop", usage(1, 1), "m", "id", "p", 0.5)
    assert made == Response(content=[TextBlock(text="a")], stop_reason="end_turn", raw_stop_reason="stop",
                            usage=Usage(input_tokens=1, output_tokens=1), model="m", id="id", provider="p",
                            latency=0.5)
    assert made.message == Message(role="assistant", content=[TextBlock(text="a")])
    arguments = {"a": 1}
    assert tool_call_block("i", "n", arguments).arguments is not arguments  # copied, as validation copies


def test_values_of_other_types_are_validated_as_before() -> None:
    assert usage("3", 4) == Usage(input_tokens=3, output_tokens=4)  # coerced
    with pytest.raises(ValidationError):
        usage("many", 4)
    with pytest.raises(ValidationError):
        tool_call_block(7, "n", {})
    with pytest.raises(ValidationError):
        response([], "end_turn", 12, Usage(), "m", None, "p", 0.0)
    with pytest.raises(ValidationError):
        text_block(None)  # type: ignore[arg-type]


# --- Bedrock's stream readers --------------------------------------------------------------------------------


def test_bedrock_reader_threads_are_reused_and_leave_when_idle() -> None:
    readers = bedrock_adapter._Readers(idle_timeout=0.2)
    ran: list[int] = []
    done = threading.Event()

    def job() -> None:
        ran.append(threading.get_ident())
        done.set()

    for _ in range(3):
        done.clear()
        readers.run(job)
        assert done.wait(5)
        deadline = time.monotonic() + 5
        while readers._idle == 0 and time.monotonic() < deadline:  # the thread is back, waiting
            time.sleep(0.001)
    assert len(ran) == 3 and len(set(ran)) == 1
    deadline = time.monotonic() + 5
    while readers._idle and time.monotonic() < deadline:
        time.sleep(0.01)
    assert readers._idle == 0
    while any(t.ident == ran[0] for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)  # the idle thread has left
    assert not any(t.ident == ran[0] for t in threading.enumerate())


def test_bedrock_reader_threads_run_jobs_side_by_side() -> None:
    readers = bedrock_adapter._Readers(idle_timeout=0.2)
    barrier = threading.Barrier(3, timeout=5)
    for _ in range(3):
        readers.run(barrier.wait)  # would time out unless all three run at once


async def test_bedrock_stream_abandoned_after_its_first_event_closes_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = threading.Event()

    class Stream:
        def __iter__(self) -> Iterator[dict[str, Any]]:
            yield {"messageStart": {"role": "assistant"}}
            yield {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "hi"}}}
            raise AssertionError("read past what the consumer asked for")

        def close(self) -> None:
            closed.set()

    class Runtime:
        def converse_stream(self, **params: Any) -> dict[str, Any]:
            return {"ResponseMetadata": {"RequestId": "r1"}, "stream": Stream()}

    client = BedrockClient("anthropic.claude-test", region="us-east-1")
    monkeypatch.setattr(client, "_sdk", lambda: Runtime())
    events = client.stream("Hi")
    first = await anext(events)
    assert first.type == "message_start" and first.id == "r1"
    await events.aclose()
    assert closed.wait(5)
    await asyncio.sleep(0)
