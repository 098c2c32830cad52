"""OpenTelemetry spans for inference calls, with the GenAI semantic-convention attributes; optional.

``opentelemetry-api`` is imported on the first span, not at import time, and nothing is instrumented globally:
spans go to whatever tracer provider the application registered (none registered = the API's no-op). Without
the package every function here is a cheap no-op. Span per call: ``chat {model}`` with ``gen_ai.operation.name``,
``gen_ai.system`` / ``gen_ai.provider.name``, ``gen_ai.request.*`` (model, max_tokens, temperature, top_p),
``gen_ai.response.*`` (model, id, finish_reasons), ``gen_ai.usage.*`` (input/output tokens, cache read and
creation input tokens) and ``error.type`` on failure. A tool chain gets ``invoke_agent tool_chain`` and each tool
``execute_tool {name}``. Message contents are never recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from flowmas.llm.types import Response, Usage

_UNSET: Any = object()
_tracer: Any = _UNSET
_trace: Any = None  # the opentelemetry.trace module, once imported
_checked: tuple[Any, Any, Any] = (_UNSET, _UNSET, None)
"""(tracer, provider, what ``active`` answered for them): re-checked only when either object changes."""


def tracer() -> Any:
    """The flowmas.llm tracer, or None when opentelemetry is not installed."""
    global _tracer, _trace
    if _tracer is _UNSET:
        try:
            from opentelemetry import trace
        except ImportError:
            _tracer = None
        else:
            _trace = trace
            _tracer = trace.get_tracer("flowmas.llm")
    return _tracer


def active() -> Any:
    """The tracer when a span would go somewhere, else None: opentelemetry is not installed, or no tracer provider
    is configured (the API's proxy tracer then hands out no-op spans that carry the parent's context unchanged).

    Checked per call, cheaply: the answer is kept for the (tracer, global provider) pair, so a provider configured
    after the client was built is used from the next call on. The global provider is read as the proxy tracer
    reads it (the API's module global; ``get_tracer_provider()`` if that ever moves).
    """
    t = _tracer if _tracer is not _UNSET else tracer()
    if t is None:
        return None
    trace = _trace
    if trace is None:  # a tracer set from outside (tests) before the first span
        return _check(t, _provider(None))
    provider = getattr(trace, "_TRACER_PROVIDER", _UNSET)
    if provider is _UNSET:
        provider = trace.get_tracer_provider()
    checked = _checked
    if checked[0] is t and checked[1] is provider:
        return checked[2]
    return _check(t, provider)


def _provider(trace: Any) -> Any:
    if trace is None:
        from opentelemetry import trace
    provider = getattr(trace, "_TRACER_PROVIDER", _UNSET)
    return trace.get_tracer_provider() if provider is _UNSET else provider


def _check(t: Any, provider: Any) -> Any:
    global _checked, _trace
    from opentelemetry import trace

    _trace = trace
    noop = isinstance(t, trace.NoOpTracer) or (
        isinstance(t, trace.ProxyTracer)
        and not getattr(t, "_real_tracer", None)
        and (provider is None or isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider))
    )
    result = None if noop else t
    _checked = (t, provider, result)
    return result


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any], *, current: bool = True) -> Iterator[Any]:
    """A span (or None without opentelemetry or a configured tracer provider: see ``active``); an escaping
    exception sets ``error.type`` and an error status.

    ``current=False`` does not make it the current span: for async generators, whose code runs in the
    consumer's context between events (attaching a context there would detach it in another).
    """
    t = active()
    if t is None:
        yield None
        return
    if current:
        manager = t.start_as_current_span(name, record_exception=False, set_status_on_exception=False)
        the_span = manager.__enter__()
    else:
        manager = None
        the_span = t.start_span(name, record_exception=False, set_status_on_exception=False)
    try:
        if the_span.is_recording():
            the_span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        yield the_span
    except GeneratorExit:
        raise  # the consumer stopped early: not an error
    except BaseException as exc:
        if the_span.is_recording():
            from opentelemetry.trace import Status, StatusCode

            the_span.set_attribute("error.type", type(exc).__qualname__)
            the_span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        if manager is not None:
            manager.__exit__(None, None, None)
        else:
            the_span.end()


def request_attributes(
    provider: str, model: str, *, max_tokens: int, temperature: float | None, top_p: float | None
) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": provider,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": max_tokens,
        "gen_ai.request.temperature": temperature,
        "gen_ai.request.top_p": top_p,
    }


def record_usage(current: Any, usage: Usage) -> None:
    if current is None or not current.is_recording():
        return
    current.set_attributes({
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cache_read_input_tokens,
        "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_input_tokens,
    })


def record_response(current: Any, response: Response) -> None:
    if current is None or not current.is_recording():
        return
    attributes: dict[str, Any] = {
        "gen_ai.response.model": response.model,
        "gen_ai.response.finish_reasons": [response.raw_stop_reason or response.stop_reason],
    }
    if response.id:
        attributes["gen_ai.response.id"] = response.id
    current.set_attributes(attributes)
    record_usage(current, response.usage)
