"""``OpenAIClient``: Chat Completions (default) or the Responses API (``api="responses"``), official ``openai`` SDK.

``base_url`` points it at any OpenAI-compatible server (vLLM, llama.cpp, Ollama: ``http://host:port/v1``);
with ``base_url`` and neither ``api_key`` nor ``OPENAI_API_KEY``, the key sent is ``"not-needed"`` (those
servers want none, the SDK insists on one). Without credentials otherwise: ``ConfigurationError``.

Chat Completions translation:
- system text → one leading ``system`` message; tool results → one ``tool`` message each (``tool_call_id``;
  an error result's text starts with "Error: " — the protocol has no error flag; images in a tool result are
  sent in a following user message); user images → ``image_url`` data URLs; assistant tool calls →
  ``tool_calls`` with JSON ``arguments`` (the model's invalid text is sent back as it was).
- ``tool_choice``: "auto" | "any" → ``"required"`` (Asimov sent "any", which OpenAI rejects) | "none" | a name →
  ``{"type": "function", "function": {"name": …}}``.
- ``max_tokens_param``: ``"max_completion_tokens"`` (what OpenAI's current models take) when ``base_url`` is
  not set, ``"max_tokens"`` (what every local server takes) when it is; pass it to choose.
- streaming asks for ``stream_options.include_usage``; tool-call chunks are keyed by their ``index`` and the
  ids are kept as strings (Asimov's ``int(id)`` bug).
- usage: ``prompt_tokens`` minus cached (``prompt_tokens_details.cached_tokens``) and cache-written tokens
  → ``input_tokens``; ``completion_tokens`` → ``output_tokens``.

Responses API translation: system → ``instructions``; messages → ``input`` items (a user message of one text part
as a plain string, the API's short form; ``function_call`` /
``function_call_output`` for tools); ``max_output_tokens``; ``store=False`` (nothing kept on the provider's
side unless ``store=True``); ``stop`` is not supported by that API (``ConfigurationError`` before any request).

Errors: ``APIStatusError`` → ``_http.status_error`` (``code``, e.g. ``context_length_exceeded``, from the body);
an error inside a stream (``APIError`` without status, ``error``/``response.failed`` events) by its code/type;
``APITimeoutError`` → ``LLMTimeoutError``; ``APIConnectionError``/transport errors → ``LLMConnectionError``;
undecodable chunks → ``LLMProtocolError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Literal

import httpx2
import openai

from flowmas.errors import ConfigurationError, LLMConnectionError, LLMError, LLMProtocolError, LLMTimeoutError
from flowmas.llm._convert import ConvertedMessages, extend
from flowmas.llm._http import parse_retry_after, status_error
from flowmas.llm.client import BaseClient, Request
from flowmas.llm.retry import RetryPolicy
from flowmas.llm.streaming import StreamAssembler, parse_tool_arguments
from flowmas.llm.types import (
    ContentBlock,
    ImageBlock,
    Message,
    Response,
    StopReason,
    StreamEvent,
    TextBlock,
    ToolCallBlock,
    ToolResultBlock,
    Usage,
    text_block,
    tool_call_block,
)
from flowmas.llm.types import response as make_response
from flowmas.llm.types import usage as make_usage

LOCAL_PLACEHOLDER_KEY = "not-needed"
FINISH_REASONS: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "content_filter",
}
_STREAM_ERROR_STATUS = {"server_error": 500, "rate_limit_exceeded": 429, "rate_limit_error": 429,
                        "overloaded_error": 529, "internal_error": 500, "timeout": 504}


def _data_url(block: ImageBlock) -> str:
    return f"data:{block.media_type};base64,{block.data}"


def _arguments_text(call: ToolCallBlock) -> str:
    if call.invalid_arguments is not None:
        return call.invalid_arguments
    return json.dumps(call.arguments, ensure_ascii=False)


def _result_text(block: ToolResultBlock) -> str:
    text = block.text
    if block.is_error and not text.lower().startswith("error"):
        return f"Error: {text}"
    return text


def _result_images(block: ToolResultBlock) -> list[ImageBlock]:
    return [] if isinstance(block.content, str) else [b for b in block.content if isinstance(b, ImageBlock)]


# --- Chat Completions ---------------------------------------------------------------------------------


def chat_items(message: Message) -> list[dict[str, Any]]:
    """One message as Chat Completions messages (none for system text, which leads the request)."""
    out: list[dict[str, Any]] = []
    if message.role == "system":
        return out
    if message.role == "assistant":
        text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
        calls = [b for b in message.content if isinstance(b, ToolCallBlock)]
        item: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            item["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments_text(c)}}
                for c in calls
            ]
        if text or calls:
            out.append(item)
        return out
    parts: list[dict[str, Any]] = []
    images: list[ImageBlock] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            out.append({"role": "tool", "tool_call_id": block.tool_call_id, "content": _result_text(block)})
            images += _result_images(block)
        elif isinstance(block, TextBlock) and block.text:
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append({"type": "image_url", "image_url": {"url": _data_url(block)}})
    parts += [{"type": "image_url", "image_url": {"url": _data_url(i)}} for i in images]
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "text":
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})
    return out


def chat_messages(
    request: Request, cache: ConvertedMessages[list[dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = request.system_text()
    if system:
        out.append({"role": "system", "content": system})
    if cache is not None:
        out += cache.build(request.messages, extend)
    else:
        for message in request.messages:
            out += chat_items(message)
    return out


def _chat_tool_choice(request: Request) -> Any:
    if request.forced_tool:
        return {"type": "function", "function": {"name": request.forced_tool}}
    return {"any": "required"}.get(request.tool_choice, request.tool_choice)


def _chat_usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", None) or 0) if details is not None else 0
    written = (getattr(details, "cache_write_tokens", None) or 0) if details is not None else 0
    prompt = getattr(usage, "prompt_tokens", None) or 0
    return make_usage(max(prompt - cached - written, 0), getattr(usage, "completion_tokens", None) or 0, cached,
                      written)


# --- Responses API ------------------------------------------------------------------------------------


def responses_items(message: Message) -> list[dict[str, Any]]:
    """One message as Responses API input items (none for system text, which goes to ``instructions``)."""
    items: list[dict[str, Any]] = []
    if message.role == "system":
        return items
    if message.role == "assistant":
        text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
        if text:
            items.append({"role": "assistant", "content": text})
        for call in message.content:
            if isinstance(call, ToolCallBlock):
                items.append({"type": "function_call", "call_id": call.id, "name": call.name,
                              "arguments": _arguments_text(call)})
        return items
    parts: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            items.append({"type": "function_call_output", "call_id": block.tool_call_id,
                          "output": _result_text(block)})
            parts += [{"type": "input_image", "image_url": _data_url(i)} for i in _result_images(block)]
        elif isinstance(block, TextBlock) and block.text:
            parts.append({"type": "input_text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append({"type": "input_image", "image_url": _data_url(block)})
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "input_text":  # the API's short form (the SDK reads it faster)
            items.append({"role": "user", "content": parts[0]["text"]})
        else:
            items.append({"role": "user", "content": parts})
    return items


def responses_input(
    request: Request, cache: ConvertedMessages[list[dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    if cache is not None:
        return cache.build(request.messages, extend)
    items: list[dict[str, Any]] = []
    for message in request.messages:
        items += responses_items(message)
    return items


def _responses_usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    details = getattr(usage, "input_tokens_details", None)
    cached = (getattr(details, "cached_tokens", None) or 0) if details is not None else 0
    written = (getattr(details, "cache_write_tokens", None) or 0) if details is not None else 0
    return make_usage(max((getattr(usage, "input_tokens", None) or 0) - cached - written, 0),
                      getattr(usage, "output_tokens", None) or 0, cached, written)


def _responses_stop(response: Any, has_calls: bool) -> tuple[StopReason, str | None]:
    status = getattr(response, "status", None)
    details = getattr(response, "incomplete_details", None)
    reason = getattr(details, "reason", None) if details is not None else None
    if has_calls:
        return "tool_use", "function_call"
    if status == "incomplete":
        if reason == "max_output_tokens":
            return "max_tokens", reason
        if reason == "content_filter":
            return "content_filter", reason
        return "other", reason or status
    return "end_turn", status


class OpenAIClient(BaseClient[Any]):
    """OpenAI (or a compatible server) through ``openai.AsyncOpenAI``."""

    provider = "openai"
    temperature_range = (0.0, 2.0)

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        api: Literal["chat", "responses"] = "chat",
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] | None = None,
        store: bool = False,
        organization: str | None = None,
        project: str | None = None,
        max_tokens: int = 4096,
        retry: RetryPolicy | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        default_headers: Mapping[str, str] | None = None,
        sdk_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(model, max_tokens=max_tokens, retry=retry, timeout=timeout, connect_timeout=connect_timeout,
                         secrets=(api_key,))
        if api not in ("chat", "responses"):
            raise ConfigurationError(f"api must be 'chat' or 'responses', not {api!r}.")
        self.api = api
        self.base_url = base_url
        self.max_tokens_param = max_tokens_param or ("max_tokens" if base_url else "max_completion_tokens")
        self.store = store
        self._api_key = api_key
        self._organization = organization
        self._project = project
        self._default_headers = dict(default_headers or {})
        self._sdk_options = dict(sdk_options or {})
        self._chat_items: ConvertedMessages[list[dict[str, Any]]] = ConvertedMessages(chat_items)
        self._responses_items: ConvertedMessages[list[dict[str, Any]]] = ConvertedMessages(responses_items)

    def _new_sdk(self) -> Any:
        options: dict[str, Any] = {
            "max_retries": 0, "timeout": openai.Timeout(self.timeout, connect=self.connect_timeout),
            **self._sdk_options,
        }
        api_key = self._api_key
        if api_key is None and self.base_url is not None and not os.environ.get("OPENAI_API_KEY"):
            api_key = LOCAL_PLACEHOLDER_KEY  # local servers (vLLM, llama.cpp, Ollama) want none; the SDK wants one
        for key, value in (("api_key", api_key), ("base_url", self.base_url),
                           ("organization", self._organization), ("project", self._project)):
            if value is not None:
                options[key] = value
        if self._default_headers:
            options["default_headers"] = self._default_headers
        try:
            return openai.AsyncOpenAI(**options)
        except openai.OpenAIError as exc:
            raise ConfigurationError(f"Cannot create the OpenAI client: {self._scrub(str(exc))}") from None

    def build_params(self, request: Request, *, stream: bool) -> dict[str, Any]:
        if self.api == "responses":
            return self._responses_params(request, stream=stream)
        params: dict[str, Any] = {"model": request.model, "messages": chat_messages(request, self._chat_items),
                                  self.max_tokens_param: request.max_tokens}
        if request.tools:
            params["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.input_schema}}
                for t in request.tools
            ]
            params["tool_choice"] = _chat_tool_choice(request)
        if request.stop:
            params["stop"] = list(request.stop)
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if stream:
            params["stream"] = True
            params["stream_options"] = {"include_usage": True}
        if request.timeout is not None:
            params["timeout"] = request.timeout
        return params

    def _responses_params(self, request: Request, *, stream: bool) -> dict[str, Any]:
        if request.stop:
            raise ConfigurationError("The OpenAI Responses API has no stop sequences; drop stop= or use api='chat'.")
        params: dict[str, Any] = {"model": request.model, "input": responses_input(request, self._responses_items),
                                  "max_output_tokens": request.max_tokens, "store": self.store}
        system = request.system_text()
        if system:
            params["instructions"] = system
        if request.tools:
            params["tools"] = [
                {"type": "function", "name": t.name, "description": t.description, "parameters": t.input_schema,
                 "strict": False}
                for t in request.tools
            ]
            params["tool_choice"] = (
                {"type": "function", "name": request.forced_tool} if request.forced_tool
                else {"any": "required"}.get(request.tool_choice, request.tool_choice)
            )
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if stream:
            params["stream"] = True
        if request.timeout is not None:
            params["timeout"] = request.timeout
        return params

    # --- errors ----------------------------------------------------------------------------------

    def _stream_error(self, error: Any) -> LLMError:
        """An error reported inside a stream (a chunk's ``error``, an ``error`` or ``response.failed`` event)."""
        get = error.get if isinstance(error, Mapping) else (lambda key, default=None: getattr(error, key, default))
        code = get("code") or None
        kind = get("type") or None
        message = get("message") or "An error occurred during streaming"
        status = _STREAM_ERROR_STATUS.get(str(code), _STREAM_ERROR_STATUS.get(str(kind)))
        return status_error(provider=self.provider, model=self.model, status=status, message=str(message),
                            code=str(code or kind) if (code or kind) else None, scrub=self._scrub)

    def _translate(self, exc: BaseException) -> LLMError:
        if isinstance(exc, LLMError):
            return exc
        if isinstance(exc, openai.APIStatusError):
            body = exc.body
            message = body.get("message") if isinstance(body, dict) else (body if isinstance(body, str) else None)
            return status_error(
                provider=self.provider, model=self.model, status=exc.status_code,
                message=str(message or exc.message), code=exc.code or exc.type, request_id=exc.request_id,
                retry_after=parse_retry_after(exc.response.headers), scrub=self._scrub,
            )
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
            return LLMTimeoutError(f"{self.provider}: the request to {self.model} timed out.",
                                   provider=self.provider, model=self.model)
        if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
            return LLMConnectionError(
                f"{self.provider}: the connection failed or dropped ({type(exc).__name__}: "
                f"{self._scrub(_short(exc))}).", provider=self.provider, model=self.model)
        if isinstance(exc, openai.APIResponseValidationError):
            return LLMProtocolError(f"{self.provider}: the answer did not follow the API ({_short(exc)}).",
                                    provider=self.provider, model=self.model)
        if isinstance(exc, openai.APIError):  # an error inside a stream
            return self._stream_error(exc.body if isinstance(exc.body, Mapping) else {"message": exc.message})
        if isinstance(exc, ValueError | KeyError | TypeError | AttributeError | IndexError):
            return LLMProtocolError(
                f"{self.provider}: the answer did not follow the API ({type(exc).__name__}: "
                f"{self._scrub(_short(exc))}).", provider=self.provider, model=self.model)
        if isinstance(exc, openai.OpenAIError):
            return LLMError(f"{self.provider}: {type(exc).__name__}: {self._scrub(_short(exc))}",
                            provider=self.provider, model=self.model)
        raise exc

    # --- calls -----------------------------------------------------------------------------------

    async def _complete(self, request: Request, attempt: int) -> Response:
        params = self.build_params(request, stream=False)
        sdk = self._sdk()
        started = time.perf_counter()
        try:
            if self.api == "responses":
                answer = await sdk.responses.create(**params)
                return self._from_responses(answer, request, started)
            completion = await sdk.chat.completions.create(**params)
            return self._from_chat(completion, request, started)
        except _CAUGHT as exc:
            raise self._translate(exc) from None

    def _from_chat(self, completion: Any, request: Request, started: float) -> Response:
        if not completion.choices:
            raise LLMProtocolError(f"{self.provider}: the answer has no choices.", provider=self.provider,
                                   model=self.model)
        choice = completion.choices[0]
        message = choice.message
        content: list[ContentBlock] = []
        if message.content:
            content.append(text_block(message.content))
        for call in message.tool_calls or []:
            function = getattr(call, "function", None)
            if function is None:
                continue
            arguments, invalid = parse_tool_arguments(function.arguments)
            content.append(tool_call_block(str(call.id), function.name, arguments, invalid))
        raw = choice.finish_reason
        stop: StopReason = FINISH_REASONS.get(raw or "", "other")
        if stop == "end_turn" and any(isinstance(b, ToolCallBlock) for b in content):
            stop = "tool_use"  # some local servers say "stop" after a tool call
        return make_response(content, stop, raw, _chat_usage(completion.usage), completion.model or request.model,
                             completion.id, self.provider, time.perf_counter() - started)

    def _from_responses(self, answer: Any, request: Request, started: float) -> Response:
        if getattr(answer, "status", None) == "failed" and getattr(answer, "error", None) is not None:
            raise self._stream_error(answer.error)
        content: list[ContentBlock] = []
        for item in answer.output or []:
            kind = getattr(item, "type", None)
            if kind == "message":
                text = "".join(getattr(p, "text", "") for p in item.content or []
                               if getattr(p, "type", None) == "output_text")
                if text:
                    content.append(TextBlock(text=text))
            elif kind == "function_call":
                arguments, invalid = parse_tool_arguments(item.arguments)
                content.append(tool_call_block(item.call_id, item.name, arguments, invalid))
        stop, raw = _responses_stop(answer, any(isinstance(b, ToolCallBlock) for b in content))
        return make_response(content, stop, raw, _responses_usage(answer.usage), answer.model or request.model,
                             answer.id, self.provider, time.perf_counter() - started)

    async def _stream(self, request: Request, attempt: int) -> AsyncGenerator[StreamEvent, None]:
        params = self.build_params(request, stream=True)
        sdk = self._sdk()
        try:
            if self.api == "responses":
                stream = await sdk.responses.create(**params)
                events = self._responses_events(stream, request, attempt)
            else:
                stream = await sdk.chat.completions.create(**params)
                events = self._chat_events(stream, request, attempt)
            try:
                async with contextlib.aclosing(events):
                    async for event in events:
                        yield event
            finally:
                await stream.close()
        except _CAUGHT as exc:
            raise self._translate(exc) from None

    async def _chat_events(
        self, stream: Any, request: Request, attempt: int
    ) -> AsyncGenerator[StreamEvent, None]:
        assembler = StreamAssembler(self.provider, request.model)
        started = False
        usage = Usage()
        raw_stop: str | None = None
        text_index: int | None = None
        tool_index: dict[int, int] = {}  # the chunk's tool_call index → our block index
        next_index = 0
        async for chunk in stream:
            if not started:
                started = True
                yield assembler.start(model=chunk.model, id=chunk.id, attempt=attempt)
            if chunk.usage is not None:
                usage = _chat_usage(chunk.usage)
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    if text_index is None:
                        text_index, next_index = next_index, next_index + 1
                    out = assembler.text(text_index, delta.content)
                    if out is not None:
                        yield out
                for call in delta.tool_calls or []:
                    key = call.index if call.index is not None else len(tool_index)
                    index = tool_index.get(key)
                    function = call.function
                    if index is None:
                        index = tool_index[key] = next_index
                        next_index += 1
                        assembler.tool_start(index, str(call.id or ""), (function.name if function else "") or "")
                        if text_index is not None:
                            stopped = assembler.stop_block(text_index)
                            if stopped is not None:
                                yield stopped
                    elif call.id or (function is not None and function.name):
                        assembler.tool_start(index, str(call.id or ""), (function.name if function else "") or "")
                    if function is not None and function.arguments:
                        piece = assembler.tool_delta(index, function.arguments)
                        if piece is not None:
                            yield piece
            if choice.finish_reason:
                raw_stop = choice.finish_reason
        if not started or raw_stop is None:
            raise LLMConnectionError(f"{self.provider}: the stream ended before its finish_reason.",
                                     provider=self.provider, model=self.model)
        stop: StopReason = FINISH_REASONS.get(raw_stop, "other")
        if stop == "end_turn" and tool_index:
            stop = "tool_use"
        for event in assembler.finish(stop_reason=stop, raw_stop_reason=raw_stop, usage=usage):
            yield event

    async def _responses_events(
        self, stream: Any, request: Request, attempt: int
    ) -> AsyncGenerator[StreamEvent, None]:
        assembler = StreamAssembler(self.provider, request.model)
        started = False
        final: Any = None
        has_calls = False
        async for event in stream:
            kind = getattr(event, "type", None)
            if kind == "response.output_text.delta":
                out = assembler.text(event.output_index, event.delta)
                if out is not None:
                    yield out
            elif kind == "response.function_call_arguments.delta":
                piece = assembler.tool_delta(event.output_index, event.delta)
                if piece is not None:
                    yield piece
            elif kind == "response.output_item.added":
                item = event.item
                if getattr(item, "type", None) == "function_call":
                    has_calls = True
                    assembler.tool_start(event.output_index, item.call_id, item.name)
                    if item.arguments:
                        piece = assembler.tool_delta(event.output_index, item.arguments)
                        if piece is not None:
                            yield piece
            elif kind == "response.output_item.done":
                stopped = assembler.stop_block(event.output_index)
                if stopped is not None:
                    yield stopped
            elif kind in ("response.created", "response.in_progress") and not started:
                started = True
                yield assembler.start(model=event.response.model, id=event.response.id, attempt=attempt)
            elif kind in ("response.completed", "response.incomplete"):
                final = event.response
            elif kind == "response.failed":
                raise self._stream_error(getattr(event.response, "error", None) or {})
            elif kind == "error":
                raise self._stream_error(event)
        if final is None:
            raise LLMConnectionError(f"{self.provider}: the stream ended before response.completed.",
                                     provider=self.provider, model=self.model)
        if not started:
            yield assembler.start(model=final.model, id=final.id, attempt=attempt)
        stop, raw = _responses_stop(final, has_calls)
        for out_event in assembler.finish(stop_reason=stop, raw_stop_reason=raw, usage=_responses_usage(final.usage)):
            yield out_event


_CAUGHT = (openai.OpenAIError, httpx2.HTTPError, ValueError, KeyError, TypeError, AttributeError, IndexError)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"
