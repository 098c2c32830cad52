"""The ``InferenceClient`` protocol and ``BaseClient``: retries, validation, spans, streaming, the tool loop.

An adapter (``AnthropicClient``, ``OpenAIClient``, ``BedrockClient``, ``VertexClient``) implements only
``_complete(request, attempt)`` and ``_stream(request, attempt)``, translating a neutral ``Request`` into one SDK
call and the SDK's answer (or error, once, into flowmas.errors) back. Everything else lives here, once:

- **Validation before any request**: ``max_tokens`` (1 … ``max_tokens_limit``), ``temperature`` and ``top_p``
  (finite, within the provider's range), ``stop``, ``tool_choice`` (a named tool must be offered). Bad values
  raise ``ConfigurationError`` without a network call.
- **Retries** (``retry.RetryPolicy``): ``complete`` retries transient errors (429 with ``retry-after``, 5xx,
  timeouts, dropped connections, a stream cut midway). ``stream`` retries only until its first event is out; a
  stream that breaks later raises ``LLMConnectionError`` (transient) so the caller decides.
- **SDK clients**: one per event loop (created on first use in that loop and reused: connection pooling; an
  httpx pool cannot cross event loops, which Prefect's sync tasks would otherwise do). The SDK's own retries
  are off (``max_retries=0``). Call ``aclose()`` (or ``async with client``) before a short-lived loop ends: an
  SDK client whose loop is gone can only be garbage-collected, and the SDK then logs a failed close.
- **Spans** (``telemetry``): ``chat {model}`` per call; none are made without opentelemetry or while no tracer
  provider is configured (checked per call: a provider configured later is used from then on).
- **Inputs are never mutated**: adapters build fresh request structures from the immutable neutral types.

``tool_chain`` runs the loop: call the model, run its tool calls (concurrently unless
``parallel_tool_calls=False``), append the results, repeat until the model answers without a tool call — or,
with ``require_tool_call=True`` (Asimov's mode), until a tool raises ``StopToolChain``/``StopAsyncIteration``:
a text-only answer is then answered with ``NUDGE`` and the loop goes on. Reaching ``max_iterations`` raises
``ToolChainLimitError`` (its ``result`` holds the transcript and usage). With ``middlewares`` each model turn
streams, and every event (``MessageStart`` … ``MessageStop``, then one ``ToolResultEvent`` per tool) is passed
to each middleware in order; a retried turn starts again with ``MessageStart(attempt=n)``. Without middlewares
turns use ``complete`` (cheaper).

Asimov's names: ``get_generation`` (→ the answer's text), ``connect_and_listen`` (→ text deltas) and
``tool_chain`` (→ ``ToolChainResult``; ``tools`` may be ``(fn, schema)`` pairs).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import math
import re
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from flowmas.errors import ConfigurationError, LLMConnectionError, LLMError, ToolChainLimitError
from flowmas.llm import telemetry
from flowmas.llm.retry import RetryPolicy
from flowmas.llm.tools import Tool, index_tools, run_tool_call
from flowmas.llm.types import (
    ChainEvent,
    Message,
    MessageLike,
    MessageStop,
    Response,
    StreamEvent,
    TextDelta,
    ToolChoice,
    ToolResultBlock,
    ToolResultEvent,
    ToolSpec,
    Usage,
    to_messages,
)
from flowmas.llm.types import usage as make_usage

NUDGE = (
    "You answered without calling a tool. Continue the task by calling one of the tools; "
    "call the tool that finishes the task when you are done."
)
DEFAULT_MAX_TOKENS = 4096
DEFAULT_TIMEOUT = 600.0
DEFAULT_CONNECT_TIMEOUT = 5.0
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_CHOICE_ALIASES = {"required": "any", "auto": "auto", "any": "any", "none": "none"}

Middleware = Callable[[ChainEvent], Awaitable[None] | None]
ToolLike = Tool | tuple[Callable[..., Any], Any] | Callable[..., Any]
SDK = TypeVar("SDK")


@dataclass(frozen=True)
class Request:
    """One model call in neutral terms, validated; what an adapter translates."""

    model: str
    messages: Sequence[Message]
    system: str | None
    tools: Sequence[ToolSpec]
    tool_choice: str  # "auto" | "any" | "none" | a tool name
    max_tokens: int
    temperature: float | None
    top_p: float | None
    stop: Sequence[str]
    timeout: float | None

    @property
    def forced_tool(self) -> str | None:
        return None if self.tool_choice in ("auto", "any", "none") else self.tool_choice

    def system_text(self) -> str | None:
        """``system=`` and the text of every system message, joined by blank lines (None when empty)."""
        parts = [self.system] if self.system else []
        parts += [m.text for m in self.messages if m.role == "system" and m.text]
        return "\n\n".join(parts) if parts else None


class ToolChainResult(BaseModel):
    """What ``tool_chain`` returns: the whole transcript, the summed usage, the last response."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    messages: list[Message]
    usage: Usage = Field(default_factory=Usage)
    response: Response | None = None
    iterations: int = 0
    stopped_by_tool: bool = False

    @property
    def text(self) -> str:
        return self.response.text if self.response is not None else ""


