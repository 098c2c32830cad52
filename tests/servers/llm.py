"""Local LLM wire server: the official SDKs (anthropic, openai, boto3 bedrock-runtime, AnthropicVertex) talk
to it over real sockets on 127.0.0.1, each protocol on its own paths of one server.

Scripting is the same for every protocol: ``enqueue(Reply(...), Fault(...), ...)`` fills one FIFO shared by all
protocols; each request consumes one item (an empty queue answers ``Reply(text="ok")``). ``requests`` records
every request (protocol, method, path, headers, JSON body, stream flag, model, auth scheme).

Protocols and routes:

* ``anthropic`` - ``POST /v1/messages``: JSON, or SSE when ``"stream": true`` (``message_start``, ``ping``,
  per block ``content_block_start`` / ``content_block_delta`` (``text_delta``, ``input_json_delta``) /
  ``content_block_stop``, ``message_delta`` (stop_reason, usage), ``message_stop``). Auth: ``x-api-key`` or
  ``Authorization: Bearer`` (anthropic 2.12.0 sends Bearer), recorded as ``auth``. ``request-id`` header.
  Client: ``anthropic.Anthropic(base_url=server.url, api_key=..., max_retries=0)``.
* ``openai-chat`` - ``POST /v1/chat/completions``: JSON, or SSE chunks (``delta.content``, ``delta.tool_calls``
  with index/id/name then argument pieces, a usage chunk when ``stream_options.include_usage``, ``[DONE]``).
* ``openai-responses`` - ``POST /v1/responses``: JSON, or SSE events ``response.created``,
  ``response.in_progress``, ``response.output_item.added``, ``response.content_part.added``,
  ``response.output_text.delta/done``, ``response.content_part.done``,
  ``response.function_call_arguments.delta/done``, ``response.output_item.done``, ``response.completed``.
  Client (both OpenAI protocols): ``openai.OpenAI(base_url=server.url + "/v1", api_key=..., max_retries=0)``.
* ``bedrock`` - ``POST /model/{modelId}/converse`` (JSON) and ``/converse-stream`` (AWS event-stream binary
  frames: prelude CRC32 + message CRC32, ``:event-type`` messageStart, contentBlockStart (tool use only, like
  Bedrock), contentBlockDelta, contentBlockStop, messageStop, metadata). SigV4 is not verified, only an
  ``AWS4-HMAC-SHA256`` Authorization header is required. Client: ``boto3.client("bedrock-runtime",
  endpoint_url=server.url, region_name=..., aws_access_key_id=..., aws_secret_access_key=...,
  config=Config(retries={"total_max_attempts": 1}))`` (botocore retries 429/5xx by default).
* ``vertex`` - ``POST /v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict``
  and ``:streamRawPredict``: the Anthropic body (no ``model``, ``anthropic_version`` required) and answers.
  Client: ``anthropic.AnthropicVertex(region=..., project_id=..., access_token=..., base_url=server.url +
  "/v1", max_retries=0)`` - with ``access_token`` the SDK needs no google-auth.

Usage numbers (``Usage``) are Anthropic-style: ``input`` excludes cached tokens. OpenAI's ``prompt_tokens`` /
``input_tokens`` are ``input + cache_read + cache_write`` with ``cached_tokens = cache_read`` and
``cache_write_tokens = cache_write``; Bedrock's ``inputTokens`` is ``input`` plus ``cacheReadInputTokens`` /
``cacheWriteInputTokens``, ``totalTokens`` the sum of all four.

Stop reasons use Anthropic's words (``end_turn``, ``tool_use``, ``max_tokens``, ``stop_sequence``), derived
when not given (tool calls: ``tool_use``, else ``end_turn``) and mapped per protocol: OpenAI Chat ``stop`` /
``tool_calls`` / ``length``; Responses ``completed``, or ``incomplete`` + ``max_output_tokens`` for
``max_tokens``; Bedrock uses the same words. Other values are passed through.

Faults (``Fault``) answer in each protocol's error shape, so the SDKs raise their typed errors with the
message: Anthropic/Vertex ``{"type": "error", "error": {"type", "message"}}``; OpenAI ``{"error": {"message",
"type", "param", "code"}}``; Bedrock ``x-amzn-ErrorType`` + ``{"message"}``. ``error_type`` (when given) is the
Anthropic error type, the OpenAI ``code``, the Bedrock exception name; ``error_type="context_length_exceeded"``
gives each protocol's real "prompt too long" error (use status 400). ``retry_after`` sets ``retry-after``
(plus ``retry-after-ms`` for Anthropic/OpenAI, which their SDKs prefer). ``drop_after_events=N`` starts a
normal ``200`` answer (of ``Fault.reply`` or the default reply) and cuts the connection after N stream
events (SSE events incl. ``ping``/``[DONE]``, or event-stream messages); on a non-streaming request it cuts
the body half-way. ``delay`` waits before answering (also on ``Reply``, for client timeouts).

Not reproduced: token counting, images/documents, thinking blocks, InvokeModel, SSE ``error`` events mid-stream,
Bedrock mid-stream exceptions, SigV4/Google token verification, model validation.
"""

