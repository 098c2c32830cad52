"""Tools for ``tool_chain``: a ``ToolSpec`` plus the callable that runs it, and how results reach the model.

- ``Tool.from_function(fn)`` (or the ``@tool`` decorator) builds the spec from type hints and the docstring and
  calls ``fn(**arguments)`` after validating (and coercing) the arguments with the same pydantic model; invalid
  arguments become an error result the model sees. (A signature of plain required ``str``/``int``/``float``/
  ``bool`` parameters given exactly those keys with values of exactly those types skips the model: validation
  would pass them unchanged.)
- Asimov's shape ``(fn, schema_dict)`` is accepted: ``fn`` gets the arguments dict as its one argument.
- Sync callables run in a worker thread (``asyncio.to_thread``; ``thread=False`` calls them on the loop, for
  trivial tools); async ones are awaited.
- A tool raising ``StopToolChain`` (or ``StopAsyncIteration``, Asimov's signal) ends the chain; its value (the
  exception's first argument, if any) becomes the tool result. Any other exception becomes an error result
  (``is_error=True``, "ExceptionType: message") that the model sees; the chain goes on.
- Results: a ``str`` is sent as is; text/image blocks as blocks; everything else as JSON (pydantic models and
  dataclasses dumped; unknown objects as their ``str``) — never Python's ``repr`` of a dict.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import orjson
from pydantic import BaseModel, ValidationError

from flowmas.errors import ConfigurationError
from flowmas.llm.types import (
    ImageBlock,
    TextBlock,
    ToolCallBlock,
    ToolResultBlock,
    ToolSpec,
    _spec_parts,
    tool_result_block,
)


class StopToolChain(Exception):
    """Raised by a tool to end the chain; ``StopToolChain(value)`` makes ``value`` the tool's result."""

    @property
    def value(self) -> Any:
        return self.args[0] if self.args else "Done."


_STOP_SIGNALS = (StopToolChain, StopAsyncIteration)


class Tool:
    """A tool the model may call: ``spec`` and the function behind it."""

    __slots__ = ("_fields", "_is_async", "_model", "_plain", "_takes_dict", "fn", "spec", "thread")

    def __init__(
        self,
        spec: ToolSpec | Mapping[str, Any],
        fn: Callable[..., Any],
        *,
        arguments_model: type[BaseModel] | None = None,
        takes_dict: bool = False,
        thread: bool = True,
    ) -> None:
        self.spec = ToolSpec.coerce(spec)
        self.fn = fn
        self.thread = thread
        self._model = arguments_model
        self._fields = tuple(arguments_model.model_fields) if arguments_model is not None else ()
        self._plain: tuple[tuple[str, type], ...] | None = None  # set by from_function for its own models
        self._takes_dict = takes_dict
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an async callable object
        )

    @classmethod
    def from_function(
        cls, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None, thread: bool = True
    ) -> Tool:
        """``thread=False`` calls a sync ``fn`` on the event loop (for trivial, non-blocking tools)."""
        parts, model = _spec_parts(fn, name=name, description=description)
        made = cls(ToolSpec(**parts), fn, arguments_model=model, thread=thread)
        made._plain = _plain_fields(model)  # a model of default config built from the signature (not a caller's)
        return made

    @classmethod
    def coerce(cls, value: Tool | tuple[Callable[..., Any], Any] | Callable[..., Any]) -> Tool:
        """A ``Tool``, Asimov's ``(fn, schema)`` pair, or a plain function."""
        if isinstance(value, Tool):
            return value
        if isinstance(value, tuple) and len(value) == 2 and callable(value[0]):
            return cls(ToolSpec.coerce(value[1]), value[0], takes_dict=True)
        if callable(value):
            return cls.from_function(value)
        raise ConfigurationError(f"Not a tool: {value!r}. Pass a Tool, a function, or a (function, schema) pair.")

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"Tool({self.spec.name!r})"

    async def invoke(self, arguments: Mapping[str, Any]) -> Any:
        """Run the tool with the model's arguments (validated when the tool was built from a function)."""
        if self._takes_dict:
            call: Callable[[], Any] = lambda: self.fn(dict(arguments))  # noqa: E731
        elif self._model is not None:
            kwargs = _plain_arguments(self._plain, arguments)
            if kwargs is None:  # not the plain case: validated (and coerced) by the model
                validated = self._model.model_validate(dict(arguments))
                kwargs = {name: getattr(validated, name) for name in self._fields}
            elif self._is_async:  # the common case, without the indirection below
                return await self.fn(**kwargs)
            call = lambda: self.fn(**kwargs)  # noqa: E731
        else:
            call = lambda: self.fn(**arguments)  # noqa: E731
        if self._is_async:
            return await cast(Awaitable[Any], call())
        result = await asyncio.to_thread(call) if self.thread else call()
        if inspect.isawaitable(result):
            result = await result
        return result


