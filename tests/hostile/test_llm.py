"""Hostile inputs for the inference clients: servers that break their wire protocol, huge and invalid tool
arguments, tools that raise or return junk, credentials with odd bytes or echoed back, absurd parameters.

The lying server here answers every POST with scripted raw bytes (status, headers, body or SSE chunks), so the
real SDKs meet malformed JSON, malformed SSE and broken event-stream frames over a real socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from flowmas.errors import (
    ConfigurationError,
    LLMConnectionError,
    LLMHTTPError,
    LLMProtocolError,
    TransientLLMHTTPError,
)
from flowmas.llm import BaseClient, RetryPolicy, StopToolChain, Tool, ToolCallDelta
from tests.llm.test_contract import KINDS, Sleeps, make_client
from tests.servers.base import ThreadedServer, TrackedHandler
from tests.servers.llm import Fault, LLMServer, Reply, ToolCall, event_stream_message

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Raw:
    """One scripted raw answer: ``chunks`` are sent chunked (SSE, event stream); ``body`` with a length."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)


class _RawHandler(TrackedHandler["LyingServer"]):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        owner = self.owner
        with owner._lock:
            owner.requests.append((self.path, body))
            answer = owner.queue.popleft() if owner.queue else Raw(body=b"{}")
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.chunks:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in answer.chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
        self.wfile.flush()


class LyingServer(ThreadedServer[Any]):
    handler = _RawHandler
    quiet_disconnects = True

    def __init__(self) -> None:
        super().__init__()
        self.queue: deque[Raw] = deque()

    def _reset_locked(self) -> None:
        self.queue.clear()


@pytest.fixture(scope="module")
def _liar() -> Iterator[LyingServer]:
    with LyingServer() as server:
        yield server


@pytest.fixture
def liar(_liar: LyingServer) -> Iterator[LyingServer]:
    _liar.reset()
    yield _liar
    _liar.reset()


@pytest.fixture
async def clients(liar: LyingServer) -> AsyncIterator[dict[str, BaseClient[Any]]]:
    made = {kind: make_client(kind, liar.url) for kind in KINDS}
    yield made
    for c in made.values():
        await c.aclose()


def sse(*events: tuple[str | None, Any]) -> list[bytes]:
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out.append(((f"event: {name}\n" if name else "") + f"data: {text}\n\n").encode())
    return out


_ANTHROPIC_START = ("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test", "content": [],
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}})


# ------------------------------------------------------------------------------- broken wire protocols


@pytest.mark.parametrize("kind", ["anthropic", "openai-chat", "openai-responses", "vertex"])
async def test_malformed_json_answer_is_a_protocol_error(
    clients: dict[str, BaseClient[Any]], liar: LyingServer, kind: str
) -> None:
    liar.queue.append(Raw(body=b'{"id": "x", "content": [tru'))
    with pytest.raises(LLMProtocolError):
        await clients[kind].complete("Hi")
    assert len(liar.requests) == 1  # not retried


@pytest.mark.parametrize("kind", ["openai-chat", "openai-responses"])
async def test_html_instead_of_json_is_a_protocol_error(
    clients: dict[str, BaseClient[Any]], liar: LyingServer, kind: str
) -> None:
    liar.queue.append(Raw(content_type="text/html", body=b"<html>gateway says hi</html>"))
    with pytest.raises(LLMProtocolError):
        await clients[kind].complete("Hi")


async def test_malformed_sse_is_a_protocol_error(clients: dict[str, BaseClient[Any]], liar: LyingServer) -> None:
    liar.queue.append(Raw(content_type="text/event-stream", chunks=sse(
        _ANTHROPIC_START, ("content_block_delta", "{not json"))))
    with pytest.raises(LLMProtocolError):
        [e async for e in clients["anthropic"].stream("Hi")]
    liar.queue.append(Raw(content_type="text/event-stream", chunks=sse((None, "{\"id\": \"c\", \"choices\": [")) ))
    with pytest.raises(LLMProtocolError):
        [e async for e in clients["openai-chat"].stream("Hi")]