from __future__ import annotations

import binascii
import itertools
import json
import re
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from tests.servers.base import ThreadedServer, TrackedHandler

__all__ = ["Fault", "LLMServer", "Protocol", "RecordedRequest", "Reply", "ToolCall", "Usage", "event_stream_message"]

Protocol = Literal["anthropic", "openai-chat", "openai-responses", "bedrock", "vertex"]


# ------------------------------------------------------------------------------------------------ scripting


@dataclass
class ToolCall:
    """A tool call the model makes; ``id`` is generated per protocol (``toolu_…``, ``call_…``) when None."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None


@dataclass
class Usage:
    """Token counts; ``input`` excludes cached tokens (Anthropic's convention, mapped per protocol)."""

    input: int = 10
    output: int = 5
    cache_read: int = 0
    cache_write: int = 0


@dataclass
class Reply:
    """One scripted model answer: text and/or tool calls (text first), split into ``chunks`` stream deltas."""

    text: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    stop_reason: str | None = None  # Anthropic words; None: tool_use if tool_calls else end_turn
    usage: Usage = field(default_factory=Usage)
    chunks: int = 3  # text deltas per text block; tool-argument JSON pieces per tool call
    delay: float = 0  # seconds to wait before answering

    @property
    def resolved_stop_reason(self) -> str:
        return self.stop_reason or ("tool_use" if self.tool_calls else "end_turn")


@dataclass
class Fault:
    """One scripted failure: an error status in the protocol's shape, or a connection cut mid-answer."""

    status: int = 500
    retry_after: float | None = None
    message: str = ""  # empty: a realistic default message per protocol
    error_type: str | None = None  # Anthropic error type / OpenAI code / Bedrock exception; None: from status
    drop_after_events: int | None = None  # answer 200 and cut the connection after N stream events
    delay: float = 0
    reply: Reply | None = None  # with drop_after_events: what the cut answer starts to stream


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    protocol: Protocol | None  # None: a path no protocol serves (answered 404)
    method: str
    path: str  # percent-decoded, without the query string
    headers: dict[str, str]  # names lower-cased
    json: Any  # the decoded body, or None when absent or not JSON
    stream: bool
    model: str | None = None  # body "model", or the model in the Bedrock/Vertex path
    auth: Literal["x-api-key", "bearer", "sigv4"] | None = None
    at: float = field(default_factory=time.monotonic)


_DEFAULT_REPLY = Reply(text="ok")


# ----------------------------------------------------------------------------------------------- protocols


class _Drop(Exception):
    """The scripted number of events went out: cut the connection."""


def _split(text: str, n: int) -> list[str]:
    """``text`` in ``n`` (at most ``len(text)``) nearly equal non-empty pieces; ``[""]`` for an empty text."""
    if not text:
        return [""]
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    pieces, at = [], 0
    for i in range(n):
        end = at + size + (1 if i < extra else 0)
        pieces.append(text[at:end])
        at = end
    return pieces


def _args_json(call: ToolCall) -> str:
    return json.dumps(call.arguments, separators=(",", ":"))


def _retry_after_value(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}
_ANTHROPIC_MESSAGES = {"invalid_request_error": "Invalid request", "authentication_error": "invalid x-api-key",
                       "permission_error": "Your API key does not have permission to use the specified resource.",
                       "not_found_error": "The requested resource could not be found.",
                       "request_too_large": "Request exceeds the maximum allowed number of bytes.",
                       "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
                       "api_error": "Internal server error", "overloaded_error": "Overloaded",
                       "timeout_error": "Request timed out"}
_OPENAI_TYPES = {400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
                 403: ("invalid_request_error", "unsupported_country_region_territory"),
                 404: ("invalid_request_error", "model_not_found"), 429: ("requests", "rate_limit_exceeded")}
_BEDROCK_TYPES = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
                  408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
                  500: "InternalServerException", 503: "ServiceUnavailableException"}
