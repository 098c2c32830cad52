"""Neutral types every inference client speaks: messages, content blocks, tool specs, responses, usage, stream events.

Conventions (each adapter translates to and from its wire protocol):

- A ``Message`` has a role (``system``, ``user``, ``assistant``, ``tool``) and a list of content blocks. A plain
  string is accepted for ``content`` and becomes one ``TextBlock``; plain dicts in Asimov's shape
  (``{"role": "user", "content": "hi"}``, role ``tool_result``) are accepted wherever a message is.
- Tool results live in ``tool`` messages (``Message.tool_results``); a ``user`` message may carry them too
  (Anthropic's shape). Adapters merge neighbouring turns where their protocol needs alternation.
- System text comes from ``system=`` and from ``system`` messages, in that order.
- ``Usage.input_tokens`` counts the *uncached* input tokens (Anthropic's meaning); cache reads and writes are
  separate, so ``input_tokens + cache_read_input_tokens + cache_write_input_tokens`` is the prompt size. OpenAI's
  ``prompt_tokens`` include its cached tokens; the OpenAI adapter subtracts them.
- Every model is immutable where it is shared (``ToolSpec``, ``Usage``); nothing here mutates a caller's input.
"""

from __future__ import annotations

import base64
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model, field_validator, model_validator

from flowmas.errors import ConfigurationError

_M = TypeVar("_M", bound=BaseModel)

_set = object.__setattr__


def _built(cls: type[_M], values: dict[str, Any], fields_set: set[str]) -> _M:
    """An instance of ``cls`` from values that are already valid (``values`` holds every field), without
    validating them again: what ``model_construct`` does, minus its per-field bookkeeping (hot paths only; the
    callers check the types first and fall back to validation otherwise)."""
    instance = _new(cls)
    _set(instance, "__dict__", values)
    _set_fields_set(instance, fields_set)
    _set_extra(instance, None)
    _set_private(instance, None)
    return instance


# BaseModel's slots, set through their descriptors (what object.__setattr__ ends up calling, minus the lookup)
_new = object.__new__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


Role = Literal["system", "user", "assistant", "tool"]
StopReason = Literal[
    "end_turn", "tool_use", "max_tokens", "stop_sequence", "content_filter", "context_window_exceeded", "other"
]
"""Normalised stop reasons; ``Response.raw_stop_reason`` keeps the provider's own word."""


class TextBlock(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["text"] = "text"
    text: str


def text_block(text: str) -> TextBlock:
    """``TextBlock(text=text)``, without validation when ``text`` is a ``str``."""
    if type(text) is str:
        return _built(TextBlock, {"type": "text", "text": text}, {"text"})
    return TextBlock(text=text)


class ImageBlock(BaseModel):
    """An image as base64 data (``media_type`` e.g. ``image/png``)."""

    model_config = ConfigDict(frozen=True)

    type: Literal["image"] = "image"
    media_type: str
    data: str

    @classmethod
    def from_bytes(cls, data: bytes, media_type: str) -> ImageBlock:
        return cls(media_type=media_type, data=base64.b64encode(data).decode("ascii"))


class ToolCallBlock(BaseModel):
    """The model asks to call tool ``name`` with ``arguments`` (the parsed JSON object)."""

    model_config = ConfigDict(frozen=True)

    type: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    invalid_arguments: str | None = None
    """The raw text when the model's arguments were not a JSON object (the call is answered with an error)."""


_CALL_FIELDS = {"id", "name", "arguments", "invalid_arguments"}
_STR = frozenset({str})


def tool_call_block(id: Any, name: Any, arguments: Any, invalid_arguments: Any = None) -> ToolCallBlock:
    """``ToolCallBlock(...)`` (``arguments`` copied, as validation does), without validation when the values
    already have their fields' types (``str`` id and name, a ``dict`` with ``str`` keys)."""
    if (type(id) is str and type(name) is str and type(arguments) is dict
            and (invalid_arguments is None or type(invalid_arguments) is str)
            and _STR.issuperset(map(type, arguments))):
        return _built(ToolCallBlock, {"type": "tool_call", "id": id, "name": name, "arguments": dict(arguments),
                                      "invalid_arguments": invalid_arguments}, set(_CALL_FIELDS))
    return ToolCallBlock(id=id, name=name, arguments=arguments, invalid_arguments=invalid_arguments)


class ToolResultBlock(BaseModel):
    """What a tool returned (text, or text and images), for the call ``tool_call_id``; ``is_error`` when it failed."""

    model_config = ConfigDict(frozen=True)

    type: Literal["tool_result"] = "tool_result"
    tool_call_id: str
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool = False
    name: str | None = None
    """The tool's name, for protocols that want it next to the result (optional)."""

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))