async def test_sse_with_wrong_shapes_is_a_protocol_error(
    clients: dict[str, BaseClient[Any]], liar: LyingServer
) -> None:
    liar.queue.append(Raw(content_type="text/event-stream", chunks=sse(
        _ANTHROPIC_START, ("content_block_delta", {"type": "content_block_delta", "index": "zero"}))))
    with pytest.raises(LLMProtocolError):
        [e async for e in clients["anthropic"].stream("Hi")]


async def test_error_event_inside_a_stream_is_mapped(clients: dict[str, BaseClient[Any]], liar: LyingServer) -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    for _ in range(4):
        liar.queue.append(Raw(content_type="text/event-stream", chunks=sse(_ANTHROPIC_START, ("error", overloaded))))
    with pytest.raises(TransientLLMHTTPError) as caught:
        [e async for e in clients["anthropic"].stream("Hi")]
    assert caught.value.status == 529 and "Overloaded" in str(caught.value)
    invalid = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad field"}}
    liar.reset()
    liar.queue.append(Raw(content_type="text/event-stream", chunks=sse(("error", invalid))))
    with pytest.raises(LLMHTTPError) as caught_400:
        [e async for e in clients["anthropic"].stream("Hi")]
    assert caught_400.value.status == 400 and not isinstance(caught_400.value, TransientLLMHTTPError)
    assert len(liar.requests) == 1


async def test_bedrock_broken_event_stream_frames(clients: dict[str, BaseClient[Any]], liar: LyingServer) -> None:
    good = event_stream_message({":event-type": "messageStart", ":message-type": "event",
                                 ":content-type": "application/json"}, b'{"role": "assistant"}')
    broken = bytearray(good)
    broken[-1] ^= 0xFF  # the message CRC no longer matches
    liar.queue.append(Raw(content_type="application/vnd.amazon.eventstream", chunks=[good, bytes(broken)]))
    with pytest.raises(LLMProtocolError):
        [e async for e in clients["bedrock"].stream("Hi")]
    # botocore hands a cut (or malformed) Converse body over as a partial answer without raising: flowmas
    # cannot tell the two apart and treats it as a cut connection (transient: retried, then raised)
    liar.reset()
    liar.queue.extend([Raw(body=b"{\"output\": {\"message\": ")] * 4)
    with pytest.raises(LLMConnectionError):
        await clients["bedrock"].complete("Hi")
    assert len(liar.requests) == 4


async def test_invalid_tool_arguments_from_the_model_become_an_error_result(
    clients: dict[str, BaseClient[Any]], liar: LyingServer
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "echo", "arguments": "{\"text\": \"unterminated"}}
    first = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-test", "choices": [
        {"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None,
                                                                 "tool_calls": [call]}}]}
    second = {"id": "c2", "object": "chat.completion", "created": 1, "model": "gpt-test", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "I see."}}]}
    liar.queue.extend([Raw(body=json.dumps(first).encode()), Raw(body=json.dumps(second).encode())])
    ran: list[str] = []

    def echo(text: str) -> str:
        """Echo."""
        ran.append(text)
        return text

    result = await clients["openai-chat"].tool_chain("Hi", [echo])
    assert result.text == "I see." and ran == []
    sent = json.loads(liar.requests[1][1])
    assistant = next(m for m in sent["messages"] if m["role"] == "assistant")
    assert assistant["tool_calls"][0]["function"]["arguments"] == "{\"text\": \"unterminated"  # sent back as it was
    tool_message = next(m for m in sent["messages"] if m["role"] == "tool")
    assert "not a JSON object" in tool_message["content"]


# ------------------------------------------------------------------------------------- tools and sizes


@pytest.mark.parametrize("kind", KINDS)
async def test_huge_tool_arguments_stream_and_parse(llm_server: LLMServer, kind: str) -> None:
    big = {"text": "lorem ipsum " * 150_000, "items": list(range(5_000))}  # ~1.8 MB of JSON
    llm_server.enqueue(Reply(tool_calls=[ToolCall("store", big)], chunks=500), Reply(text="stored"))
    client = make_client(kind, llm_server.url)
    got: list[int] = []

    def store(text: str, items: list[int]) -> dict[str, int]:
        """Store."""
        got.append(len(text))
        return {"chars": len(text), "items": len(items)}

    deltas = 0

    def count(event: Any) -> None:
        nonlocal deltas
        deltas += isinstance(event, ToolCallDelta)

    started = time.perf_counter()
    try:
        result = await client.tool_chain("store this", [store], middlewares=[count])
    finally:
        await client.aclose()
    assert result.text == "stored" and got == [len(big["text"])]
    assert deltas >= 100 and time.perf_counter() - started < 15