_CONTEXT = "context_length_exceeded"


def _anthropic_error(fault: Fault, request_id: str) -> dict[str, Any]:
    if fault.error_type == _CONTEXT:
        kind, message = "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"
    else:
        kind = fault.error_type or _ANTHROPIC_TYPES.get(fault.status, "api_error")
        message = _ANTHROPIC_MESSAGES.get(kind, "Error")
    return {"type": "error", "error": {"type": kind, "message": fault.message or message}, "request_id": request_id}


def _openai_error(fault: Fault) -> dict[str, Any]:
    code: str | None
    if fault.error_type == _CONTEXT:
        kind, code, param = "invalid_request_error", _CONTEXT, "messages"
        message = ("This model's maximum context length is 128000 tokens. However, your messages resulted in "
                   "130000 tokens. Please reduce the length of the messages.")
    else:
        kind, code = _OPENAI_TYPES.get(fault.status, ("server_error", None) if fault.status >= 500
                                       else ("invalid_request_error", None))
        code, param = fault.error_type or code, None
        message = {429: "Rate limit reached for requests", 401: "Incorrect API key provided"}.get(
            fault.status, "The server had an error while processing your request." if fault.status >= 500
            else "Invalid request")
    return {"error": {"message": fault.message or message, "type": kind, "param": param, "code": code}}


def _bedrock_error(fault: Fault) -> tuple[str, str]:
    if fault.error_type == _CONTEXT:
        return "ValidationException", fault.message or "Input is too long for requested model."
    if fault.error_type == "overloaded_error":
        return "ServiceUnavailableException", fault.message or "Bedrock is unable to process your request."
    name = fault.error_type or _BEDROCK_TYPES.get(fault.status, "InternalServerException")
    defaults = {"ThrottlingException": "Too many requests, please wait before trying again.",
                "ValidationException": "Malformed input request, please reformat your input and try again."}
    return name, fault.message or defaults.get(name, "The server encountered an internal error.")


# -- AWS event stream (application/vnd.amazon.eventstream)


