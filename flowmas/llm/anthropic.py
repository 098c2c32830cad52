"""``AnthropicClient``: the Messages API through the official ``anthropic`` SDK (``AsyncAnthropic``).

Translation, both ways:
- system → ``system`` text blocks; ``tool`` messages → ``user`` turns of ``tool_result`` blocks; neighbouring
  turns of one role are merged (tool results stay first); empty text blocks are dropped (the API rejects them).
  A message of one text block is sent with its text as ``content`` (the API's shorthand for that block) unless
  a cache breakpoint goes on it; tool results whose content is text are sent as a string likewise.
- tools → ``{name, description, input_schema}``; ``tool_choice`` "auto" | "any" | "none" | a name →
  ``{"type": "auto"|"any"|"none"}`` / ``{"type": "tool", "name": …}``; ``stop`` → ``stop_sequences``.
- ``temperature``/``top_p``: the installed SDK's ``messages.create`` has no such parameters, so they go in the
  body (``extra_body``) only when given; a server that refuses them answers 400 (raised, as always).
- prompt caching (``caching=True``, the default): breakpoints by ``caching.place_breakpoints``'s rule
  (tools and system marked once per tool chain, each turn's last message and previous user turn).
- ``thinking=N`` (Asimov's option) → ``{"type": "enabled", "budget_tokens": N}`` with ``max_tokens + N`` sent;
  a dict is sent as is (e.g. ``{"type": "adaptive"}``). Signed thinking blocks are kept in the transcript and
  sent back in tool loops, as the API requires; leave ``temperature`` unset with thinking.
- usage: ``input_tokens``, ``output_tokens`` (from the final ``message_delta`` when streaming: every stop
  reason), ``cache_read_input_tokens``, ``cache_creation_input_tokens``.
- errors (``_translate``): ``APIStatusError`` → ``_http.status_error`` (a stream's ``error`` event carries a
  200 status: its ``error.type`` decides), ``APITimeoutError`` → ``LLMTimeoutError``, ``APIConnectionError`` and
  transport errors mid-stream → ``LLMConnectionError``, undecodable events → ``LLMProtocolError``.

The SDK is created once per event loop with ``max_retries=0``, our timeouts and its own OpenTelemetry off
(``open_telemetry=False``: flowmas's span covers the call). ``api_key=None`` lets the SDK read its environment.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import anthropic
import httpx2

from flowmas.errors import ConfigurationError, LLMConnectionError, LLMError, LLMProtocolError, LLMTimeoutError
from flowmas.llm._convert import ConvertedMessages, merged_turns
from flowmas.llm._http import parse_retry_after, status_error
from flowmas.llm.caching import place_message_breakpoints, place_new_breakpoints
from flowmas.llm.client import BaseClient, Request, request_memo
from flowmas.llm.retry import RetryPolicy
from flowmas.llm.streaming import StreamAssembler
from flowmas.llm.types import (
    ContentBlock,
    ImageBlock,
    Message,
    Response,
    StopReason,
    StreamEvent,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
    ToolResultBlock,
    Usage,
    text_block,
    tool_call_block,
)
from flowmas.llm.types import response as make_response
from flowmas.llm.types import usage as make_usage

STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "refusal": "content_filter",
    "model_context_window_exceeded": "context_window_exceeded",
}
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403, "not_found_error": 404,
    "request_too_large": 413, "rate_limit_error": 429, "api_error": 500, "overloaded_error": 529,
    "timeout_error": 504,
}


def _block_param(block: ContentBlock) -> dict[str, Any] | None:
    # exact types first: isinstance on pydantic's (ABC-based) model classes costs more when it fails
    if type(block) is TextBlock:
        return {"type": "text", "text": block.text} if block.text else None
    if type(block) is ToolCallBlock:
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": dict(block.arguments)}
    if type(block) is ToolResultBlock:
        return _result_param(block)
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text} if block.text else None
    if isinstance(block, ImageBlock):
        return {"type": "image", "source": {"type": "base64", "media_type": block.media_type, "data": block.data}}
    if isinstance(block, ToolCallBlock):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": dict(block.arguments)}
    if isinstance(block, ToolResultBlock):
        return _result_param(block)
    if isinstance(block, ThinkingBlock):
        if block.signature is None:
            return None  # unsigned thinking cannot be sent back
        return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
    return None


def _result_param(block: ToolResultBlock) -> dict[str, Any]:
    content: Any
    if isinstance(block.content, str):
        content = block.content
    else:
        content = [p for p in (_block_param(b) for b in block.content) if p is not None]
    param: dict[str, Any] = {"type": "tool_result", "tool_use_id": block.tool_call_id, "content": content}
    if block.is_error:
        param["is_error"] = True
    return param


def message_param(message: Message) -> dict[str, Any] | None:
    """One message as a Messages-API message dict, or None when it sends nothing (system text, no blocks)."""
    if message.role == "system":
        return None
    blocks = []
    for block in message.content:
        param = _block_param(block)
        if param is not None:
            blocks.append(param)
    if not blocks:
        return None
    return {"role": "assistant" if message.role == "assistant" else "user", "content": blocks}


def wire_message(message: Message) -> dict[str, Any] | None:
    """``message_param`` as sent: a message of one text block has its text as its ``content`` (the API's shorthand
    for exactly that block; fewer structures for the SDK to copy and encode on every call). A breakpoint placed
    on it turns it back into the block (``caching``)."""
    content = message.content
    if len(content) == 1 and type(content[0]) is TextBlock and message.role != "system":
        text = content[0].text
        return {"role": "assistant" if message.role == "assistant" else "user", "content": text} if text else None
    return message_param(message)


def build_messages(
    request: Request, cache: ConvertedMessages[dict[str, Any] | None] | None = None
) -> list[dict[str, Any]]:
    """The request's messages as Messages-API dicts (roles merged; system messages left out). With ``cache`` each
    message is converted once and its dict is shared between calls: change one by replacing it in the list."""
    return merged_turns(request.messages, request_memo(request), cache, "anthropic.messages", wire_message)


def build_params(
    request: Request,
    *,
    caching: bool,
    thinking: Mapping[str, Any] | None = None,
    cache: ConvertedMessages[dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The ``messages.create`` arguments. A tool chain's later turns (``request_memo``) reuse the first turn's
    parameters other than the messages (tools and system already marked for caching): only messages change."""
    memo = request_memo(request)
    entry = memo.get("anthropic") if memo is not None else None
    if entry is not None and entry[0] == caching and entry[1] is thinking:
        static: dict[str, Any] = entry[2]
    else:
        static = _static_params(request, caching, thinking)
        if memo is not None:
            memo["anthropic"] = (caching, thinking, static)
    messages = build_messages(request, cache)
    if caching:  # the tools and system blocks carry theirs already
        reuse = memo.setdefault("anthropic.marked", [None, None]) if memo is not None else None
        place_message_breakpoints(messages, reuse)
    params = dict(static)
    params["messages"] = messages
    return params


