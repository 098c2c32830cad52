"""Graph modules that call a model: ``LLMExecutor`` (one answer) and ``ToolAgentExecutor`` (a tool loop).

    summarise = LLMExecutor(name="summarise", client=OpenAIClient("gpt-4o"), inputs=["notes"],
                            prompt="Summarise for {audience}: {notes}", output_key="summary",
                            config=ModuleConfig(middlewares=[PrintPartials()]))
    agent = ToolAgentExecutor(name="act", client=make_client, tools=[Tool.from_function(search)],
                              prompt="{objective}", output_key="answer")

``client`` is an inference client (``flowmas.llm.InferenceClient``) or a zero-argument factory returning one
(called on the module's first run, e.g. ``OpenAIModel.load("prod").client``). The prompt is a ``str.format``
template over the run's variables: the task's ``objective``, ``type``, ``id`` and ``params`` (also each param
by its own name), then the cache keys listed in ``inputs`` (read in one ``get_many``; a missing one fails the
node, naming it). The answer's text goes to the cache under ``output_key`` (unless it is empty).

**Partials reach the middlewares as they stream.** The engine passes a module's *result* through its
middlewares (``ModuleConfig.middlewares``); an async-generator module would yield one item per node *visit*,
so streaming cannot use that channel. Instead, while the model streams, each partial is handed to the module's
middlewares in list order (``await middleware.process(partial, cache)``; what a middleware returns for a
partial is not used), then the final result goes through them as any module result does. A partial is a dict
with ``status: "partial"`` (so a middleware tells it from a result), ``module``, and ``type``:

    text        index, delta, text (the block's text so far)
    tool_call   index, id, name, arguments (the partial JSON parsed so far), arguments_json
    restart     attempt: a retried model turn starts again (drop what this turn's partials said)
    tool_result name, tool_call_id, is_error, content (ToolAgentExecutor: one per tool the loop ran)

Without middlewares nothing streams: ``LLMExecutor`` calls ``complete`` and ``ToolAgentExecutor`` runs the loop
on ``complete`` turns (cheaper). ``stream=False`` switches streaming off with middlewares too.

Failures. A provider's error that retrying cannot fix (400, 401, 404, a context-window overflow: not
``TransientError``) is raised as ``NonRetryableError``, so the engine fails the node at once; a transient one
(429, 5xx, timeouts) propagates and the node's ``max_retries`` apply. ``ToolAgentExecutor`` reaching
``max_iterations`` answers ``status: "error"`` with the transcript so far.

The graph engine does not import this module, and this module imports ``flowmas.llm`` only when a module
runs: a graph without model calls loads no LLM code.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field, PrivateAttr

from flowmas.cache import Cache
from flowmas.errors import LLMError, NonRetryableError, ToolChainLimitError, TransientError
from flowmas.graph.model import AgentModule, ModuleResult

if TYPE_CHECKING:
    from flowmas.llm import ChainEvent, InferenceClient, Response, ToolChainResult

__all__ = ["LLMExecutor", "ToolAgentExecutor", "partial_of", "render_prompt"]

MAX_TOOL_RESULT_CHARS = 2000
"""How much of each tool result a ``ToolAgentExecutor`` result's ``tool_calls`` repeats (the transcript has all)."""


class _Variables(dict[str, Any]):
    def __missing__(self, key: str) -> Any:
        raise NonRetryableError(f"The prompt template names {{{key}}}, which is neither a task field, a task param "
                                f"nor one of the module's inputs ({', '.join(sorted(self)) or 'none'}).")