_RESULT_FIELDS = {"tool_call_id", "content", "is_error", "name"}
_RESULT_TYPE: frozenset[type] = frozenset({ToolResultBlock})


def tool_result_block(tool_call_id: str, name: str | None, content: Any, is_error: bool = False) -> ToolResultBlock:
    """``ToolResultBlock(...)``, without validation when every value already has its field's type."""
    if (type(tool_call_id) is str and (name is None or type(name) is str) and type(content) is str
            and type(is_error) is bool):
        return _built(ToolResultBlock, {"type": "tool_result", "tool_call_id": tool_call_id, "content": content,
                                        "is_error": is_error, "name": name}, set(_RESULT_FIELDS))
    return ToolResultBlock(tool_call_id=tool_call_id, name=name, content=content, is_error=is_error)


class ThinkingBlock(BaseModel):
    """A reasoning block some models return; adapters send it back unchanged (with its signature) where allowed."""

    model_config = ConfigDict(frozen=True)

    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str | None = None


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolCallBlock | ToolResultBlock | ThinkingBlock, Field(discriminator="type")
]

_ASIMOV_ROLES = {"tool_result": "tool", "developer": "system"}


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    content: list[ContentBlock]

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            role = data.get("role")
            content = data.get("content")
            if isinstance(role, str) and role in _ASIMOV_ROLES:
                data = {**data, "role": _ASIMOV_ROLES[role]}
            if isinstance(content, str):
                data = {**data, "content": [{"type": "text", "text": content}]}
            elif content is None and "content" in data:
                data = {**data, "content": []}
        return data

    @classmethod
    def system(cls, text: str) -> Message:
        return cls(role="system", content=[TextBlock(text=text)])

    @classmethod
    def user(cls, text: str = "", *, images: Sequence[ImageBlock] = ()) -> Message:
        if cls is Message and not images and type(text) is str:  # the common case, already valid
            return _built(Message, {"role": "user", "content": [text_block(text)] if text else []},
                          {"role", "content"})
        blocks: list[ContentBlock] = [TextBlock(text=text)] if text else []
        blocks.extend(images)
        return cls(role="user", content=blocks)

    @classmethod
    def assistant(cls, text: str = "", *, tool_calls: Sequence[ToolCallBlock] = ()) -> Message:
        blocks: list[ContentBlock] = [TextBlock(text=text)] if text else []
        blocks.extend(tool_calls)
        return cls(role="assistant", content=blocks)

    @classmethod
    def tool_results(cls, results: Sequence[ToolResultBlock]) -> Message:
        content: list[ContentBlock] = list(results)
        if cls is Message and _RESULT_TYPE.issuperset(map(type, content)):
            return _built(Message, {"role": "tool", "content": content}, {"role", "content"})
        return cls(role="tool", content=content)

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def tool_calls(self) -> list[ToolCallBlock]:
        return [b for b in self.content if isinstance(b, ToolCallBlock)]


MessageLike = Message | Mapping[str, Any]
_MESSAGES = TypeAdapter(list[Message])


def to_messages(messages: Sequence[MessageLike] | str) -> list[Message]:
    """The caller's messages as ``Message`` objects (a string is one user message); the input is not touched."""
    if isinstance(messages, str):
        return [Message.user(messages)]
    if all(isinstance(m, Message) for m in messages):
        return list(messages)  # type: ignore[arg-type]
    try:
        return _MESSAGES.validate_python(list(messages))
    except ValueError as exc:
        raise ConfigurationError(f"Invalid messages: {exc}") from None