@runtime_checkable
class InferenceClient(Protocol):
    """What every inference client offers (see ``BaseClient`` for the semantics)."""

    provider: str
    model: str

    async def complete(
        self,
        messages: Sequence[MessageLike] | str,
        *,
        tools: Sequence[ToolSpec | Mapping[str, Any]] | None = None,
        tool_choice: ToolChoice = "auto",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | str | None = None,
        system: str | None = None,
        timeout: float | None = None,
    ) -> Response: ...

    def stream(
        self,
        messages: Sequence[MessageLike] | str,
        *,
        tools: Sequence[ToolSpec | Mapping[str, Any]] | None = None,
        tool_choice: ToolChoice = "auto",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | str | None = None,
        system: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamEvent]: ...

    async def tool_chain(
        self,
        messages: Sequence[MessageLike] | str,
        tools: Sequence[ToolLike],
        *,
        max_iterations: int = 10,
        parallel_tool_calls: bool = True,
        middlewares: Sequence[Middleware] = (),
        require_tool_call: bool = False,
        tool_choice: ToolChoice = "auto",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | str | None = None,
        system: str | None = None,
        timeout: float | None = None,
    ) -> ToolChainResult: ...

    async def aclose(self) -> None: ...


def _finite_in(name: str, value: float | None, low: float, high: float, provider: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, not {value!r}.")
    if not low <= value <= high:
        raise ConfigurationError(f"{name}={value} is outside {provider}'s range {low}…{high}.")


class BaseClient(abc.ABC, Generic[SDK]):
    """Shared behaviour of every adapter; subclasses implement ``_new_sdk``, ``_complete`` and ``_stream``."""

    provider: str = ""
    temperature_range: tuple[float, float] = (0.0, 2.0)

    def __init__(
        self,
        model: str,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_tokens_limit: int = 1_048_576,
        secrets: Sequence[str | None] = (),
    ) -> None:
        for secret in secrets:
            if secret is not None and not _HEADER_SAFE.fullmatch(secret):
                raise ConfigurationError(
                    f"{type(self).__name__}: the API key or token contains characters an HTTP header cannot carry "
                    "(whitespace, control or non-ASCII characters; e.g. a newline read from a file). Fix the key."
                )
        self._secrets = tuple(s for s in secrets if s)
        if not model or not isinstance(model, str):
            raise ConfigurationError(f"{type(self).__name__} needs a model name.")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}.")
        self.model = model
        self.max_tokens_limit = max_tokens_limit
        self.max_tokens = self._check_max_tokens(max_tokens)
        self.retry = retry or RetryPolicy()
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self._sdks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SDK] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:  # never shows credentials
        return f"{type(self).__name__}(model={self.model!r})"

    def _scrub(self, text: str) -> str:
        """``text`` with every credential this client holds replaced by ``***`` (error messages, logs)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    # --- SDK client per event loop ---------------------------------------------------------------

    @abc.abstractmethod
    def _new_sdk(self) -> SDK:
        """A new SDK client (one per event loop; never per call)."""

    def _sdk(self) -> SDK:
        loop = asyncio.get_running_loop()
        sdk = self._sdks.get(loop)
        if sdk is None:
            sdk = self._sdks[loop] = self._new_sdk()
        return sdk

    async def _close_sdk(self, sdk: SDK) -> None:
        close = getattr(sdk, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result

    async def aclose(self) -> None:
        """Close this event loop's SDK client (its connections); others close when their loops end."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        sdk = self._sdks.pop(loop, None)
        if sdk is not None:
            await self._close_sdk(sdk)

    async def __aenter__(self) -> BaseClient[SDK]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- adapters implement ----------------------------------------------------------------------

    @abc.abstractmethod
    async def _complete(self, request: Request, attempt: int) -> Response:
        """One attempt: the SDK call, its answer as a ``Response``, its errors as flowmas.errors."""

    @abc.abstractmethod
    def _stream(self, request: Request, attempt: int) -> AsyncGenerator[StreamEvent, None]:
        """One attempt as neutral events, ending with ``MessageStop``; errors as flowmas.errors."""

    # --- requests --------------------------------------------------------------------------------

    def _check_max_tokens(self, value: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= self.max_tokens_limit:
            raise ConfigurationError(
                f"max_tokens must be an integer from 1 to {self.max_tokens_limit}, not {value!r}."
            )
        return value

    def build_request(
        self,
        messages: Sequence[MessageLike] | str,
        *,
        tools: Sequence[ToolSpec | Mapping[str, Any]] | None = None,
        tool_choice: ToolChoice = "auto",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | str | None = None,
        system: str | None = None,
        timeout: float | None = None,
    ) -> Request:
        """Validate and normalise one call's arguments (no network); raises ``ConfigurationError``."""
        if type(messages) is str:  # a plain prompt: one user message, nothing to check
            msgs = [Message.user(messages)]
        else:
            msgs = to_messages(messages)
            if not any(m.role != "system" for m in msgs):
                raise ConfigurationError("messages must hold at least one user message.")
        if tools:
            specs = [ToolSpec.coerce(t) for t in tools]
            names = {s.name for s in specs}
            if len(names) != len(specs):
                raise ConfigurationError("Tool names must be unique.")
        else:
            specs, names = [], set()
        choice = _CHOICE_ALIASES.get(tool_choice) if type(tool_choice) is str else None
        if choice is None:
            if not isinstance(tool_choice, str) or not tool_choice:
                raise ConfigurationError(
                    f"tool_choice must be 'auto', 'any', 'none' or a tool's name, not {tool_choice!r}."
                )
            choice = _CHOICE_ALIASES.get(tool_choice, tool_choice)
            if choice not in ("auto", "any", "none") and choice not in names:
                raise ConfigurationError(
                    f"tool_choice={tool_choice!r} names no offered tool "
                    f"(offered: {', '.join(sorted(names)) or 'none'})."
                )
        if choice == "any" and not specs:
            raise ConfigurationError(f"tool_choice={tool_choice!r} needs tools.")
        if temperature is not None:
            low, high = self.temperature_range
            _finite_in("temperature", temperature, low, high, self.provider)
        if top_p is not None:
            _finite_in("top_p", top_p, 0.0, 1.0, self.provider)
        if stop is None:
            stops: list[str] = []
        else:
            stops = [stop] if isinstance(stop, str) else list(stop or [])
            if not all(isinstance(s, str) and s for s in stops):
                raise ConfigurationError("stop must be a string or a list of non-empty strings.")
        if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}.")
        return _request(
            model=self.model, messages=msgs, system=system, tools=specs, tool_choice=choice,
            max_tokens=self.max_tokens if max_tokens is None else self._check_max_tokens(max_tokens),
            temperature=temperature, top_p=top_p, stop=stops, timeout=timeout,
        )

    def _span_attributes(self, request: Request) -> dict[str, Any]:
        return telemetry.request_attributes(
            self.provider, request.model, max_tokens=request.max_tokens, temperature=request.temperature,
            top_p=request.top_p,
        )

    async def _run_complete(self, request: Request) -> Response:
        if telemetry.active() is None:  # no tracer provider configured: no span to make
            return await self.retry.run(functools.partial(self._complete, request),
                                        what=f"{self.provider} {request.model}")
        with telemetry.span(f"chat {request.model}", self._span_attributes(request)) as current:
            response = await self.retry.run(
                lambda attempt: self._complete(request, attempt), what=f"{self.provider} {request.model}"
            )
            telemetry.record_response(current, response)
            return response

    async def complete(
        self,
        messages: Sequence[MessageLike] | str,
        *,
        tools: Sequence[ToolSpec | Mapping[str, Any]] | None = None,
        tool_choice: ToolChoice = "auto",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | str | None = None,
        system: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        """One answer. Transient failures are retried by ``self.retry``; others raise ``LLMError``s."""
        request = self.build_request(
            messages, tools=tools, tool_choice=tool_choice, max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, stop=stop, system=system, timeout=timeout,
        )
        return await self._run_complete(request)

    async def _stream_request(
        self, request: Request, *, retry_after_first_event: bool = False
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream ``request``: retried while nothing was yielded (or always, with ``retry_after_first_event``)."""
        policy = self.retry
        started = policy.clock()
        spans = telemetry.active() is not None
        with (telemetry.span(f"chat {request.model}", self._span_attributes(request), current=False) if spans
              else _NO_SPAN) as current:
            attempt = 1
            while True:
                yielded = False
                try:
                    async with contextlib.aclosing(self._stream(request, attempt)) as events:
                        async for event in events:
                            yielded = True
                            if current is not None and isinstance(event, MessageStop):
                                telemetry.record_response(current, event.response)
                            yield event
                    return
                except LLMError as exc:
                    if yielded and not retry_after_first_event:
                        raise
                    wait = policy.delay(attempt, exc)
                    if wait is None or (policy.deadline is not None
                                        and policy.clock() - started + wait > policy.deadline):
                        raise
                    await policy.sleep(wait)
                    attempt += 1

    async def stream(
        self,
        messages: Sequence[MessageLike] | str,
        *,
        tools: Sequence[ToolSpec | Mapping[str, Any]] | None = None,
        tool_choice: ToolChoice = "auto",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | str | None = None,
        system: str | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """The answer as events: ``MessageStart``, ``TextDelta``/``ToolCallDelta``/``BlockStop``…, ``UsageEvent``,
        ``MessageStop`` (the whole ``Response``). Arguments are validated before the first request."""
        request = self.build_request(
            messages, tools=tools, tool_choice=tool_choice, max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, stop=stop, system=system, timeout=timeout,
        )
        async with contextlib.aclosing(self._stream_request(request)) as events:
            async for event in events:
                yield event

    # --- the tool loop ---------------------------------------------------------------------------

    async def _turn(self, request: Request, middlewares: Sequence[Middleware]) -> Response:
        if not middlewares:
            return await self._run_complete(request)
        response: Response | None = None
        async with contextlib.aclosing(self._stream_request(request, retry_after_first_event=True)) as events:
            async for event in events:
                await _notify(middlewares, event)
                if isinstance(event, MessageStop):
                    response = event.response
        if response is None:  # an adapter bug, or a stream without its end
            raise LLMConnectionError("The stream ended without a final message.", provider=self.provider,
                                     model=request.model)
        return response

    async def tool_chain(
        self,
        messages: Sequence[MessageLike] | str,
        tools: Sequence[ToolLike],
        *,
        max_iterations: int = 10,
        parallel_tool_calls: bool = True,
        middlewares: Sequence[Middleware] = (),
        require_tool_call: bool = False,
        tool_choice: ToolChoice = "auto",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | str | None = None,
        system: str | None = None,
        timeout: float | None = None,
    ) -> ToolChainResult:
        """Run the model and its tools until it answers without a tool call (see the module docstring)."""
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
            raise ConfigurationError(f"max_iterations must be a positive integer, not {max_iterations!r}.")
        by_name = index_tools(tools)
        specs = [t.spec for t in by_name.values()]
        transcript = to_messages(messages)
        first = _chain_request(self.build_request(
            transcript, tools=specs, tool_choice=tool_choice, max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, stop=stop, system=system, timeout=timeout,
        ))
        what = f"{self.provider} {first.model}"
        # usage summed as plain ints (what Usage.__add__ does), made a Usage where the chain ends
        tokens_in = tokens_out = cache_read = cache_write = 0
        response: Response | None = None
        spans = telemetry.active() is not None
        attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.system": self.provider,
                      "gen_ai.request.model": self.model} if spans else {}
        with telemetry.span("invoke_agent tool_chain", attributes) if spans else _NO_SPAN as chain_span:
            for iteration in range(1, max_iterations + 1):
                request = first if iteration == 1 else _with_messages(first, transcript)
                if middlewares:
                    response = await self._turn(request, middlewares)
                elif telemetry.active() is None:  # _run_complete without a span, one coroutine less
                    response = await self.retry.run(functools.partial(self._complete, request), what=what)
                else:
                    response = await self._run_complete(request)
                turn_usage = response.usage
                tokens_in += turn_usage.input_tokens
                tokens_out += turn_usage.output_tokens
                cache_read += turn_usage.cache_read_input_tokens
                cache_write += turn_usage.cache_write_input_tokens
                if response.content:
                    transcript.append(response.message)
                calls = response.tool_calls
                if not calls:
                    if not require_tool_call:
                        usage = make_usage(tokens_in, tokens_out, cache_read, cache_write)
                        telemetry.record_usage(chain_span, usage)
                        return ToolChainResult(messages=transcript, usage=usage, response=response,
                                               iterations=iteration)
                    transcript.append(Message.user(NUDGE))
                    continue
                if len(calls) == 1 and not middlewares and telemetry.active() is None:
                    # one call, nothing to tell, no span: what _run_tools does, without its machinery
                    call = calls[0]
                    if call.invalid_arguments is None:
                        block, stopped = await run_tool_call(call, by_name)
                    else:
                        block, stopped = _invalid_arguments(call), False
                    transcript.append(Message.tool_results([block]))
                else:
                    results = await self._run_tools(calls, by_name, iteration, parallel_tool_calls, middlewares)
                    transcript.append(Message.tool_results([block for block, _ in results]))
                    stopped = any(stopped for _, stopped in results)
                if stopped:
                    usage = make_usage(tokens_in, tokens_out, cache_read, cache_write)
                    telemetry.record_usage(chain_span, usage)
                    return ToolChainResult(messages=transcript, usage=usage, response=response,
                                           iterations=iteration, stopped_by_tool=True)
            usage = make_usage(tokens_in, tokens_out, cache_read, cache_write)
            telemetry.record_usage(chain_span, usage)
        result = ToolChainResult(messages=transcript, usage=usage, response=response, iterations=max_iterations)
        raise ToolChainLimitError(
            f"The tool chain reached max_iterations={max_iterations} without ending"
            + (" (require_tool_call: no tool raised StopToolChain)" if require_tool_call else "")
            + "; raise max_iterations or check the tools. The transcript is in the error's .result.",
            result=result, provider=self.provider, model=self.model,
        )

    async def _run_tools(
        self,
        calls: Sequence[Any],
        by_name: Mapping[str, Tool],
        iteration: int,
        parallel: bool,
        middlewares: Sequence[Middleware],
    ) -> list[tuple[ToolResultBlock, bool]]:
        spans = telemetry.active() is not None

        async def one(call: Any) -> tuple[ToolResultBlock, bool]:
            with telemetry.span(f"execute_tool {call.name}", {
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call.name,
                "gen_ai.tool.call.id": call.id,
            }) if spans else _NO_SPAN:
                if call.invalid_arguments is not None:
                    outcome = (_invalid_arguments(call), False)
                else:
                    outcome = await run_tool_call(call, by_name)
            if middlewares:
                await _notify(middlewares, ToolResultEvent(iteration=iteration, block=outcome[0]))
            return outcome

        if parallel and len(calls) > 1:
            return list(await asyncio.gather(*(one(c) for c in calls)))
        return [await one(c) for c in calls]

    # --- Asimov's names --------------------------------------------------------------------------

    async def get_generation(
        self,
        messages: Sequence[MessageLike] | str,
        max_tokens: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> str:
        """Asimov's ``get_generation``: the answer's text (``complete`` returns the whole ``Response``)."""
        response = await self.complete(
            messages, max_tokens=max_tokens, top_p=top_p, temperature=temperature, **kwargs
        )
        return response.text

    async def connect_and_listen(
        self,
        messages: Sequence[MessageLike] | str,
        max_tokens: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[str, None]:
        """Asimov's ``connect_and_listen``: the answer's text deltas (``stream`` yields typed events)."""
        stream = self.stream(messages, max_tokens=max_tokens, top_p=top_p, temperature=temperature, **kwargs)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield event.text


_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def _invalid_arguments(call: Any) -> ToolResultBlock:
    """The error result of a call whose arguments were not a JSON object."""
    preview = call.invalid_arguments[:200]
    return ToolResultBlock(tool_call_id=call.id, name=call.name, is_error=True,
                           content=f"The arguments were not a JSON object: {preview!r}")


def _request(**fields: Any) -> Request:
    """``Request(**fields)`` without the frozen dataclass's per-field ``object.__setattr__`` (every field given)."""
    request = object.__new__(Request)
    request.__dict__.update(fields)
    return request


def _with_messages(request: Request, messages: Sequence[Message]) -> Request:
    """A tool chain's next request: ``request`` (its first) with the transcript so far, which holds the first
    request's messages followed by non-system ones only (answers, tool results, nudges). Every field but
    ``messages`` is the first request's, so the first request's memo (``request_memo``) is shared."""
    fields = dict(request.__dict__)
    fields["messages"] = list(messages)
    request = object.__new__(Request)
    request.__dict__.update(fields)
    return request


def _chain_request(request: Request) -> Request:
    """``request`` (a tool chain's first) with an empty memo, shared by the chain's later requests."""
    request.__dict__[_MEMO] = {}
    return request


_MEMO = "_chain_memo"


def request_memo(request: Request) -> dict[str, Any] | None:
    """The memo of a tool chain's requests (None for any other request): adapters keep what they derive from a
    chain's fields other than ``messages`` (tool definitions, system text, options) there, under a key of their
    own, and reuse it on the chain's later turns. Valid because those fields are the same for every request of
    the chain, and the messages only grow by non-system messages (so the system text stays the same too)."""
    memo: dict[str, Any] | None = request.__dict__.get(_MEMO)
    return memo


async def _notify(middlewares: Sequence[Middleware], event: ChainEvent) -> None:
    for middleware in middlewares:
        result = middleware(event)
        if result is not None:
            await result


__all__ = ["NUDGE", "BaseClient", "InferenceClient", "Middleware", "Request", "ToolChainResult", "ToolLike"]