async def render_prompt(template: str, cache: Cache, inputs: Sequence[str]) -> str:
    """``template`` formatted with the run's variables (see the module docstring)."""
    task = await cache.get("task", None)
    variables = _Variables()
    if isinstance(task, Mapping):
        params = task.get("params") if isinstance(task.get("params"), Mapping) else {}
        variables.update({str(k): v for k, v in (params or {}).items()})
        variables.update({k: task.get(k) for k in ("id", "type", "objective")})
        variables["params"] = params
    if inputs:
        found = await cache.get_many(list(inputs))
        missing = [key for key in inputs if key not in found]
        if missing:
            raise NonRetryableError(f"Input {missing[0]!r} of the prompt is not in the cache.")
        variables.update(found)
    try:
        return template.format_map(variables)
    except (ValueError, IndexError, AttributeError, KeyError) as exc:
        raise NonRetryableError(f"The prompt template cannot be formatted: {type(exc).__name__}: {exc}") from None


def partial_of(module: str, event: ChainEvent, texts: dict[int, str]) -> dict[str, Any] | None:
    """The partial a stream event becomes (None: the event is not one); ``texts`` holds each block's text so far."""
    from flowmas.llm import MessageStart, TextDelta, ToolCallDelta, ToolResultEvent

    if isinstance(event, TextDelta):
        texts[event.index] = texts.get(event.index, "") + event.text
        return {"status": "partial", "module": module, "type": "text", "index": event.index, "delta": event.text,
                "text": texts[event.index]}
    if isinstance(event, ToolCallDelta):
        return {"status": "partial", "module": module, "type": "tool_call", "index": event.index, "id": event.id,
                "name": event.name, "arguments": event.arguments, "arguments_json": event.arguments_json}
    if isinstance(event, MessageStart):
        texts.clear()
        if event.attempt > 1:
            return {"status": "partial", "module": module, "type": "restart", "attempt": event.attempt}
        return None
    if isinstance(event, ToolResultEvent):
        block = event.block
        return {"status": "partial", "module": module, "type": "tool_result", "name": block.name,
                "tool_call_id": block.tool_call_id, "is_error": block.is_error, "content": block.text}
    return None