class Usage(BaseModel):
    """Tokens one call (or, summed with ``+``, a whole loop) used. ``input_tokens`` excludes cached tokens."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
            self.cache_write_input_tokens + other.cache_write_input_tokens,
        )

    @property
    def prompt_tokens(self) -> int:
        """All input tokens: uncached, read from the cache and written to it."""
        return self.input_tokens + self.cache_read_input_tokens + self.cache_write_input_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


_USAGE_FIELDS = {"input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens"}


def usage(input_tokens: Any, output_tokens: Any, cache_read: Any = 0, cache_write: Any = 0) -> Usage:
    """``Usage(...)`` from four counts; validated (and coerced) unless they are all plain ``int``s already."""
    if type(input_tokens) is int and type(output_tokens) is int and type(cache_read) is int \
            and type(cache_write) is int:
        return _built(Usage, {"input_tokens": input_tokens, "output_tokens": output_tokens,
                              "cache_read_input_tokens": cache_read, "cache_write_input_tokens": cache_write},
                      set(_USAGE_FIELDS))
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_input_tokens=cache_read,
                 cache_write_input_tokens=cache_write)


class Response(BaseModel):
    """One model answer: content blocks, normalised and raw stop reason, usage, model, latency."""

    content: list[ContentBlock]
    stop_reason: StopReason
    raw_stop_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    id: str | None = None
    provider: str = ""
    latency: float = 0.0
    """Seconds from sending the request to the complete answer (the last attempt's)."""

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def tool_calls(self) -> list[ToolCallBlock]:
        return [b for b in self.content if isinstance(b, ToolCallBlock)]

    @property
    def message(self) -> Message:
        """The answer as an assistant message, to append to a transcript."""
        content = list(self.content)
        if _BLOCK_TYPES.issuperset(map(type, content)):  # blocks are immutable: shared, as validation would
            return _built(Message, {"role": "assistant", "content": content}, {"role", "content"})
        return Message(role="assistant", content=content)


_BLOCK_TYPES = frozenset({TextBlock, ImageBlock, ToolCallBlock, ToolResultBlock, ThinkingBlock})
_RESPONSE_FIELDS = {"content", "stop_reason", "raw_stop_reason", "usage", "model", "id", "provider", "latency"}


def response(
    content: list[ContentBlock], stop_reason: StopReason, raw_stop_reason: Any, usage: Usage, model: Any, id: Any,
    provider: str, latency: float,
) -> Response:
    """``Response(...)`` from an adapter's parts: ``content`` holds neutral blocks and ``stop_reason`` a
    normalised reason (the adapter's own); the provider's values (raw stop reason, model, id) are validated
    unless they already are ``str`` (or None)."""
    if (type(model) is str and (id is None or type(id) is str)
            and (raw_stop_reason is None or type(raw_stop_reason) is str) and type(usage) is Usage
            and type(latency) is float and _BLOCK_TYPES.issuperset(map(type, content))):
        return _built(Response, {"content": content, "stop_reason": stop_reason, "raw_stop_reason": raw_stop_reason,
                                 "usage": usage, "model": model, "id": id, "provider": provider,
                                 "latency": latency}, set(_RESPONSE_FIELDS))
    return Response(content=content, stop_reason=stop_reason, raw_stop_reason=raw_stop_reason, usage=usage,
                    model=model, id=id, provider=provider, latency=latency)


# --- tool specs ---------------------------------------------------------------------------------------

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolSpec(BaseModel):
    """A tool the model may call: ``name``, ``description`` and a JSON schema of its arguments (an object)."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TOOL_NAME.match(value):
            raise ValueError(f"tool name {value!r} must be 1–64 letters, digits, '_' or '-' (every provider's rule)")
        return value

    @classmethod
    def from_function(
        cls, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> ToolSpec:
        """A spec from ``fn``'s signature (type hints → JSON schema) and docstring (summary; ``Args:`` lines)."""
        return cls(**_spec_parts(fn, name=name, description=description)[0])

    @classmethod
    def coerce(cls, value: ToolSpec | Mapping[str, Any]) -> ToolSpec:
        """A spec from itself or a dict: ours, Anthropic's (``input_schema``) or OpenAI's (``function.parameters``)."""
        if isinstance(value, ToolSpec):
            return value
        data: Mapping[str, Any] = value
        if data.get("type") == "function" and isinstance(data.get("function"), Mapping):
            data = data["function"]
        schema = data.get("input_schema", data.get("parameters", data.get("inputSchema")))
        if isinstance(schema, Mapping) and "json" in schema and len(schema) == 1:  # Bedrock's {"json": {...}}
            schema = schema["json"]
        return cls(
            name=data["name"],
            description=data.get("description") or "",
            input_schema=dict(schema) if isinstance(schema, Mapping) else {"type": "object", "properties": {}},
        )


_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^\s+(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Summary (text before ``Args:``) and per-argument descriptions from a Google-style docstring."""
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    summary: list[str] = []
    args: dict[str, str] = {}
    current: str | None = None
    in_args = False
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args = True
            continue
        if in_args:
            if line and not line[0].isspace():  # the next section
                in_args = False
                current = None
                continue
            match = _ARG_LINE.match(line)
            if match and (current is None or len(line) - len(line.lstrip()) <= 4):
                current = match.group(1).lstrip("*")
                args[current] = match.group(2).strip()
            elif current and line.strip():
                args[current] = f"{args[current]} {line.strip()}".strip()
            continue
        summary.append(line)
    return "\n".join(summary).strip(), args


def _spec_parts(
    fn: Callable[..., Any], *, name: str | None, description: str | None
) -> tuple[dict[str, Any], type[BaseModel] | None]:
    """The spec's fields and the pydantic model that validates (and coerces) the arguments."""
    signature = inspect.signature(fn)
    try:
        hints = get_type_hints(fn, include_extras=True)
    except (NameError, TypeError) as exc:
        raise ConfigurationError(f"Cannot read the type hints of tool {fn!r}: {exc}") from None
    summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
    fields: dict[str, Any] = {}
    for pname, param in signature.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or pname in ("self", "cls"):
            continue
        annotation = hints.get(pname, Any)
        default = ... if param.default is param.empty else param.default
        field = Field(default, description=arg_docs[pname]) if pname in arg_docs else Field(default)
        fields[pname] = (annotation, field)
    tool_name = name or getattr(fn, "__name__", "tool")
    try:
        model = create_model(f"{tool_name}_arguments", **fields)
        schema = model.model_json_schema()
    except Exception as exc:  # noqa: BLE001 - pydantic raises several types for unsupported hints
        raise ConfigurationError(f"Cannot build a JSON schema for tool {tool_name!r}: {exc}") from None
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    schema.setdefault("properties", {})
    return {"name": tool_name, "description": description or summary, "input_schema": schema}, model


# --- stream events ------------------------------------------------------------------------------------


class MessageStart(BaseModel):
    """The first event of every stream (and of every retried attempt: ``attempt`` counts from 1)."""

    type: Literal["message_start"] = "message_start"
    model: str = ""
    id: str | None = None
    attempt: int = 1


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    index: int
    text: str


class ToolCallDelta(BaseModel):
    """A piece of a tool call's arguments. ``arguments`` is the partial JSON parsed so far (never raises), and
    ``arguments_json`` the raw text so far; for very large arguments ``arguments`` is refreshed less often."""

    type: Literal["tool_call_delta"] = "tool_call_delta"
    index: int
    id: str
    name: str
    delta: str
    arguments_json: str
    arguments: Any = None


class BlockStop(BaseModel):
    """A content block is complete (``block`` is final: a tool call's arguments fully parsed)."""

    type: Literal["block_stop"] = "block_stop"
    index: int
    block: ContentBlock


class UsageEvent(BaseModel):
    type: Literal["usage"] = "usage"
    usage: Usage


class MessageStop(BaseModel):
    """The last event: the whole ``Response``, assembled from the stream."""

    type: Literal["message_stop"] = "message_stop"
    response: Response


class ToolResultEvent(BaseModel):
    """A tool of a tool chain finished (middlewares only; ``stream`` never yields it)."""

    type: Literal["tool_result"] = "tool_result"
    iteration: int
    block: ToolResultBlock


StreamEvent = MessageStart | TextDelta | ToolCallDelta | BlockStop | UsageEvent | MessageStop
ChainEvent = StreamEvent | ToolResultEvent
ToolChoice = str
"""``"auto"`` | ``"any"`` (alias ``"required"``) | ``"none"`` | a tool's name."""