class Evil(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


async def test_tools_raising_and_returning_junk(llm_server: LLMServer) -> None:
    circular: dict[str, Any] = {}
    circular["self"] = circular

    def evil() -> None:
        """Raises an exception whose str() raises."""
        raise Evil()

    def junk() -> Any:
        """Returns things JSON cannot say."""
        return {"nan": math.nan, "bytes": b"\xff\xfe", "set": {1}, "obj": object(), "circle": circular}

    async def cancelled() -> None:
        """Raises CancelledError-like control flow (StopAsyncIteration ends the chain, Asimov's signal)."""
        raise StopAsyncIteration("bye")

    llm_server.enqueue(
        Reply(tool_calls=[ToolCall("evil", {}), ToolCall("junk", {})]),
        Reply(tool_calls=[ToolCall("cancelled", {})]),
        Reply(text="never asked"),
    )
    client = make_client("anthropic", llm_server.url)
    try:
        result = await client.tool_chain("go", [evil, junk, cancelled])
    finally:
        await client.aclose()
    assert result.stopped_by_tool and result.iterations == 2 and llm_server.pending == 1
    first_results = result.messages[2].content
    assert first_results[0].is_error and "Evil" in first_results[0].text  # type: ignore[union-attr]
    assert isinstance(first_results[1].content, str) and not first_results[1].is_error  # type: ignore[union-attr]
    assert result.messages[-1].content[0].text == "bye"  # type: ignore[union-attr]


async def test_require_tool_call_nudges_and_hits_the_limit(llm_server: LLMServer) -> None:
    from flowmas.errors import ToolChainLimitError
    from flowmas.llm import NUDGE

    llm_server.enqueue(Reply(text="I am done (not really)."), Reply(text="Still talking."), Reply(text="Hm."))
    client = make_client("openai-chat", llm_server.url)
    try:
        with pytest.raises(ToolChainLimitError) as caught:
            await client.tool_chain("go", [Tool.from_function(_finish)], require_tool_call=True, max_iterations=3)
    finally:
        await client.aclose()
    result = caught.value.result
    assert result is not None and result.iterations == 3 and result.usage.output_tokens == 15
    assert [m.text for m in result.messages if m.role == "user"][1:] == [NUDGE] * 3


def _finish(summary: str) -> None:
    """End the task."""
    raise StopToolChain(summary)


# -------------------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("key", ["sk-ab\ncd", "sk-\x00nul", "sk-ünï", " sk-space", "sk-tab\t"])
async def test_api_keys_with_odd_bytes_are_refused_without_echo(key: str) -> None:
    from flowmas.llm import AnthropicClient, OpenAIClient

    for cls in (AnthropicClient, OpenAIClient):
        with pytest.raises(ConfigurationError) as caught:
            cls("m", api_key=key)
        assert key not in str(caught.value) and key.strip() not in str(caught.value)


@pytest.mark.parametrize("kind", ["anthropic", "openai-chat"])
async def test_a_key_the_server_echoes_is_never_in_errors_or_logs(
    llm_server: LLMServer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    from flowmas.llm import AnthropicClient, OpenAIClient

    secret = "sk-live-0123456789abcdef"
    llm_server.enqueue(Fault(503, message=f"upstream rejected {secret}"), Fault(401, message=f"Bad key {secret}"))
    retry = RetryPolicy(initial_delay=0.0, sleep=Sleeps())
    client: BaseClient[Any] = (
        AnthropicClient("m", api_key=secret, base_url=llm_server.url, retry=retry) if kind == "anthropic"
        else OpenAIClient("m", api_key=secret, base_url=llm_server.url + "/v1", retry=retry))
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(LLMHTTPError) as caught:
            await client.complete("Hi")
    finally:
        await client.aclose()
    err = caught.value
    assert err.status == 401
    for text in (str(err), repr(err), err.provider_message or "", repr(client), caplog.text):
        assert secret not in text
    assert "***" in str(err)


# --------------------------------------------------------------------------- absurd parameters, no request


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [
    {"max_tokens": 0}, {"max_tokens": -5}, {"max_tokens": 10**12}, {"max_tokens": True}, {"max_tokens": 1.5},
    {"temperature": math.nan}, {"temperature": math.inf}, {"temperature": -0.1}, {"temperature": 7},
    {"top_p": 1.5}, {"top_p": "high"}, {"stop": [""]}, {"timeout": -1}, {"timeout": math.nan},
    {"tool_choice": "nonexistent_tool"}, {"tool_choice": ""}, {"tool_choice": "any", "tools": []},
    {"messages": []}, {"messages": [{"role": "system", "content": "only system"}]},
    {"messages": [{"role": "robot", "content": "?"}]},
])
async def test_absurd_parameters_fail_before_any_request(llm_server: LLMServer, kind: str, bad: dict[str, Any]) -> None:
    client = make_client(kind, llm_server.url)
    options = dict(bad)
    messages = options.pop("messages", "Hi")
    options.setdefault("tools", [Tool.from_function(_finish).spec])
    try:
        with pytest.raises(ConfigurationError) as caught:
            await client.complete(messages, **options)
        with pytest.raises(ConfigurationError):
            [e async for e in client.stream(messages, **options)]
    finally:
        await client.aclose()
    assert str(caught.value)
    assert llm_server.requests == []


async def test_absurd_client_and_chain_settings(llm_server: LLMServer) -> None:
    from flowmas.llm import AnthropicClient, OpenAIClient

    with pytest.raises(ConfigurationError):
        AnthropicClient("m", max_tokens=0)
    with pytest.raises(ConfigurationError):
        AnthropicClient("", api_key="k")
    with pytest.raises(ConfigurationError):
        OpenAIClient("m", api="completions")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RetryPolicy(max_attempts=0)
    client = make_client("openai-responses", llm_server.url)
    try:
        with pytest.raises(ConfigurationError, match="stop"):
            await client.complete("Hi", stop=["END"])
        with pytest.raises(ConfigurationError):
            await client.tool_chain("Hi", [_finish], max_iterations=0)
        with pytest.raises(ConfigurationError):
            await client.tool_chain("Hi", [_finish, _finish])
    finally:
        await client.aclose()
    assert llm_server.requests == []


async def test_bedrock_tool_choice_none_with_tool_history_is_refused(llm_server: LLMServer) -> None:
    from flowmas.llm import Message, ToolCallBlock, ToolResultBlock

    client = make_client("bedrock", llm_server.url)
    history = [Message.user("x"), Message.assistant(tool_calls=[ToolCallBlock(id="1", name="_finish")]),
               Message.tool_results([ToolResultBlock(tool_call_id="1", content="ok")])]
    try:
        with pytest.raises(ConfigurationError, match="none"):
            await client.complete(history, tools=[Tool.from_function(_finish).spec], tool_choice="none")
    finally:
        await client.aclose()
    assert llm_server.requests == []


async def test_a_slow_server_times_out_as_transient(llm_server: LLMServer) -> None:
    from flowmas.errors import LLMTimeoutError

    llm_server.enqueue(Reply(text="late", delay=1.0), Reply(text="late", delay=1.0))
    for kind in ("anthropic", "openai-chat"):
        client = make_client(kind, llm_server.url, retry=RetryPolicy(max_attempts=1))
        try:
            with pytest.raises(LLMTimeoutError):
                await client.complete("Hi", timeout=0.2)
        finally:
            await client.aclose()
    await asyncio.sleep(0)


async def test_missing_credentials_are_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowmas.llm import AnthropicClient, OpenAIClient

    for var in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    for client in (OpenAIClient("m"), AnthropicClient("m", base_url="http://127.0.0.1:9")):
        try:
            with pytest.raises(ConfigurationError, match=r"(?i)credentials"):
                await client.complete("Hi")
        finally:
            await client.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_connection_is_transient_and_retried(kind: str) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    sleeps = Sleeps()
    client = make_client(kind, url, sleeps, retry=RetryPolicy(max_attempts=3, initial_delay=0.001, sleep=sleeps))
    try:
        with pytest.raises(LLMConnectionError):
            await client.complete("Hi")
    finally:
        await client.aclose()
    assert len(sleeps.delays) == 2