class _ModelModule(AgentModule):
    """What both executors share: the client, the prompt, the output key, the call options."""

    client: Any = Field(default=None, exclude=True)
    """An inference client, or a zero-argument factory returning one."""
    prompt: str = "{objective}"
    system: str | None = None
    inputs: list[str] = Field(default_factory=list)
    output_key: str | None = "answer"
    stream: bool = True
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    _client: Any = PrivateAttr(default=None)

    def model_client(self) -> InferenceClient:
        """The client (the factory is called once, on first use)."""
        if self._client is None:
            given = self.client
            if given is None:
                raise NonRetryableError(f"Module {self.name!r} has no client: give client= (an inference client "
                                        "or a factory returning one).")
            self._client = given if hasattr(given, "complete") else given()
        client: InferenceClient = self._client
        return client

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"system": self.system}
        if self.max_tokens is not None:
            options["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            options["temperature"] = self.temperature
        return options

    def _streams(self) -> bool:
        return self.stream and bool(self.config.middlewares)

    async def _to_middlewares(self, partial: dict[str, Any], cache: Cache) -> None:
        for middleware in self.config.middlewares:
            await middleware.process(partial, cache)

    async def _store(self, cache: Cache, text: str) -> None:
        if self.output_key:
            await cache.set(self.output_key, text)


def _final(exc: LLMError) -> Exception:
    """A provider error as the engine should see it: transient ones as they are, the others not retried."""
    if isinstance(exc, TransientError):
        return exc
    return NonRetryableError(str(exc))


def _usage(response: Response | ToolChainResult) -> dict[str, Any]:
    return response.usage.model_dump()


class LLMExecutor(_ModelModule):
    """One model call: the rendered prompt in, the answer's text out (to ``output_key``); partials stream to
    the module's middlewares (see the module docstring)."""

    async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
        from flowmas.llm import MessageStop

        prompt = await render_prompt(self.prompt, cache, self.inputs)
        client = self.model_client()
        response: Response | None = None
        try:
            if self._streams():
                texts: dict[int, str] = {}
                async for event in client.stream(prompt, **self._options()):
                    partial = partial_of(self.name, event, texts)
                    if partial is not None:
                        await self._to_middlewares(partial, cache)
                    if isinstance(event, MessageStop):
                        response = event.response
                if response is None:
                    raise NonRetryableError(f"Module {self.name!r}: the model's stream ended without an answer.")
            else:
                response = await client.complete(prompt, **self._options())
        except LLMError as exc:
            raise _final(exc) from exc
        await self._store(cache, response.text)
        result: ModuleResult = {"status": "success", "result": response.text, "usage": _usage(response),
                                "model": response.model, "stop_reason": response.stop_reason}
        if response.tool_calls:
            result["tool_calls"] = [call.model_dump(mode="json") for call in response.tool_calls]
        return result


ToolsSource = Sequence[Any] | Callable[[], Sequence[Any] | Awaitable[Sequence[Any]]]


class ToolAgentExecutor(_ModelModule):
    """A tool loop (``client.tool_chain``): the rendered prompt, ``tools``, until the model answers without a
    tool call; the answer to ``output_key``, the transcript, tool calls and summed usage in the result."""

    tools: Any = Field(default_factory=list, exclude=True)
    """``flowmas.llm`` tools (``Tool``, functions, ``(fn, schema)`` pairs), or a zero-argument callable (sync or
    async) returning them on every run (e.g. a container's current actions)."""
    max_iterations: int = Field(default=10, ge=1, le=1000)
    parallel_tool_calls: bool = True
    require_tool_call: bool = False
    tool_choice: str = "auto"

    async def _tools(self) -> list[Any]:
        source = self.tools
        if callable(source) and not isinstance(source, Sequence):
            produced = source()
            if inspect.isawaitable(produced):
                produced = await produced
            return list(produced)
        return list(source)

    async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
        prompt = await render_prompt(self.prompt, cache, self.inputs)
        client = self.model_client()
        tools = await self._tools()
        middlewares: list[Callable[[ChainEvent], Awaitable[None]]] = []
        if self._streams():
            texts: dict[int, str] = {}

            async def forward(event: ChainEvent) -> None:
                partial = partial_of(self.name, event, texts)
                if partial is not None:
                    await self._to_middlewares(partial, cache)

            middlewares.append(forward)
        try:
            chain = await client.tool_chain(
                prompt, tools, max_iterations=self.max_iterations, parallel_tool_calls=self.parallel_tool_calls,
                middlewares=middlewares, require_tool_call=self.require_tool_call, tool_choice=self.tool_choice,
                **self._options())
        except ToolChainLimitError as exc:
            limited = exc.result
            return {"status": "error", "error": str(exc), "result": str(exc), "module": self.name,
                    **(_chain_fields(limited) if limited is not None else {})}
        except LLMError as exc:
            raise _final(exc) from exc
        await self._store(cache, chain.text)
        return {"status": "success", "result": chain.text, **_chain_fields(chain)}


def _chain_fields(chain: ToolChainResult) -> dict[str, Any]:
    """Usage, iterations, each tool call with its (shortened) result, and the whole transcript, as JSON."""
    from flowmas.llm import ToolCallBlock, ToolResultBlock

    calls: dict[str, dict[str, Any]] = {}
    for message in chain.messages:
        for block in message.content:
            if isinstance(block, ToolCallBlock):
                calls[block.id] = {"id": block.id, "name": block.name, "arguments": block.arguments}
            elif isinstance(block, ToolResultBlock) and block.tool_call_id in calls:
                text = block.text
                calls[block.tool_call_id].update(
                    is_error=block.is_error,
                    result=text if len(text) <= MAX_TOOL_RESULT_CHARS else text[:MAX_TOOL_RESULT_CHARS] + "…")
    return {"usage": _usage(chain), "iterations": chain.iterations, "stopped_by_tool": chain.stopped_by_tool,
            "tool_calls": list(calls.values()),
            "transcript": [message.model_dump(mode="json") for message in chain.messages]}
