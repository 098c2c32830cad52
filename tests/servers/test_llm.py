"""The LLM wire server against the official SDKs: anthropic, openai (Chat and Responses), boto3 bedrock-runtime
and AnthropicVertex, over real sockets on 127.0.0.1; plus the session's socket guard."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import anthropic
import boto3
import botocore.exceptions
import httpx
import httpx2
import openai
import pytest
import urllib3.exceptions
from botocore.config import Config

from tests.servers.llm import Fault, LLMServer, Reply, ToolCall, Usage, event_stream_message

USER: Any = [{"role": "user", "content": "hi"}]
BEDROCK_USER: Any = [{"role": "user", "content": [{"text": "hi"}]}]
TOOL = ToolCall("get_weather", {"city": "Paris", "days": 3, "units": "metric"})


@pytest.fixture(scope="module")
def claude(_llm_server: LLMServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=_llm_server.url, api_key="test-key", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def vertex(_llm_server: LLMServer) -> Iterator[anthropic.AnthropicVertex]:
    with anthropic.AnthropicVertex(region="us-east5", project_id="proj-1", access_token="vertex-token",
                                   base_url=_llm_server.url + "/v1", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def gpt(_llm_server: LLMServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=_llm_server.url + "/v1", api_key="test-key", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def bedrock(_llm_server: LLMServer) -> Any:
    return boto3.client("bedrock-runtime", endpoint_url=_llm_server.url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing-secret",
                        config=Config(retries={"total_max_attempts": 1}))


# ----------------------------------------------------------------------------------------------- scripting


def test_fifo_is_shared_by_all_protocols_and_defaults_to_ok(
    llm_server: LLMServer, claude: anthropic.Anthropic, gpt: openai.OpenAI, bedrock: Any
) -> None:
    llm_server.enqueue(Reply(text="first"), Reply(text="second"))
    assert claude.messages.create(model="m", max_tokens=5, messages=USER).content[0].text == "first"
    assert gpt.chat.completions.create(model="m", messages=USER).choices[0].message.content == "second"
    out = bedrock.converse(modelId="m", messages=BEDROCK_USER)
    assert out["output"]["message"]["content"] == [{"text": "ok"}]
    assert [r.protocol for r in llm_server.requests] == ["anthropic", "openai-chat", "bedrock"]
    llm_server.enqueue(Reply(text="dropped by reset"))
    llm_server.reset()
    assert llm_server.pending == 0 and llm_server.requests == []


def test_unknown_path_is_404_and_recorded(llm_server: LLMServer) -> None:
    response = httpx.post(llm_server.url + "/v2/nothing", json={})
    assert response.status_code == 404
    assert llm_server.requests[0].protocol is None


def test_event_stream_framing_decodes_with_botocore() -> None:
    from botocore.eventstream import EventStreamBuffer

    buffer = EventStreamBuffer()
    buffer.add_data(event_stream_message({":event-type": "messageStop"}, b'{"stopReason":"end_turn"}'))
    (message,) = list(buffer)
    assert message.headers[":event-type"] == "messageStop" and message.payload == b'{"stopReason":"end_turn"}'


# ----------------------------------------------------------------------------------------------- Anthropic


def test_anthropic_message_usage_and_request_record(llm_server: LLMServer, claude: anthropic.Anthropic) -> None:
    llm_server.enqueue(Reply(text="Hello!", usage=Usage(input=12, output=7, cache_read=100, cache_write=50)))
    message = claude.messages.create(model="claude-test", max_tokens=64, messages=USER)
    assert message.content[0].type == "text" and message.content[0].text == "Hello!"
    assert message.stop_reason == "end_turn" and message.model == "claude-test"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (12, 7)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (100, 50)
    (request,) = llm_server.requests
    assert (request.protocol, request.path, request.model, request.stream) == ("anthropic", "/v1/messages",
                                                                               "claude-test", False)
    assert request.auth == "bearer" and request.headers["authorization"] == "Bearer test-key"
    assert request.json["messages"] == USER and request.json["max_tokens"] == 64


def test_anthropic_accepts_x_api_key_and_rejects_no_key(llm_server: LLMServer) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": USER}
    ok = httpx.post(llm_server.url + "/v1/messages", json=body, headers={"x-api-key": "k"})
    assert ok.status_code == 200 and ok.headers["request-id"].startswith("req_")
    assert llm_server.requests[-1].auth == "x-api-key"
    denied = httpx.post(llm_server.url + "/v1/messages", json=body)
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"


def test_anthropic_stream_text(llm_server: LLMServer, claude: anthropic.Anthropic) -> None:
    llm_server.enqueue(Reply(text="The quick brown fox", chunks=4))
    with claude.messages.stream(model="m", max_tokens=64, messages=USER) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 4 and "".join(pieces) == "The quick brown fox"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5
    assert llm_server.requests[0].stream


def test_anthropic_stream_tool_use_in_pieces(llm_server: LLMServer, claude: anthropic.Anthropic) -> None:
    llm_server.enqueue(Reply(text="Let me check.", tool_calls=[TOOL], chunks=3))
    events = list(claude.messages.create(model="m", max_tokens=64, messages=USER, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    partial = [e.delta.partial_json for e in events
               if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert len(partial) == 3 and json.loads("".join(partial)) == TOOL.arguments
    llm_server.enqueue(Reply(tool_calls=[ToolCall("lookup", {"q": "x"}, id="toolu_fixed")]))
    with claude.messages.stream(model="m", max_tokens=64, messages=USER) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    block = final.content[0]
    assert block.type == "tool_use" and (block.id, block.name, block.input) == ("toolu_fixed", "lookup", {"q": "x"})


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        (Fault(429, retry_after=2), anthropic.RateLimitError, "rate limit"),
        (Fault(500), anthropic.InternalServerError, "Internal server error"),
        (Fault(529), anthropic.OverloadedError, "Overloaded"),
        (Fault(400, error_type="context_length_exceeded"), anthropic.BadRequestError, "prompt is too long"),
        (Fault(413), anthropic.ContentTooLargeError, "maximum allowed number of bytes"),
        (Fault(400, message="messages: roles must alternate"), anthropic.BadRequestError, "roles must alternate"),
    ],
)
def test_anthropic_faults(llm_server: LLMServer, claude: anthropic.Anthropic, fault: Fault,
                          error: type[anthropic.APIStatusError], text: str) -> None:
    llm_server.enqueue(fault)
    with pytest.raises(error, match=text) as caught:
        claude.messages.create(model="m", max_tokens=5, messages=USER)
    assert caught.value.status_code == fault.status and caught.value.request_id
    if fault.retry_after is not None:
        assert caught.value.response.headers["retry-after"] == "2"
        assert caught.value.response.headers["retry-after-ms"] == "2000"


def test_anthropic_retry_honours_retry_after(llm_server: LLMServer) -> None:
    llm_server.enqueue(Fault(429, retry_after=0.05), Reply(text="after the wait"))
    with anthropic.Anthropic(base_url=llm_server.url, api_key="k", max_retries=1) as client:
        message = client.messages.create(model="m", max_tokens=5, messages=USER)
    assert message.content[0].text == "after the wait"
    assert len(llm_server.requests) == 2


def test_anthropic_dropped_stream_and_body(llm_server: LLMServer, claude: anthropic.Anthropic) -> None:
    llm_server.enqueue(Fault(drop_after_events=4, reply=Reply(text="never finished", chunks=5)))
    got: list[str] = []
    with pytest.raises(httpx2.RemoteProtocolError), claude.messages.stream(  # the SDK does not wrap it
        model="m", max_tokens=5, messages=USER
    ) as stream:
        got.extend(stream.text_stream)
    assert got == ["nev"]  # message_start, ping, content_block_start, then one delta of five
    llm_server.enqueue(Fault(drop_after_events=0))
    with pytest.raises(anthropic.APIConnectionError):
        claude.messages.create(model="m", max_tokens=5, messages=USER)


def test_anthropic_delay_times_out(llm_server: LLMServer, claude: anthropic.Anthropic) -> None:
    llm_server.enqueue(Reply(text="late", delay=1.0))
    with pytest.raises(anthropic.APITimeoutError):
        claude.with_options(timeout=0.2).messages.create(model="m", max_tokens=5, messages=USER)


# --------------------------------------------------------------------------------------------------- Vertex


def test_vertex_raw_predict_and_stream(llm_server: LLMServer, vertex: anthropic.AnthropicVertex) -> None:
    llm_server.enqueue(Reply(text="from vertex", usage=Usage(cache_read=4)), Reply(text="streamed", tool_calls=[TOOL]))
    message = vertex.messages.create(model="claude-sonnet@20250101", max_tokens=16, messages=USER)
    assert message.content[0].text == "from vertex" and message.usage.cache_read_input_tokens == 4
    with vertex.messages.stream(model="claude-sonnet@20250101", max_tokens=16, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "streamed" and final.content[1].input == TOOL.arguments
    first, second = llm_server.requests
    prefix = "/v1/projects/proj-1/locations/us-east5/publishers/anthropic/models/"
    assert first.path == prefix + "claude-sonnet@20250101:rawPredict"
    assert second.path.endswith(":streamRawPredict") and second.stream
    assert first.protocol == "vertex" and first.model == "claude-sonnet@20250101" and first.auth == "bearer"
    assert "anthropic_version" in first.json and "model" not in first.json


def test_vertex_faults(llm_server: LLMServer, vertex: anthropic.AnthropicVertex) -> None:
    llm_server.enqueue(Fault(429, retry_after=1), Fault(400, error_type="context_length_exceeded"))
    with pytest.raises(anthropic.RateLimitError):
        vertex.messages.create(model="c", max_tokens=5, messages=USER)
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        vertex.messages.create(model="c", max_tokens=5, messages=USER)


# ----------------------------------------------------------------------------------------------- OpenAI Chat


def test_chat_completion_usage_and_tool_calls(llm_server: LLMServer, gpt: openai.OpenAI) -> None:
    llm_server.enqueue(Reply(text="Hi!", usage=Usage(input=20, output=4, cache_read=80)), Reply(tool_calls=[TOOL]))
    completion = gpt.chat.completions.create(model="gpt-test", messages=USER)
    choice = completion.choices[0]
    assert choice.message.content == "Hi!" and choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 100
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 80 and completion.usage.completion_tokens == 4
    called = gpt.chat.completions.create(model="gpt-test", messages=USER).choices[0]
    assert called.finish_reason == "tool_calls" and called.message.tool_calls is not None
    call = called.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == TOOL.arguments
    assert llm_server.requests[0].auth == "bearer" and llm_server.requests[0].path == "/v1/chat/completions"


def test_chat_stream_text_tool_args_and_usage(llm_server: LLMServer, gpt: openai.OpenAI) -> None:
    llm_server.enqueue(Reply(text="abcdef", tool_calls=[TOOL], chunks=3, usage=Usage(cache_read=5)))
    chunks = list(gpt.chat.completions.create(model="m", messages=USER, stream=True,
                                              stream_options={"include_usage": True}))
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content == ["ab", "cd", "ef"]
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id and calls[0].function.name == "get_weather" and calls[0].index == 0
    assert len(calls) == 4 and json.loads("".join(tc.function.arguments or "" for tc in calls)) == TOOL.arguments
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.total_tokens == 20
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 5
    llm_server.enqueue(Reply(text="no usage chunk"))
    plain = list(gpt.chat.completions.create(model="m", messages=USER, stream=True))
    assert all(c.usage is None for c in plain)


def test_chat_stream_helper_accumulates(llm_server: LLMServer, gpt: openai.OpenAI) -> None:
    llm_server.enqueue(Reply(tool_calls=[TOOL, ToolCall("second", {})]))
    with gpt.chat.completions.stream(model="m", messages=USER) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "second"]


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        (Fault(429, retry_after=1.5), openai.RateLimitError, "rate_limit_exceeded"),
        (Fault(500), openai.InternalServerError, None),
        (Fault(400, error_type="context_length_exceeded"), openai.BadRequestError, "context_length_exceeded"),
        (Fault(401), openai.AuthenticationError, "invalid_api_key"),
    ],
)
def test_chat_faults(llm_server: LLMServer, gpt: openai.OpenAI, fault: Fault, error: type[openai.APIStatusError],
                     code: str | None) -> None:
    llm_server.enqueue(fault)
    with pytest.raises(error) as caught:
        gpt.chat.completions.create(model="m", messages=USER)
    assert caught.value.code == code and caught.value.request_id
    if fault.retry_after is not None:
        assert caught.value.response.headers["retry-after-ms"] == "1500"


def test_chat_dropped_stream(llm_server: LLMServer, gpt: openai.OpenAI) -> None:
    llm_server.enqueue(Fault(drop_after_events=2, reply=Reply(text="0123456789", chunks=5)))
    seen: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in gpt.chat.completions.create(model="m", messages=USER, stream=True):
            seen.append(chunk.choices[0].delta.content or "")
    assert seen == ["", "01"]


# ------------------------------------------------------------------------------------------ OpenAI Responses


def test_responses_create(llm_server: LLMServer, gpt: openai.OpenAI) -> None:
    llm_server.enqueue(Reply(text="Sure.", tool_calls=[TOOL], usage=Usage(input=3, output=2, cache_read=7)))
    response = gpt.responses.create(model="gpt-test", input="hi")
    assert response.output_text == "Sure." and response.status == "completed"
    call = response.output[1]
    assert call.type == "function_call" and json.loads(call.arguments) == TOOL.arguments and call.call_id
    assert response.usage is not None and response.usage.input_tokens == 10
    assert response.usage.input_tokens_details.cached_tokens == 7
    assert llm_server.requests[0].protocol == "openai-responses"


def test_responses_stream_events(llm_server: LLMServer, gpt: openai.OpenAI) -> None:
    llm_server.enqueue(Reply(text="abc", tool_calls=[TOOL], chunks=3))
    events = list(gpt.responses.create(model="m", input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["a", "b", "c"]
    args = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(args) == 3 and json.loads("".join(args)) == TOOL.arguments
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 2
    llm_server.enqueue(Reply(text="helper", tool_calls=[TOOL]))
    with gpt.responses.stream(model="m", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "helper" and final.usage is not None and final.usage.output_tokens == 5


def test_responses_faults(llm_server: LLMServer, gpt: openai.OpenAI) -> None:
    llm_server.enqueue(Fault(400, error_type="context_length_exceeded"), Fault(drop_after_events=3))
    with pytest.raises(openai.BadRequestError) as caught:
        gpt.responses.create(model="m", input="hi")
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.APIConnectionError):
        list(gpt.responses.create(model="m", input="hi", stream=True))


# -------------------------------------------------------------------------------------------------- Bedrock


def test_bedrock_converse(llm_server: LLMServer, bedrock: Any) -> None:
    llm_server.enqueue(Reply(text="Checking.", tool_calls=[TOOL], usage=Usage(input=9, output=3, cache_write=2)))
    out = bedrock.converse(modelId="anthropic.claude-3-haiku-20240307-v1:0", messages=BEDROCK_USER)
    content = out["output"]["message"]["content"]
    assert content[0] == {"text": "Checking."}
    assert content[1]["toolUse"]["name"] == "get_weather" and content[1]["toolUse"]["input"] == TOOL.arguments
    assert out["stopReason"] == "tool_use"
    assert out["usage"] == {"inputTokens": 9, "outputTokens": 3, "totalTokens": 14, "cacheReadInputTokens": 0,
                            "cacheWriteInputTokens": 2}
    (request,) = llm_server.requests
    assert request.protocol == "bedrock" and request.model == "anthropic.claude-3-haiku-20240307-v1:0"
    assert request.auth == "sigv4" and request.json["messages"] == BEDROCK_USER and not request.stream


def test_bedrock_converse_stream(llm_server: LLMServer, bedrock: Any) -> None:
    llm_server.enqueue(Reply(text="abcd", tool_calls=[TOOL], chunks=2, usage=Usage(cache_read=1)))
    events = list(bedrock.converse_stream(modelId="m", messages=BEDROCK_USER)["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds == ["messageStart", "contentBlockDelta", "contentBlockDelta", "contentBlockStop",
                     "contentBlockStart", "contentBlockDelta", "contentBlockDelta", "contentBlockStop",
                     "messageStop", "metadata"]
    assert [e["contentBlockDelta"]["delta"].get("text") for e in events[1:3]] == ["ab", "cd"]
    assert events[4]["contentBlockStart"]["start"]["toolUse"]["name"] == "get_weather"
    pieces = [e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events[5:7]]
    assert json.loads("".join(pieces)) == TOOL.arguments
    assert events[8]["messageStop"]["stopReason"] == "tool_use"
    assert events[9]["metadata"]["usage"]["cacheReadInputTokens"] == 1
    assert llm_server.requests[0].stream and llm_server.requests[0].path == "/model/m/converse-stream"


@pytest.mark.parametrize(
    ("fault", "code", "text"),
    [
        (Fault(429, retry_after=1), "ThrottlingException", "Too many requests"),
        (Fault(500), "InternalServerException", "internal error"),
        (Fault(503, error_type="overloaded_error"), "ServiceUnavailableException", "unable to process"),
        (Fault(400, error_type="context_length_exceeded"), "ValidationException", "Input is too long"),
    ],
)
def test_bedrock_faults(llm_server: LLMServer, bedrock: Any, fault: Fault, code: str, text: str) -> None:
    llm_server.enqueue(fault, fault)
    for call in (bedrock.converse, bedrock.converse_stream):
        with pytest.raises(botocore.exceptions.ClientError, match=text) as caught:
            call(modelId="m", messages=BEDROCK_USER)
        assert caught.value.response["Error"]["Code"] == code
        assert isinstance(caught.value, getattr(bedrock.exceptions, code))


def test_bedrock_dropped_stream_and_missing_signature(llm_server: LLMServer, bedrock: Any) -> None:
    llm_server.enqueue(Fault(drop_after_events=2))
    stream = bedrock.converse_stream(modelId="m", messages=BEDROCK_USER)["stream"]
    with pytest.raises(urllib3.exceptions.ProtocolError):  # botocore does not wrap it
        list(stream)
    llm_server.enqueue(Fault(drop_after_events=0))  # a truncated JSON body: botocore returns no output at all
    assert "output" not in bedrock.converse(modelId="m", messages=BEDROCK_USER)
    unsigned = httpx.post(llm_server.url + "/model/m/converse", json={"messages": BEDROCK_USER})
    assert unsigned.status_code == 403


# ---------------------------------------------------------------------------------------------- socket guard


def test_socket_guard_refuses_non_loopback() -> None:
    with pytest.raises(ConnectionRefusedError, match=r"socket guard: .* not 203\.0\.113\.1 \(port 80\)"):
        socket.create_connection(("203.0.113.1", 80), timeout=1)
    with socket.socket(socket.AF_INET6) as sock, pytest.raises(ConnectionRefusedError, match="2001:db8::1"):
        sock.connect(("2001:db8::1", 443))


def test_socket_guard_lets_loopback_through(llm_server: LLMServer) -> None:
    port = int(llm_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=1), socket.create_connection(("localhost", port)):
        pass