_PLAIN_TYPES = (str, int, float, bool)


def _plain_fields(model: type[BaseModel] | None) -> tuple[tuple[str, type], ...] | None:
    """``(name, type)`` of every field when all are required, plain ``str``/``int``/``float``/``bool`` without
    constraints, aliases or validators (a signature like ``add(a: int, b: int)``); else None."""
    if model is None or not model.model_fields:
        return None
    if model.model_config.get("strict") or getattr(model, "__pydantic_decorators__", None) is None:
        return None
    decorators = model.__pydantic_decorators__
    if any((decorators.validators, decorators.field_validators, decorators.root_validators,
            decorators.model_validators)):
        return None
    fields: list[tuple[str, type]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if (annotation not in _PLAIN_TYPES or info.metadata or not info.is_required() or info.alias is not None
                or info.validation_alias is not None):
            return None
        fields.append((name, annotation))  # type: ignore[arg-type]
    return tuple(fields)


def _plain_arguments(plain: tuple[tuple[str, type], ...] | None, arguments: Mapping[str, Any]) -> dict[str, Any] | None:
    """The keyword arguments when ``arguments`` holds exactly the plain fields, each a value of exactly its type:
    what validation would give (such values pass unchanged), without it. None: validate."""
    if plain is None or type(arguments) is not dict or len(arguments) != len(plain):
        return None
    kwargs: dict[str, Any] = {}
    for name, kind in plain:
        value = arguments.get(name, _MISSING)
        if type(value) is not kind:
            return None
        kwargs[name] = value
    return kwargs


_MISSING: Any = object()


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None) -> Any:
    """Decorator: ``@tool`` or ``@tool(name=..., description=...)`` turns a function into a ``Tool``."""
    if fn is None:
        return lambda f: Tool.from_function(f, name=name, description=description)
    return Tool.from_function(fn, name=name, description=description)


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return _safe_str(value)


def encode_result(value: Any) -> str | list[TextBlock | ImageBlock]:
    """A tool's return value as tool-result content (see the module docstring)."""
    if isinstance(value, str):
        return value
    if type(value) in _JSON_TYPES:  # neither blocks nor a list of them: skips the (slower) model class checks
        return _json(value)
    if isinstance(value, (TextBlock, ImageBlock)):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, (TextBlock, ImageBlock)) for v in value):
        return list(value)
    return _json(value)


_JSON_TYPES = frozenset({int, float, bool, type(None), dict})


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return _safe_str(value)


def describe_exception(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()[:10]
        )
        return f"Invalid arguments: {problems}"
    text = _safe_str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _safe_str(value: Any) -> str:
    """``str(value)``, or its type's name when even that raises (hostile objects)."""
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not end the chain
        return f"<{type(value).__name__}>"


async def run_tool_call(call: ToolCallBlock, tools: Mapping[str, Tool]) -> tuple[ToolResultBlock, bool]:
    """Run one call; returns its result block and whether the tool asked the chain to stop."""
    found = tools.get(call.name)
    if found is None:
        known = ", ".join(sorted(tools)) or "none"
        return ToolResultBlock(tool_call_id=call.id, name=call.name, is_error=True,
                               content=f"Unknown tool {call.name!r}. Available tools: {known}."), False
    try:
        value = await found.invoke(call.arguments)
    except _STOP_SIGNALS as stop:
        value = stop.value if isinstance(stop, StopToolChain) else (stop.args[0] if stop.args else "Done.")
        return tool_result_block(call.id, call.name, encode_result(value)), True
    except Exception as exc:  # noqa: BLE001 - a failing tool is reported to the model, not raised
        return tool_result_block(call.id, call.name, describe_exception(exc), is_error=True), False
    return tool_result_block(call.id, call.name, encode_result(value)), False


def index_tools(tools: Sequence[Any]) -> dict[str, Tool]:
    out: dict[str, Tool] = {}
    for item in tools:
        t = Tool.coerce(item)
        if t.name in out:
            raise ConfigurationError(f"Two tools are named {t.name!r}; tool names must be unique.")
        out[t.name] = t
    return out