def event_stream_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (total and headers length, CRC32), string headers, payload, CRC32."""
    encoded = b"".join(
        struct.pack("!B", len(name.encode())) + name.encode() + struct.pack("!BH", 7, len(value.encode()))
        + value.encode()
        for name, value in headers.items()
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack("!I", binascii.crc32(message))


def _bedrock_event(kind: str, payload: dict[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return event_stream_message(headers, json.dumps(payload).encode())


# ------------------------------------------------------------------------------------------------- handler


_BEDROCK_PATH = re.compile(r"/model/([^/]+)/(converse|converse-stream)")
_VERTEX_PATH = re.compile(
    r"/v1/projects/([^/]+)/locations/([^/]+)/publishers/anthropic/models/([^/:]+):(rawPredict|streamRawPredict)")


class _Handler(TrackedHandler["LLMServer"]):
    server_version = "flowmas-test-llm"

    def do_GET(self) -> None:
        self._not_found()

    def do_POST(self) -> None:
        raw_path, _, _ = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        protocol: Protocol | None = None
        model: str | None = body.get("model") if isinstance(body, dict) else None
        stream = isinstance(body, dict) and body.get("stream") is True
        if raw_path == "/v1/messages":
            protocol = "anthropic"
        elif raw_path == "/v1/chat/completions":
            protocol = "openai-chat"
        elif raw_path == "/v1/responses":
            protocol = "openai-responses"
        elif m := _BEDROCK_PATH.fullmatch(raw_path):
            protocol, model, stream = "bedrock", unquote(m[1]), m[2] == "converse-stream"
        elif m := _VERTEX_PATH.fullmatch(raw_path):
            protocol, model, stream = "vertex", unquote(m[3]), m[4] == "streamRawPredict"
        auth = _auth_scheme(headers)
        owner = self.owner
        owner._record(RecordedRequest(protocol, "POST", unquote(raw_path), headers, body, stream, model, auth))
        if protocol is None:
            self._not_found()
            return
        item = owner._next_item()
        if item.delay and owner._stopping.wait(item.delay):
            self._abort()
            return
        answer = _Answer(self, protocol, body if isinstance(body, dict) else {}, model or "", stream)
        try:
            problem = answer.validate(auth)
            if problem is not None:
                answer.error(problem)
            elif isinstance(item, Fault) and item.drop_after_events is None:
                answer.error(item)
            else:
                reply = (item.reply if isinstance(item, Fault) else item) or _DEFAULT_REPLY
                drop = item.drop_after_events if isinstance(item, Fault) else None
                answer.reply(reply, drop)
        except _Drop:
            self._abort()
        except OSError:
            self.close_connection = True

    def _not_found(self) -> None:
        body = json.dumps({"error": {"message": f"no route for {self.command} {self.path}"}}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # -- response primitives used by _Answer

    def send_json(self, status: int, payload: Any, headers: dict[str, str], drop: bool = False) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if drop:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            raise _Drop
        self.wfile.write(body)

    def start_chunked(self, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(200)
        for name, value in {"Content-Type": content_type, "Cache-Control": "no-cache", **headers}.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _auth_scheme(headers: dict[str, str]) -> Literal["x-api-key", "bearer", "sigv4"] | None:
    authorization = headers.get("authorization", "")
    if authorization.startswith("AWS4-HMAC-SHA256"):
        return "sigv4"
    if headers.get("x-api-key"):
        return "x-api-key"
    if authorization.lower().startswith("bearer ") and authorization[7:].strip():
        return "bearer"
    return None


class _Answer:
    """Builds one answer of one protocol: error bodies, JSON replies and streams."""

    def __init__(self, handler: _Handler, protocol: Protocol, body: dict[str, Any], model: str, stream: bool):
        self.h, self.protocol, self.body, self.model, self.stream = handler, protocol, body, model, stream
        owner = handler.owner
        self.seq = owner._next_id()
        self.request_id = f"req_{self.seq:024d}"
        self.ids = owner._ids
        self.events = 0
        self.drop: int | None = None

    # -- validation and errors

    def validate(self, auth: str | None) -> Fault | None:
        """Missing credentials or required fields, answered as the real API would (400/401/403)."""
        p, b = self.protocol, self.body
        if p == "bedrock":
            if auth != "sigv4":
                return Fault(403, error_type="AccessDeniedException", message="Missing Authentication Token")
        elif auth is None:
            return Fault(401)
        if p in ("anthropic", "vertex"):
            for name in (("model",) if p == "anthropic" else ("anthropic_version",)) + ("max_tokens", "messages"):
                if name not in b:
                    return Fault(400, message=f"{name}: Field required")
        elif p == "openai-chat":
            for name in ("model", "messages"):
                if name not in b:
                    return Fault(400, message=f"Missing required parameter: '{name}'.")
        elif p == "openai-responses" and "model" not in b:
            return Fault(400, message="Missing required parameter: 'model'.")
        elif p == "bedrock" and "messages" not in b:
            return Fault(400, message="Malformed input request: messages is required")
        return None

    def error(self, fault: Fault) -> None:
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["retry-after"] = _retry_after_value(fault.retry_after)
            if self.protocol in ("anthropic", "openai-chat", "openai-responses"):
                headers["retry-after-ms"] = str(round(fault.retry_after * 1000))
        if self.protocol in ("anthropic", "vertex"):
            headers["request-id"] = self.request_id
            self.h.send_json(fault.status, _anthropic_error(fault, self.request_id), headers)
        elif self.protocol == "bedrock":
            name, message = _bedrock_error(fault)
            headers |= {"x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                        "x-amzn-RequestId": self.request_id}
            self.h.send_json(fault.status, {"message": message}, headers)
        else:
            headers["x-request-id"] = self.request_id
            self.h.send_json(fault.status, _openai_error(fault), headers)

    # -- replies

    def reply(self, reply: Reply, drop: int | None) -> None:
        self.drop = drop
        calls = [(call, call.id or self._tool_id()) for call in reply.tool_calls]
        if self.protocol in ("anthropic", "vertex"):
            self._anthropic(reply, calls)
        elif self.protocol == "openai-chat":
            self._chat(reply, calls)
        elif self.protocol == "openai-responses":
            self._responses(reply, calls)
        else:
            self._bedrock(reply, calls)

    def _tool_id(self) -> str:
        n = next(self.ids)
        prefix = {"anthropic": "toolu_", "vertex": "toolu_vrtx_", "openai-chat": "call_",
                  "openai-responses": "call_", "bedrock": "tooluse_"}[self.protocol]
        return f"{prefix}{n:020d}"

    def _json(self, payload: Any, headers: dict[str, str]) -> None:
        self.h.send_json(200, payload, headers, drop=self.drop is not None)

    def _sse(self, data: Any, event: str | None = None) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        self._event((f"event: {event}\n" if event else "") + f"data: {text}\n\n")

    def _event(self, chunk: str | bytes) -> None:
        if self.drop is not None and self.events >= self.drop:
            raise _Drop
        self.h.send_chunk(chunk.encode() if isinstance(chunk, str) else chunk)
        self.events += 1

    # -- Anthropic Messages (and Vertex)

    def _anthropic(self, reply: Reply, calls: list[tuple[ToolCall, str]]) -> None:
        u = reply.usage
        usage = {"input_tokens": u.input, "output_tokens": u.output, "cache_creation_input_tokens": u.cache_write,
                 "cache_read_input_tokens": u.cache_read}
        message: dict[str, Any] = {"id": f"msg_{self.seq:024d}", "type": "message", "role": "assistant",
                                   "model": self.model, "content": [], "stop_reason": None,
                                   "stop_sequence": None, "usage": usage}
        blocks: list[dict[str, Any]] = []
        if reply.text is not None:
            blocks.append({"type": "text", "text": reply.text})
        blocks += [{"type": "tool_use", "id": cid, "name": call.name, "input": call.arguments} for call, cid in calls]
        headers = {"request-id": self.request_id}
        if not self.stream:
            self._json({**message, "content": blocks, "stop_reason": reply.resolved_stop_reason}, headers)
            return
        self.h.start_chunked("text/event-stream", headers)
        self._sse({"type": "message_start", "message": {**message, "usage": {**usage, "output_tokens": 1}}},
                  "message_start")
        self._sse({"type": "ping"}, "ping")
        for index, block in enumerate(blocks):
            start: dict[str, Any]
            deltas: list[dict[str, Any]]
            if block["type"] == "text":
                start, pieces = {"type": "text", "text": ""}, _split(block["text"], reply.chunks)
                deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
            else:
                start = {**block, "input": {}}
                pieces = _split(json.dumps(block["input"], separators=(",", ":")), reply.chunks)
                deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
            self._sse({"type": "content_block_start", "index": index, "content_block": start}, "content_block_start")
            for delta in deltas:
                self._sse({"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta")
            self._sse({"type": "content_block_stop", "index": index}, "content_block_stop")
        self._sse({"type": "message_delta", "delta": {"stop_reason": reply.resolved_stop_reason,
                                                      "stop_sequence": None}, "usage": usage}, "message_delta")
        self._sse({"type": "message_stop"}, "message_stop")
        self.h.end_chunked()

    # -- OpenAI Chat Completions

    def _chat_usage(self, u: Usage) -> dict[str, Any]:
        prompt = u.input + u.cache_read + u.cache_write
        return {"prompt_tokens": prompt, "completion_tokens": u.output, "total_tokens": prompt + u.output,
                "prompt_tokens_details": {"cached_tokens": u.cache_read, "cache_write_tokens": u.cache_write,
                                          "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}

    def _chat(self, reply: Reply, calls: list[tuple[ToolCall, str]]) -> None:
        finish = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length", "stop_sequence": "stop"}
        finish_reason = finish.get(reply.resolved_stop_reason, reply.resolved_stop_reason)
        base = {"id": f"chatcmpl-{self.seq:024d}", "created": int(time.time()), "model": self.model,
                "system_fingerprint": "fp_flowmas", "service_tier": "default"}
        headers = {"x-request-id": self.request_id}
        if not self.stream:
            message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None,
                                       "annotations": []}
            if calls:
                message["tool_calls"] = [
                    {"id": cid, "type": "function", "function": {"name": call.name, "arguments": _args_json(call)}}
                    for call, cid in calls
                ]
            self._json({**base, "object": "chat.completion", "usage": self._chat_usage(reply.usage),
                        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason,
                                     "logprobs": None}]}, headers)
            return
        options = self.body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            payload: dict[str, Any] = {**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
            if include_usage:
                payload["usage"] = None
            self._sse(payload)

        self.h.start_chunked("text/event-stream", headers)
        chunk({"role": "assistant", "content": "", "refusal": None})
        if reply.text:
            for piece in _split(reply.text, reply.chunks):
                chunk({"content": piece})
        for index, (call, cid) in enumerate(calls):
            chunk({"tool_calls": [{"index": index, "id": cid, "type": "function",
                                   "function": {"name": call.name, "arguments": ""}}]})
            for piece in _split(_args_json(call), reply.chunks):
                chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        chunk({}, finish_reason)
        if include_usage:
            self._sse({**base, "object": "chat.completion.chunk", "choices": [],
                       "usage": self._chat_usage(reply.usage)})
        self._sse("[DONE]")
        self.h.end_chunked()

    # -- OpenAI Responses

    def _responses(self, reply: Reply, calls: list[tuple[ToolCall, str]]) -> None:
        u = reply.usage
        prompt = u.input + u.cache_read + u.cache_write
        usage = {"input_tokens": prompt, "output_tokens": u.output, "total_tokens": prompt + u.output,
                 "input_tokens_details": {"cached_tokens": u.cache_read, "cache_write_tokens": u.cache_write},
                 "output_tokens_details": {"reasoning_tokens": 0}}
        incomplete = reply.resolved_stop_reason == "max_tokens"
        rid = f"resp_{self.seq:024d}"
        items: list[dict[str, Any]] = []
        if reply.text is not None:
            items.append({"type": "message", "id": f"msg_{self.seq:024d}", "status": "completed", "role": "assistant",
                          "content": [{"type": "output_text", "text": reply.text, "annotations": [],
                                       "logprobs": []}]})
        for call, cid in calls:
            items.append({"type": "function_call", "id": f"fc_{cid.removeprefix('call_')}", "call_id": cid,
                          "name": call.name, "arguments": _args_json(call), "status": "completed"})
        response: dict[str, Any] = {
            "id": rid, "object": "response", "created_at": int(time.time()), "status": "in_progress",
            "model": self.model, "output": [], "parallel_tool_calls": True, "tool_choice": "auto",
            "tools": self.body.get("tools") or [], "error": None, "incomplete_details": None,
            "instructions": self.body.get("instructions"), "metadata": {}, "temperature": 1.0, "top_p": 1.0,
            "text": {"format": {"type": "text"}}, "usage": None, "previous_response_id": None,
            "background": False, "store": False,
        }
        final = {**response, "output": items, "usage": usage,
                 "status": "incomplete" if incomplete else "completed",
                 "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
                 "completed_at": None if incomplete else int(time.time())}
        headers = {"x-request-id": self.request_id}
        if not self.stream:
            self._json(final, headers)
            return
        seq = itertools.count()

        def event(kind: str, **fields: Any) -> None:
            self._sse({"type": kind, "sequence_number": next(seq), **fields}, kind)

        self.h.start_chunked("text/event-stream", headers)
        event("response.created", response=response)
        event("response.in_progress", response=response)
        for index, item in enumerate(items):
            where = {"item_id": item["id"], "output_index": index}
            if item["type"] == "message":
                text = item["content"][0]["text"]
                event("response.output_item.added", output_index=index,
                      item={**item, "status": "in_progress", "content": []})
                empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                event("response.content_part.added", **where, content_index=0, part=empty)
                for piece in _split(text, reply.chunks):
                    event("response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[])
                event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
                event("response.content_part.done", **where, content_index=0, part=item["content"][0])
            else:
                event("response.output_item.added", output_index=index,
                      item={**item, "status": "in_progress", "arguments": ""})
                for piece in _split(item["arguments"], reply.chunks):
                    event("response.function_call_arguments.delta", **where, delta=piece)
                event("response.function_call_arguments.done", **where, name=item["name"],
                      arguments=item["arguments"])
            event("response.output_item.done", output_index=index, item=item)
        event("response.incomplete" if incomplete else "response.completed", response=final)
        self.h.end_chunked()

    # -- Bedrock Converse / ConverseStream

    def _bedrock(self, reply: Reply, calls: list[tuple[ToolCall, str]]) -> None:
        u = reply.usage
        usage = {"inputTokens": u.input, "outputTokens": u.output,
                 "totalTokens": u.input + u.output + u.cache_read + u.cache_write,
                 "cacheReadInputTokens": u.cache_read, "cacheWriteInputTokens": u.cache_write}
        blocks: list[dict[str, Any]] = []
        if reply.text is not None:
            blocks.append({"text": reply.text})
        blocks += [{"toolUse": {"toolUseId": cid, "name": call.name, "input": call.arguments}} for call, cid in calls]
        headers = {"x-amzn-RequestId": self.request_id}
        stop = reply.resolved_stop_reason
        if not self.stream:
            self._json({"output": {"message": {"role": "assistant", "content": blocks}}, "stopReason": stop,
                        "usage": usage, "metrics": {"latencyMs": 5}}, headers)
            return
        self.h.start_chunked("application/vnd.amazon.eventstream", headers)
        self._event(_bedrock_event("messageStart", {"role": "assistant"}))
        for index, block in enumerate(blocks):
            deltas: list[dict[str, Any]]
            if "text" in block:
                deltas = [{"text": piece} for piece in _split(block["text"], reply.chunks)]
            else:
                use = block["toolUse"]
                self._event(_bedrock_event("contentBlockStart", {
                    "contentBlockIndex": index, "start": {"toolUse": {"toolUseId": use["toolUseId"],
                                                                      "name": use["name"]}}}))
                pieces = _split(json.dumps(use["input"], separators=(",", ":")), reply.chunks)
                deltas = [{"toolUse": {"input": piece}} for piece in pieces]
            for delta in deltas:
                self._event(_bedrock_event("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
            self._event(_bedrock_event("contentBlockStop", {"contentBlockIndex": index}))
        self._event(_bedrock_event("messageStop", {"stopReason": stop}))
        self._event(_bedrock_event("metadata", {"usage": usage, "metrics": {"latencyMs": 5}}))
        self.h.end_chunked()


# -------------------------------------------------------------------------------------------------- server


class LLMServer(ThreadedServer[RecordedRequest]):
    """Every protocol's wire format on 127.0.0.1 (ephemeral port), answering from one scripted FIFO."""

    handler = _Handler
    quiet_disconnects = True  # SDK clients reset pooled connections; dropped streams are deliberate

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[Reply | Fault] = deque()
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)

    def enqueue(self, *items: Reply | Fault) -> None:
        """Script the next answers, in order, across all protocols; each request consumes one item."""
        for item in items:
            if not isinstance(item, Reply | Fault):
                raise TypeError(f"expected Reply or Fault, got {item!r}")
        with self._lock:
            self._queue.extend(items)

    @property
    def pending(self) -> int:
        """Scripted items not consumed yet."""
        with self._lock:
            return len(self._queue)

    def requests_for(self, protocol: Protocol) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.protocol == protocol]

    def _reset_locked(self) -> None:
        self._queue.clear()
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)

    def _next_item(self) -> Reply | Fault:
        with self._lock:
            return self._queue.popleft() if self._queue else _DEFAULT_REPLY

    def _next_id(self) -> int:
        with self._lock:
            return next(self._seq)
