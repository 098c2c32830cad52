"""Python type hints -> OPACA ``Parameter`` s, and the JSON-Schema ``definitions`` they need.

The platform knows the JSON types ``string``, ``integer``, ``number``, ``boolean``, ``null`` and ``array``
(with ``items``, recursively); any other type name is looked up in ``image.definitions`` and validated as
JSON Schema, and an unknown name makes the platform skip checking. Its OpenAPI export (what LLM front-ends
read) turns ``object`` into an object schema and every other unknown name into a ``$ref`` to
``#/components/schemas/<name>``: a type name that is not defined is a dangling reference there. So every
name emitted here is either a JSON type or a definition emitted with it. The mapping, and how it fixes the
``opaca`` SDK 0.0.9 (anchor §2.7):

=================================== ==================================================== ======================
hint                                Parameter                                            SDK 0.0.9
=================================== ==================================================== ======================
int / float / str / bool / None     integer / number / string / boolean / null           same
Any, ``object``, no hint            ``Any``: a definition with no constraint (any value) ``Any`` undefined
Optional[X], X | None               X with ``required: false``                           object / AttributeError
int | float                         number (a number accepts integers)                   object
other unions (int | str)            definition ``IntegerOrString`` = ``anyOf`` members   object
Literal[...]                        definition ``Literal_a_b`` = ``{"enum": [...]}``     ``Literal`` undefined
Enum subclass                       definition of its name (pydantic's enum schema)      ``Color`` undefined
datetime / date / time              string (ISO 8601; converted back for the callback)   ``datetime``
bytes / bytearray                   string holding **standard base64** (RFC 4648)        ``bytes``
UUID / Path / Decimal               string / string / number                             class name
list, list[X], set[X], Sequence[X]  array, items X (bare: items ``Any``, never array)    bare list: items array
tuple[X, ...], tuple[X, Y]          array of X; of the union X | Y (length checked on    ``tuple``
                                    conversion)
dict, dict[str, X], Mapping         object                                               object
pydantic model, dataclass,          its name; its JSON schema in definitions, nested     model name + schema
TypedDict                           ``$defs`` flattened into definitions, every ``$ref`` with ``$defs``
                                    resolvable inside its own definition
default value                       ``required: false`` + ``defaultValue`` (JSON form)   no defaultValue
return annotation                   ``result`` as above; ``-> None`` is ``null``; none:  ``null`` / TypeError
                                    ``Any``
=================================== ==================================================== ======================

A definition is self-contained, because the platform validates each one as a document of its own: a
reference to another model is inlined; a recursive one stays ``{"$ref": "#/definitions/<name>"}`` and the
definition carries a ``definitions`` member holding it (draft-07's own keyword, resolvable by any
validator). A class that pydantic cannot describe falls back to ``Any`` (its JSON is passed as is).
Names are sanitised to ``[A-Za-z0-9._-]`` (OpenAPI's rule for component names).
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import hashlib
import inspect
import json
import pathlib
import re
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typing_extensions
from pydantic import BaseModel, PydanticUserError, TypeAdapter

from flowmas.opaca.models import ArrayItems, Parameter

ANY = "Any"
"""The type name of "any JSON value": a definition (``ANY_SCHEMA``) that every value satisfies."""
ANY_SCHEMA: dict[str, Any] = {"description": "Any JSON value."}

JSON_TYPES = frozenset({"string", "integer", "number", "boolean", "null", "array", "object"})
"""Type names that need no definition (``object`` is not the platform's, but its OpenAPI export knows it)."""

EMPTY: Any = inspect.Parameter.empty
"""No default value (``inspect.Parameter.empty``)."""

_REF_PREFIX = "#/definitions/"
_NONE_TYPE = type(None)
_PRIMITIVES: dict[Any, str] = {bool: "boolean", int: "integer", float: "number", str: "string", _NONE_TYPE: "null"}
_STRING_LIKE: tuple[type, ...] = (bytes, bytearray, datetime, date, time, uuid.UUID, pathlib.PurePath)
_FORMATS: dict[type, str] = {datetime: "date-time", date: "date", time: "time", uuid.UUID: "uuid"}
_ARRAY_ORIGINS: frozenset[Any] = frozenset({
    list, set, frozenset, tuple, collections.deque, collections.abc.Sequence, collections.abc.MutableSequence,
    collections.abc.Set, collections.abc.MutableSet, collections.abc.Iterable, collections.abc.Collection,
})
_OBJECT_ORIGINS: frozenset[Any] = frozenset({
    dict, collections.OrderedDict, collections.defaultdict, collections.Counter, collections.abc.Mapping,
    collections.abc.MutableMapping,
})
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_LABELS = {"integer": "Integer", "number": "Number", "string": "String", "boolean": "Boolean", "null": "Null",
           "object": "Object", ANY: "Any"}


class TypeMappingError(TypeError):
    """A hint cannot be described to the platform (two different types under one definition name)."""


@dataclass
class Signature:
    """What a callable looks like to the platform: its parameters, its result and the types behind them."""

    parameters: dict[str, Parameter]
    result: Parameter | None
    annotations: dict[str, Any]
    """Python hints by parameter name, and ``"return"``: what arguments are converted to, results from."""
    definitions: dict[str, Any] = field(default_factory=dict)


def safe_name(name: str) -> str:
    """A definition name as OpenAPI allows it (``Model[int]`` -> ``Model_int_``)."""
    return _UNSAFE_NAME.sub("_", name) or "_"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


def strip_annotated(hint: Any) -> Any:
    """``Annotated[X, ...]`` -> ``X`` and ``NewType`` -> its base; constraints are checked on conversion."""
    while True:
        if get_origin(hint) is Annotated:
            hint = get_args(hint)[0]
        elif isinstance(hint, typing.NewType):
            hint = hint.__supertype__
        elif isinstance(hint, typing.TypeVar):
            hint = hint.__bound__ if hint.__bound__ is not None else Any
        else:
            return hint


def is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def admits_none(hint: Any) -> bool:
    """True when ``None`` is a valid value of ``hint`` (``Any``, ``None``, ``Optional[X]``, no hint)."""
    hint = strip_annotated(hint)
    if hint in (EMPTY, Any, object, None, _NONE_TYPE):
        return True
    if is_union(hint):
        return any(admits_none(arg) for arg in get_args(hint))
    if get_origin(hint) is Literal:
        return None in get_args(hint)
    return False


def _is_model_like(hint: Any) -> bool:
    """Classes that pydantic describes with a schema of their own: models, dataclasses, TypedDicts, enums."""
    if not isinstance(hint, type):
        return False
    return (
        issubclass(hint, (BaseModel, Enum))
        or dataclasses.is_dataclass(hint)
        or typing_extensions.is_typeddict(hint)
    )


def _walk_refs(node: Any, rename: Callable[[str], str]) -> Any:
    """A copy of a schema with every ``#/definitions/`` reference renamed."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_REF_PREFIX):
                out[key] = _REF_PREFIX + rename(value[len(_REF_PREFIX):])
            else:
                out[key] = _walk_refs(value, rename)
        return out
    if isinstance(node, list):
        return [_walk_refs(item, rename) for item in node]
    return node


class TypeMapper:
    """Maps hints to parameters, collecting the definitions they need in ``definitions``.

    One mapper per action: a name that two different hints would claim is a ``TypeMappingError``.
    """

    def __init__(self) -> None:
        self.definitions: dict[str, Any] = {}
        self._pool: dict[str, Any] = {}  # raw schemas (references not inlined) by definition name

    # --- parameters ------------------------------------------------------------------------------------

    def parameter(self, hint: Any, default: Any = EMPTY) -> Parameter:
        """The ``Parameter`` of one argument (or of a result, with no default)."""
        hint = strip_annotated(hint)
        required = default is EMPTY
        if is_union(hint):
            members = [arg for arg in get_args(hint) if strip_annotated(arg) is not _NONE_TYPE]
            if len(members) < len(get_args(hint)):
                required = False
                hint = members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007
        elif get_origin(hint) is Literal and None in get_args(hint):
            required = False
            values = tuple(v for v in get_args(hint) if v is not None)
            hint = Literal[values] if values else None
        type_name, items = self.type_of(hint)
        default_value = None
        if default is not EMPTY and default is not None:
            default_value = json_default(default, hint)
        return Parameter(type=type_name, required=required, default_value=default_value, items=items)

    def items(self, hint: Any) -> ArrayItems:
        type_name, items = self.type_of(hint)
        return ArrayItems(type=type_name, items=items)

    def type_of(self, hint: Any) -> tuple[str, ArrayItems | None]:
        """The type name of ``hint`` and, for an array, its items."""
        hint = strip_annotated(hint)
        if hint in (EMPTY, Any, object):
            return self._define(ANY, ANY_SCHEMA), None
        if hint is None or hint is _NONE_TYPE:
            return "null", None
        origin = get_origin(hint)
        if is_union(hint):
            return self._union(hint), None
        if origin is Literal:
            return self._literal(hint), None
        if _is_model_like(hint):
            try:
                return self._model(hint), None
            except PydanticUserError:  # e.g. typing.TypedDict before 3.12: its JSON is passed as is
                return self._define(ANY, ANY_SCHEMA), None
        if hint in _PRIMITIVES:
            return _PRIMITIVES[hint], None
        if origin in _ARRAY_ORIGINS or hint in _ARRAY_ORIGINS:
            return "array", self.items(_element_hint(hint))
        if origin in _OBJECT_ORIGINS or hint in _OBJECT_ORIGINS:
            return "object", None
        if origin in (collections.abc.Awaitable, collections.abc.Coroutine) and get_args(hint):
            return self.type_of(get_args(hint)[-1])
        if isinstance(hint, type):
            if issubclass(hint, _STRING_LIKE) or issubclass(hint, str):
                return "string", None
            if issubclass(hint, Decimal) or issubclass(hint, float):
                return "number", None
            if issubclass(hint, int):
                return "integer", None
        return self._define(ANY, ANY_SCHEMA), None  # nothing better is honest: its JSON is passed as is

    # --- JSON schemas (members of unions, and what definitions contain) --------------------------------

    def schema(self, hint: Any) -> dict[str, Any]:
        """A JSON schema of ``hint``; models and enums are ``$ref`` s into the pool, inlined later."""
        hint = strip_annotated(hint)
        if hint in (EMPTY, Any, object):
            return {}
        if hint is None or hint is _NONE_TYPE:
            return {"type": "null"}
        origin = get_origin(hint)
        if is_union(hint):
            return {"anyOf": [self.schema(arg) for arg in _unique(get_args(hint))]}
        if origin is Literal:
            return _literal_schema(get_args(hint))
        if _is_model_like(hint):
            try:
                return {"$ref": _REF_PREFIX + self._model(hint)}
            except PydanticUserError:
                return {}
        if hint in _PRIMITIVES:
            return {"type": _PRIMITIVES[hint]}
        if origin in _ARRAY_ORIGINS or hint in _ARRAY_ORIGINS:
            args = get_args(hint)
            if origin is tuple and args and args[-1] is not Ellipsis and args != ((),):
                return {"type": "array", "items": self.schema(_element_hint(hint)), "minItems": len(args),
                        "maxItems": len(args)}
            return {"type": "array", "items": self.schema(_element_hint(hint))}
        if origin in _OBJECT_ORIGINS or hint in _OBJECT_ORIGINS:
            args = get_args(hint)
            if len(args) == 2 and strip_annotated(args[1]) not in (Any, object):
                return {"type": "object", "additionalProperties": self.schema(args[1])}
            return {"type": "object"}
        if isinstance(hint, type):
            for kind, fmt in _FORMATS.items():
                if issubclass(hint, kind):
                    return {"type": "string", "format": fmt}
            if issubclass(hint, (bytes, bytearray)):
                return {"type": "string", "contentEncoding": "base64"}
            if issubclass(hint, (str, pathlib.PurePath)):
                return {"type": "string"}
            if issubclass(hint, (float, Decimal)):
                return {"type": "number"}
            if issubclass(hint, int):
                return {"type": "integer"}
        return {}

    def label(self, hint: Any) -> str:
        """A readable name part for ``hint`` in a union's definition name."""
        hint = strip_annotated(hint)
        if isinstance(hint, type):
            for kind, text in ((datetime, "DateTime"), (date, "Date"), (time, "Time"), (bytes, "Bytes"),
                               (uuid.UUID, "Uuid")):
                if issubclass(hint, kind):
                    return text
        if get_origin(hint) is Literal:
            return _literal_name(_literal_schema(get_args(hint)))
        if get_origin(hint) in _OBJECT_ORIGINS and len(get_args(hint)) == 2:
            return "MapOf" + self.label(get_args(hint)[1])
        type_name, items = self.type_of(hint)
        if type_name == "array" and items is not None:
            return "ArrayOf" + self.label(_element_hint(hint))
        return _LABELS.get(type_name, type_name)

    # --- definitions -------------------------------------------------------------------------------------

    def _define(self, name: str, schema: dict[str, Any]) -> str:
        existing = self.definitions.get(name)
        if existing is not None and existing != schema:
            raise TypeMappingError(
                f"Two different types are both called {name!r}: rename one of them (OPACA definitions share "
                "one namespace per container).")
        self.definitions[name] = schema
        return name

    def _union(self, hint: Any) -> str:
        members = _unique(get_args(hint))
        if len(members) == 1:
            return self.type_of(members[0])[0]
        if all(strip_annotated(m) in (int, float) for m in members):
            return "number"  # the platform's number accepts integers; conversion keeps an int an int
        name = "Or".join(self.label(member) for member in members)
        if len(name) > 64 or _UNSAFE_NAME.search(name):
            name = f"Union_{_digest([self.label(m) for m in members])}"
        return self._define(name, self._standalone({"anyOf": [self.schema(m) for m in members]}))

    def _literal(self, hint: Any) -> str:
        schema = _literal_schema(get_args(hint))
        return self._define(_literal_name(schema), schema)

    def _model(self, hint: type) -> str:
        name = self._pool_model(hint)
        for pooled in list(self._pool):  # flatten nested $defs: each is a definition of its own
            self._define(pooled, self._standalone(self._pool[pooled], pooled))
        return name

    def _pool_model(self, hint: type) -> str:
        """Puts the schema of a model, enum, dataclass or TypedDict (and those it uses) into the pool."""
        name = safe_name(hint.__name__)
        if name in self._pool:
            return name
        schema = TypeAdapter(hint).json_schema(ref_template=_REF_PREFIX + "{model}")
        nested: dict[str, Any] = schema.pop("$defs", {})
        ref = schema.get("$ref")
        if set(schema) == {"$ref"} and isinstance(ref, str) and ref.startswith(_REF_PREFIX):
            # a recursive model: pydantic gives a bare reference to itself in $defs
            own = ref[len(_REF_PREFIX):]

            def rename(ref_name: str) -> str:
                return name if ref_name == own else ref_name

            schema = _walk_refs(nested.pop(own), rename)
            nested = {key: _walk_refs(value, rename) for key, value in nested.items()}
        for key, value in nested.items():
            if key in self._pool and self._pool[key] != value:
                raise TypeMappingError(
                    f"Two different types are both called {key!r}: rename one of them (OPACA definitions share "
                    "one namespace per container).")
            self._pool[key] = value
        if name in self._pool and self._pool[name] != schema:
            raise TypeMappingError(f"Two different types are both called {name!r}: rename one of them.")
        self._pool[name] = schema
        return name

    def _standalone(self, schema: dict[str, Any], own_name: str | None = None) -> dict[str, Any]:
        """``schema`` with pool references inlined; recursive ones kept and carried under ``definitions``."""
        needed: list[str] = []

        def inline(node: Any, stack: frozenset[str]) -> Any:
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.startswith(_REF_PREFIX) and ref[len(_REF_PREFIX):] in self._pool:
                    target = ref[len(_REF_PREFIX):]
                    siblings = {k: inline(v, stack) for k, v in node.items() if k != "$ref"}
                    if target in stack:
                        if target not in needed:
                            needed.append(target)
                        return {"$ref": ref, **siblings}
                    return {**inline(self._pool[target], stack | {target}), **siblings}
                return {key: inline(value, stack) for key, value in node.items()}
            if isinstance(node, list):
                return [inline(item, stack) for item in node]
            return node

        start = frozenset({own_name}) if own_name else frozenset()
        result: dict[str, Any] = inline(schema, start)
        carried: dict[str, Any] = {}
        while len(carried) < len(needed):
            for target in [n for n in needed if n not in carried]:
                carried[target] = inline(self._pool[target], frozenset({target}))
        if carried:
            result = {**result, "definitions": carried}
        return result


def _unique(args: tuple[Any, ...]) -> list[Any]:
    seen: list[Any] = []
    for arg in args:
        if arg not in seen:
            seen.append(arg)
    return seen


def _element_hint(hint: Any) -> Any:
    """The element type of a collection hint; a tuple of different types gives their union."""
    args = [arg for arg in get_args(hint) if arg is not Ellipsis and arg != ()]
    if not args:
        return Any
    if get_origin(hint) is tuple and len(set(args)) > 1:
        return Union[tuple(_unique(tuple(args)))]  # noqa: UP007
    return args[0]


def _literal_name(schema: dict[str, Any]) -> str:
    """``Literal_red_green``; values that are not plain words give ``Literal_<digest>`` (names stay distinct)."""
    values = schema["enum"]
    readable = "_".join(str(value) for value in values)
    if (not values or len(readable) > 56 or _UNSAFE_NAME.search(readable)
            or not all(isinstance(v, str) and v and "_" not in v for v in values)):
        return f"Literal_{_digest(values)}"
    return f"Literal_{readable}"


def _literal_schema(values: tuple[Any, ...] | list[Any]) -> dict[str, Any]:
    plain = [v.value if isinstance(v, Enum) else v for v in values]
    schema: dict[str, Any] = {"enum": plain}
    kinds = {_PRIMITIVES.get(type(v)) for v in plain}
    if len(kinds) == 1 and None not in kinds:
        schema["type"] = kinds.pop()
    return schema


def conversion_hint(hint: Any) -> Any:
    """``hint`` with ``bytes`` read as base64 (pydantic's ``Base64Bytes``), wherever a collection holds it."""
    from pydantic.types import Base64Bytes

    if hint in (bytes, bytearray):
        return Base64Bytes
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        inner = conversion_hint(args[0])
        return hint if inner is args[0] else Annotated[(inner, *hint.__metadata__)]
    if not args or origin is None or origin is Literal:
        return hint
    new_args = tuple(conversion_hint(arg) if arg is not Ellipsis else arg for arg in args)
    if new_args == args:
        return hint
    if origin in (Union, types.UnionType):
        return Union[new_args]  # noqa: UP007
    try:
        return hint.copy_with(new_args)
    except AttributeError:
        return origin[new_args]


def json_default(default: Any, hint: Any = Any) -> Any:
    """The JSON form of a default value, or ``None`` when it has none (then no ``defaultValue`` is sent)."""
    try:
        value = TypeAdapter(conversion_hint(strip_annotated(hint)) if hint is not EMPTY else Any).dump_python(
            default, mode="json", by_alias=True, warnings=False)
        json.dumps(value, allow_nan=False)
    except Exception:  # noqa: BLE001 - an exotic default is described without its value, not refused
        return None
    return value


def type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    """The evaluated hints of ``func``; a hint that cannot be evaluated (a local class) counts as missing."""
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception:  # noqa: BLE001 - fall back to one hint at a time below
        pass
    target = inspect.unwrap(func)
    raw = getattr(target, "__annotations__", None) or getattr(type(target).__call__, "__annotations__", {})
    hints: dict[str, Any] = {}
    namespace = getattr(target, "__globals__", {})
    for name, hint in dict(raw).items():
        if isinstance(hint, str):
            try:
                hint = eval(hint, dict(namespace))  # the module's own annotation text, as get_type_hints does
            except Exception:  # noqa: BLE001
                continue
        hints[name] = hint
    return hints


def signature_for(func: Callable[..., Any], *, skip: tuple[str, ...] = ("self", "login_token")) -> Signature:
    """The parameters (by name), result and definitions of ``func``, skipping ``self`` and ``login_token``.

    ``*args`` and ``**kwargs`` are not described (OPACA has no variadic parameters); a positional-only
    parameter cannot be passed by name and is refused.
    """
    signature = inspect.signature(func)
    hints = type_hints(func)
    mapper = TypeMapper()
    parameters: dict[str, Parameter] = {}
    annotations: dict[str, Any] = {}
    for name, param in signature.parameters.items():
        if name in skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise TypeError(f"Parameter {name!r} of {getattr(func, '__qualname__', func)!r} is positional-only; "
                            "OPACA passes arguments by name.")
        hint = hints.get(name, EMPTY)
        parameters[name] = mapper.parameter(hint, param.default)
        annotations[name] = hint if hint is not EMPTY else Any
    return_hint = hints.get("return", EMPTY)
    result = mapper.parameter(return_hint)
    annotations["return"] = return_hint if return_hint is not EMPTY else Any
    return Signature(parameters=parameters, result=result, annotations=annotations, definitions=mapper.definitions)


def parameter_for(hint: Any, default: Any = EMPTY, *, definitions: dict[str, Any] | None = None) -> Parameter:
    """The ``Parameter`` of one hint; the definitions it needs are added to ``definitions`` when given."""
    mapper = TypeMapper()
    if definitions is not None:
        mapper.definitions = definitions
    return mapper.parameter(hint, default)


def normalise_parameter(parameter: Parameter | Mapping[str, Any], definitions: dict[str, Any]) -> Parameter:
    """A parameter given by hand (SDK style, dict or model), with every ``array`` given ``items``.

    The platform rejects every value of an ``array`` without ``items``; ``Any`` items are what was meant.
    """
    param = parameter if isinstance(parameter, Parameter) else Parameter.model_validate(parameter)
    if param.type != "array" and param.type != ANY:
        return param

    def fix(items: ArrayItems | None) -> ArrayItems:
        if items is None:
            definitions.setdefault(ANY, ANY_SCHEMA)
            return ArrayItems(type=ANY)
        if items.type == ANY:
            definitions.setdefault(ANY, ANY_SCHEMA)
        if items.type == "array":
            return ArrayItems(type="array", items=fix(items.items))
        return items

    if param.type == ANY:
        definitions.setdefault(ANY, ANY_SCHEMA)
        return param
    return param.model_copy(update={"items": fix(param.items)})