def _static_params(request: Request, caching: bool, thinking: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every parameter but ``messages``; tools and system blocks marked (caching rules 1 and 2). Shared between
    the turns of a tool chain: never mutated once built (the SDK only reads it)."""
    params: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens}
    if thinking is not None:
        params["thinking"] = dict(thinking)
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int):
            params["max_tokens"] = request.max_tokens + budget  # Asimov's rule: the budget comes on top
    system_text = request.system_text()
    system = [{"type": "text", "text": system_text}] if system_text else []
    tools = [
        {"name": t.name, "description": t.description, "input_schema": t.input_schema} if t.description
        else {"name": t.name, "input_schema": t.input_schema}
        for t in request.tools
    ] if request.tools else []
    if caching:
        place_new_breakpoints(tools, system, [])  # all built here: none marked yet
    if system:
        params["system"] = system
    if tools:
        params["tools"] = tools
        choice = request.tool_choice
        params["tool_choice"] = {"type": "tool", "name": choice} if request.forced_tool else {"type": choice}
    if request.stop:
        params["stop_sequences"] = list(request.stop)
    extra: dict[str, Any] = {}
    if request.temperature is not None:
        extra["temperature"] = request.temperature
    if request.top_p is not None:
        extra["top_p"] = request.top_p
    if extra:
        params["extra_body"] = extra
    if request.timeout is not None:
        params["timeout"] = request.timeout
    return params


def _usage(wire: Any) -> Usage:
    if wire is None:
        return Usage()
    return make_usage(
        getattr(wire, "input_tokens", None) or 0,
        getattr(wire, "output_tokens", None) or 0,
        getattr(wire, "cache_read_input_tokens", None) or 0,
        getattr(wire, "cache_creation_input_tokens", None) or 0,
    )


def _content(blocks: Any) -> list[ContentBlock]:
    content: list[ContentBlock] = []
    for block in blocks or []:
        kind = getattr(block, "type", None)
        if kind == "text":
            content.append(text_block(block.text))
        elif kind == "tool_use":
            arguments = block.input if isinstance(block.input, dict) else {}
            invalid = None if isinstance(block.input, dict) else json.dumps(block.input, default=str)
            content.append(tool_call_block(block.id, block.name, arguments, invalid))
        elif kind == "thinking":
            content.append(ThinkingBlock(thinking=block.thinking, signature=getattr(block, "signature", None)))
    return content


class AnthropicClient(BaseClient[Any]):
    """Claude through the Messages API (``anthropic.AsyncAnthropic``)."""

    provider = "anthropic"
    temperature_range = (0.0, 1.0)

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        caching: bool = True,
        max_tokens: int = 4096,
        retry: RetryPolicy | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        default_headers: Mapping[str, str] | None = None,
        sdk_options: Mapping[str, Any] | None = None,
        thinking: int | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(model, max_tokens=max_tokens, retry=retry, timeout=timeout, connect_timeout=connect_timeout,
                         secrets=(api_key,))
        if isinstance(thinking, bool) or (isinstance(thinking, int) and thinking < 1024):
            raise ConfigurationError(f"thinking must be a token budget of at least 1024, not {thinking!r}.")
        self.thinking: Mapping[str, Any] | None = (
            {"type": "enabled", "budget_tokens": thinking} if isinstance(thinking, int) else thinking
        )
        self._api_key = api_key
        self.base_url = base_url
        self.caching = caching
        self._default_headers = dict(default_headers or {})
        self._sdk_options = dict(sdk_options or {})
        self._converted: ConvertedMessages[dict[str, Any] | None] = ConvertedMessages(wire_message)

    def _sdk_timeout(self) -> anthropic.Timeout:
        return anthropic.Timeout(self.timeout, connect=self.connect_timeout)

    def _new_sdk(self) -> Any:
        options: dict[str, Any] = {
            "max_retries": 0, "timeout": self._sdk_timeout(), "open_telemetry": False, **self._sdk_options,
        }
        if self._api_key is not None:
            options["api_key"] = self._api_key
        if self.base_url is not None:
            options["base_url"] = self.base_url
        if self._default_headers:
            options["default_headers"] = self._default_headers
        try:
            return anthropic.AsyncAnthropic(**options)
        except anthropic.AnthropicError as exc:
            raise ConfigurationError(f"Cannot create the Anthropic client: {self._scrub(str(exc))}") from None

    # --- errors ----------------------------------------------------------------------------------

    def _translate(self, exc: BaseException) -> LLMError:
        if isinstance(exc, TypeError) and "authentication" in str(exc):
            raise ConfigurationError(
                f"{type(self).__name__} has no credentials: pass api_key= or set ANTHROPIC_API_KEY."
            ) from None
        if isinstance(exc, anthropic.APIStatusError):
            body = exc.body
            error = body.get("error") if isinstance(body, dict) else None
            error_type = error.get("type") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            status = exc.status_code
            if status < 400 and isinstance(error_type, str):  # an `error` event inside a 200 stream
                status = _ERROR_TYPE_STATUS.get(error_type, 500)
            if message is None:
                message = body if isinstance(body, str) else getattr(exc, "api_message", None) or exc.message
            return status_error(
                provider=self.provider, model=self.model, status=status, message=str(message),
                code=getattr(exc, "error_code", None) or error_type, request_id=exc.request_id,
                retry_after=parse_retry_after(exc.response.headers), scrub=self._scrub,
            )
        if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
            return LLMTimeoutError(f"{self.provider}: the request to {self.model} timed out.",
                                   provider=self.provider, model=self.model)
        if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
            return LLMConnectionError(
                f"{self.provider}: the connection failed or dropped ({type(exc).__name__}: "
                f"{self._scrub(_short(exc))}).",
                provider=self.provider, model=self.model)
        if isinstance(exc, anthropic.APIResponseValidationError | ValueError | KeyError | TypeError):
            return LLMProtocolError(
                f"{self.provider}: the answer did not follow the Messages API ({type(exc).__name__}: "
                f"{self._scrub(_short(exc))}).", provider=self.provider, model=self.model)
        if isinstance(exc, anthropic.AnthropicError):
            return LLMError(f"{self.provider}: {type(exc).__name__}: {self._scrub(_short(exc))}",
                            provider=self.provider, model=self.model)
        raise exc

    # --- calls -----------------------------------------------------------------------------------

    async def _complete(self, request: Request, attempt: int) -> Response:
        params = build_params(request, caching=self.caching, thinking=self.thinking, cache=self._converted)
        sdk = self._sdk()
        started = time.perf_counter()
        try:
            message = await sdk.messages.create(**params)
            content = _content(message.content)
            raw_stop = message.stop_reason
            wire_usage = _usage(message.usage)
        except (anthropic.AnthropicError, httpx2.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise self._translate(exc) from None
        return make_response(content, STOP_REASONS.get(raw_stop or "", "other"), raw_stop, wire_usage,
                        message.model or request.model, message.id, self.provider, time.perf_counter() - started)

    async def _stream(self, request: Request, attempt: int) -> AsyncGenerator[StreamEvent, None]:
        params = build_params(request, caching=self.caching, thinking=self.thinking, cache=self._converted)
        sdk = self._sdk()
        assembler = StreamAssembler(self.provider, request.model)
        usage = Usage()
        raw_stop: str | None = None
        finished = False
        try:
            stream = await sdk.messages.create(**params, stream=True)
            try:
                async for event in stream:
                    kind = event.type
                    if kind == "content_block_delta":
                        delta = event.delta
                        dkind = delta.type
                        if dkind == "text_delta":
                            out: StreamEvent | None = assembler.text(event.index, delta.text)
                        elif dkind == "input_json_delta":
                            out = assembler.tool_delta(event.index, delta.partial_json)
                        elif dkind == "thinking_delta":
                            assembler.thinking(event.index, delta.thinking)
                            out = None
                        elif dkind == "signature_delta":
                            assembler.thinking(event.index, signature=delta.signature)
                            out = None
                        else:
                            out = None
                        if out is not None:
                            yield out
                    elif kind == "content_block_start":
                        block = event.content_block
                        if block.type == "tool_use":
                            assembler.tool_start(event.index, block.id, block.name)
                        elif block.type == "text":
                            text_out = assembler.text(event.index, block.text)
                            if text_out is not None:
                                yield text_out
                        elif block.type == "thinking":
                            assembler.thinking(event.index, block.thinking, getattr(block, "signature", None))
                    elif kind == "content_block_stop":
                        stopped = assembler.stop_block(event.index)
                        if stopped is not None:
                            yield stopped
                    elif kind == "message_start":
                        message = event.message
                        usage = _usage(message.usage)
                        yield assembler.start(model=message.model, id=message.id, attempt=attempt)
                    elif kind == "message_delta":
                        raw_stop = event.delta.stop_reason or raw_stop
                        usage = _merge_delta_usage(usage, event.usage)
                    elif kind == "message_stop":
                        finished = True
            finally:
                await stream.close()
        except (anthropic.AnthropicError, httpx2.HTTPError, ValueError, KeyError, TypeError,
                AttributeError) as exc:
            raise self._translate(exc if not isinstance(exc, AttributeError) else ValueError(str(exc))) from None
        if not finished:
            raise LLMConnectionError(f"{self.provider}: the stream ended before message_stop.",
                                     provider=self.provider, model=self.model)
        for out_event in assembler.finish(
            stop_reason=STOP_REASONS.get(raw_stop or "", "other"), raw_stop_reason=raw_stop, usage=usage
        ):
            yield out_event


def _merge_delta_usage(usage: Usage, delta: Any) -> Usage:
    """``message_delta`` usage is cumulative; fields it omits keep their ``message_start`` values."""
    if delta is None:
        return usage
    return Usage(
        input_tokens=getattr(delta, "input_tokens", None) or usage.input_tokens,
        output_tokens=getattr(delta, "output_tokens", None) or usage.output_tokens,
        cache_read_input_tokens=getattr(delta, "cache_read_input_tokens", None) or usage.cache_read_input_tokens,
        cache_write_input_tokens=getattr(delta, "cache_creation_input_tokens", None)
        or usage.cache_write_input_tokens,
    )


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"
