"""Arguments against an action's parameters with the platform's rules, then converted for the callback.

The rules are the platform's ``ArgumentValidator`` (anchor §2.5), so a call the platform forwards is never
refused here and a direct call gets the 400 the platform would have given:

- the arguments are a JSON object; every required parameter is present and not ``null``; an optional one
  may be missing or ``null``; a name that is not a parameter is an error;
- ``integer`` is a JSON integer (not ``true``, not ``1.0``; the platform's Jackson ``isInt()`` is further
  limited to 32 bits, which is not copied); ``number`` is an integer or a finite float, never a boolean;
  ``string``, ``boolean`` and ``null`` are what they say; ``array`` checks each element against ``items``,
  recursively (``null`` elements only where the items admit them);
- any other name is a definition (``image.definitions`` or the action's own), validated as JSON Schema
  draft-07 unless the schema names its ``$schema``; validators are built once per schema and cached;
- a name that is no definition skips checking, as on the platform (``definitionsByUrl`` is not fetched);
  ``object`` (the platform skips it) is checked to be a JSON object, what its OpenAPI export promises.

Beyond the platform, for values no JSON document can hold: non-finite floats (NaN, Infinity), keys that are
not strings and nesting deeper than ``MAX_DEPTH`` are refused, so hostile Python callers get a 400 too.

``InvalidArgumentsError``'s message lists every problem on one line (parameter, expected, got) and never
echoes a long value: values are shown cut short, names escaped. Conversion (``convert_arguments``) fills
defaults and turns JSON into what the hints ask for, with pydantic: models, enums, datetimes, tuples,
base64 ``bytes``; a value pydantic refuses (a constraint, a tuple of the wrong length) is also an
``InvalidArgumentsError``.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the lock
from jsonschema.protocols import Validator  # type: ignore[import-untyped]
from pydantic import TypeAdapter, ValidationError

from flowmas.errors import InvalidArgumentsError
from flowmas.opaca.models import ArrayItems, Parameter
from flowmas.opaca.types import ANY, admits_none, conversion_hint, strip_annotated
from flowmas.text import one_line, shorten

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in an argument; deeper is no real payload."""
MAX_PROBLEMS_SHOWN = 8
_NAMES_SHOWN = 3

Converter = Callable[[Any], Any]


# --- showing values without echoing them --------------------------------------------------------------


def describe(value: Any) -> str:
    """A short description of a JSON value for messages: its type and a preview, never the whole thing."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        # str() of a huge int is slow, and refused past 4300 digits: estimate the size instead
        text = str(value) if abs(value) < 10**30 else f"of about {int(value.bit_length() * 0.30103) + 1} digits"
        return f"integer {text}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN (not a JSON number)"
        if math.isinf(value):
            return f"{'-' if value < 0 else ''}Infinity (not a JSON number)"
        return f"number {value!r}"
    if isinstance(value, str):
        size = f" ({len(value)} characters)" if len(value) > 24 else ""
        return f"string {show(value, 24)}{size}"
    if isinstance(value, list | tuple):
        return f"array of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, Mapping):
        return f"object with {len(value)} key{'s' if len(value) != 1 else ''}"
    return f"a Python {shorten(type(value).__name__, 40)} (not JSON)"


def show(text: Any, limit: int = 40) -> str:
    """A name or string quoted, unprintable characters escaped, cut to ``limit`` characters."""
    if not isinstance(text, str):
        return describe(text)
    return "'" + one_line(shorten(text, limit)).replace("'", "\\'") + "'"


# --- JSON Schema validators ----------------------------------------------------------------------------


class SchemaValidators:
    """JSON Schema validators of a ``definitions`` mapping, built on first use and kept.

    ``update`` swaps the mapping and keeps the validators of every schema object that did not change, so a
    container rebuilding its merged definitions after a change does not rebuild them all.
    """

    def __init__(self, definitions: Mapping[str, Any] | None = None) -> None:
        self._definitions: Mapping[str, Any] = definitions or {}
        self._cache: dict[str, tuple[Any, Validator]] = {}

    @property
    def definitions(self) -> Mapping[str, Any]:
        return self._definitions

    def update(self, definitions: Mapping[str, Any]) -> None:
        self._definitions = definitions
        self._cache = {name: entry for name, entry in self._cache.items() if definitions.get(name) is entry[0]}

    def __contains__(self, name: object) -> bool:
        return name in self._definitions

    def get(self, name: str) -> Validator | None:
        """The validator of definition ``name``; ``None`` for a name that is no definition (skip checking)."""
        schema = self._definitions.get(name)
        if schema is None:
            return None
        entry = self._cache.get(name)
        if entry is not None and entry[0] is schema:
            return entry[1]
        validator = make_validator(schema)
        self._cache[name] = (schema, validator)
        return validator


def make_validator(schema: Any) -> Validator:
    """A validator of ``schema``: draft-07 (the platform's dialect) unless the schema says ``$schema``."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator: Validator = cls(schema)
    return validator


def check_schema(name: str, schema: Any) -> str | None:
    """What is wrong with a definition (``None`` if it is a valid schema)."""
    if not isinstance(schema, dict | bool):
        return f"definition {show(name)} is {describe(schema)}, not a JSON schema"
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"definition {show(name)} is not a valid JSON schema: {shorten(one_line(exc.message), 160)}"
    return None


# --- validation -------------------------------------------------------------------------------------------


def _non_json(value: Any, path: str) -> str | None:
    """Why ``value`` cannot be JSON (NaN, a non-string key, nesting beyond ``MAX_DEPTH``), or ``None``."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, str | bool | int) or node is None:
            continue
        if isinstance(node, float):
            if not math.isfinite(node):
                return f"{_path(where)}: expected a JSON value, got {describe(node)}"
            continue
        if depth >= MAX_DEPTH:
            return f"{_path(where)}: nested deeper than {MAX_DEPTH} levels"
        if isinstance(node, list | tuple):
            if len(node) <= 64:
                stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(node))
            else:  # no path strings for every element of a long array: only the bad one is named
                stack.extend((item, where, depth + 1) for item in node)
            continue
        if isinstance(node, Mapping):
            for key, item in node.items():
                if not isinstance(key, str):
                    return f"{_path(where)}: object keys must be strings, got {describe(key)}"
                stack.append((item, f"{where}.{shorten(one_line(key), 20)}", depth + 1))
            continue
        return f"{_path(where)}: expected a JSON value, got {describe(node)}"
    return None


def _path(where: str) -> str:
    """A value's path for a message: long ones keep their start and end (``a[0][0]…[0].b``)."""
    return where if len(where) <= 60 else f"{where[:40]}…{where[-19:]}"


def _check(value: Any, type_name: str, items: ArrayItems | None, validators: SchemaValidators,
           where: str) -> str | None:
    """The problem with one value of type ``type_name`` (the platform's switch), or ``None``."""
    if type_name == "string":
        ok = isinstance(value, str)
    elif type_name == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif type_name == "number":
        if isinstance(value, float) and not math.isfinite(value):
            return f"{where}: expected number, got {describe(value)}"
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif type_name == "boolean":
        ok = isinstance(value, bool)
    elif type_name == "null":
        ok = value is None
    elif type_name == "array":
        if not isinstance(value, list | tuple):
            return f"{where}: expected array, got {describe(value)}"
        if items is None or items.type == ANY or (items.type not in _BUILTIN and items.type not in validators):
            return _non_json(value, where)
        for index, element in enumerate(value):
            problem = _check(element, items.type, items.items, validators, f"{where}[{index}]")
            if problem is not None:
                return problem
        return None
    elif type_name == "object":
        if not isinstance(value, Mapping):
            return f"{where}: expected object, got {describe(value)}"
        return _non_json(value, where)
    else:
        problem = _non_json(value, where)
        if problem is not None or type_name == ANY:
            return problem
        validator = validators.get(type_name)
        if validator is None:
            return None  # the platform skips a type it has no definition of; so do we
        try:
            error = next(iter(validator.iter_errors(value)), None)
        except RecursionError:
            return f"{where}: nested too deeply to check against {show(type_name)}"
        if error is None:
            return None
        at = "".join(f"[{p}]" if isinstance(p, int) else f".{shorten(one_line(str(p)), 20)}" for p in error.path)
        return f"{where}{at}: does not match {show(type_name)}: {_schema_problem(error)}"
    if ok:
        return None
    return f"{where}: expected {type_name}, got {describe(value)}"


def _schema_problem(error: Any) -> str:
    """A JSON Schema error said without jsonschema's ``repr`` of the value (which may be megabytes)."""
    keyword, expected, instance = error.validator, error.validator_value, error.instance
    if keyword == "type":
        return f"expected {shorten(one_line(str(expected)), 40)}, got {describe(instance)}"
    if keyword in ("enum", "const"):
        allowed = shorten(one_line(json.dumps(expected, default=str)), 80)
        return f"expected {'one of ' if keyword == 'enum' else ''}{allowed}, got {describe(instance)}"
    if keyword == "required":
        missing = [name for name in expected if isinstance(instance, Mapping) and name not in instance]
        return f"missing required propert{'ies' if len(missing) > 1 else 'y'} " + ", ".join(
            show(name, 30) for name in missing[:_NAMES_SHOWN])
    if keyword == "additionalProperties" and isinstance(instance, Mapping):
        allowed_names = set(error.schema.get("properties", {}))
        extra = [key for key in instance if key not in allowed_names]
        more = f" and {len(extra) - _NAMES_SHOWN} more" if len(extra) > _NAMES_SHOWN else ""
        return "unexpected properties " + ", ".join(show(key, 30) for key in extra[:_NAMES_SHOWN]) + more
    if keyword in ("anyOf", "oneOf"):
        return f"got {describe(instance)}, which is none of the allowed types"
    rule = shorten(one_line(json.dumps(expected, default=str)), 40)
    return f"{keyword} {rule} not met by {describe(instance)}"


_BUILTIN = frozenset({"string", "integer", "number", "boolean", "null", "array", "object"})


def validate_arguments(arguments: object, parameters: Mapping[str, Parameter],
                       definitions: SchemaValidators | Mapping[str, Any] | None = None, *,
                       action: str | None = None) -> dict[str, Any]:
    """``arguments`` checked with the platform's rules; the same values as a ``dict``.

    Raises ``InvalidArgumentsError`` naming every problem.
    """
    validators = definitions if isinstance(definitions, SchemaValidators) else SchemaValidators(definitions)
    if not isinstance(arguments, Mapping):
        problem = f"the arguments must be a JSON object (parameter name -> value), got {describe(arguments)}"
        raise InvalidArgumentsError(f"Invalid arguments for {_label(action)}: {problem}.", [problem])
    problems: list[str] = []
    unknown: list[Any] = [key for key in arguments if not isinstance(key, str) or key not in parameters]
    if unknown:
        names = ", ".join(show(key, 30) for key in unknown[:_NAMES_SHOWN])
        more = f" and {len(unknown) - _NAMES_SHOWN} more" if len(unknown) > _NAMES_SHOWN else ""
        plural = "s" if len(unknown) > 1 else ""
        problems.append(f"unknown parameter{plural} {names}{more}")
    for name, parameter in parameters.items():
        present = name in arguments
        value = arguments[name] if present else None
        if value is None:
            if parameter.required and not (present and parameter.type == "null"):
                problems.append(f"{name}: required {_expected(parameter)}, got "
                                f"{'null' if present else 'nothing (missing)'}")
            continue
        found = _check(value, parameter.type, parameter.items, validators, name)
        if found is not None:
            problems.append(found)
    if problems:
        raise InvalidArgumentsError(_message(_label(action), problems, parameters), problems)
    return dict(arguments)


def _label(action: str | None) -> str:
    return f"action {show(action)}" if action is not None else "the action"


def _expected(parameter: Parameter | ArrayItems) -> str:
    if parameter.type == "array":
        return f"array of {_expected(parameter.items) if parameter.items is not None else ANY}"
    return parameter.type


def _message(label: str, problems: list[str], parameters: Mapping[str, Parameter]) -> str:
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    if len(problems) > MAX_PROBLEMS_SHOWN:
        shown += f"; and {len(problems) - MAX_PROBLEMS_SHOWN} more problems"
    expected = ", ".join(
        f"{shorten(name, 30)} ({_expected(p)}{'' if p.required else ', optional'})"
        for name, p in list(parameters.items())[:12])
    if len(parameters) > 12:
        expected += f" and {len(parameters) - 12} more"
    return f"Invalid arguments for {label}: {shown}. Expected: {expected or 'no parameters'}."


# --- conversion for the callback ---------------------------------------------------------------------------

_PASS_THROUGH: frozenset[Any] = frozenset({int, str, bool, Any, object, type(None), None})


def _to_float(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


@functools.lru_cache(maxsize=2048)
def _cached_converter(annotation: Any) -> Converter | None:
    return _build_converter(annotation)


def _build_converter(annotation: Any) -> Converter | None:
    base = strip_annotated(annotation)
    if base is annotation and annotation in _PASS_THROUGH:
        return None
    if annotation is float:
        return _to_float
    adapter: TypeAdapter[Any] = TypeAdapter(conversion_hint(annotation))
    return adapter.validate_python


def converter_for(annotation: Any) -> Converter | None:
    """How a validated JSON value becomes a value of ``annotation`` (``None``: it already is one).

    A type pydantic cannot handle (a plain class) gets no converter: its JSON is passed as is.
    """
    try:
        return _cached_converter(annotation)
    except TypeError:  # an unhashable annotation (Annotated with odd metadata): build it uncached
        try:
            return _build_converter(annotation)
        except Exception:  # noqa: BLE001 - pydantic cannot describe it: pass the JSON as is
            return None
    except Exception:  # noqa: BLE001 - pydantic cannot describe it: pass the JSON as is
        return None


def convert_arguments(arguments: Mapping[str, Any], parameters: Mapping[str, Parameter],
                      annotations: Mapping[str, Any] | None = None, *,
                      converters: Mapping[str, Converter | None] | None = None,
                      action: str | None = None) -> dict[str, Any]:
    """Validated arguments as the callback's keyword arguments: defaults filled, values converted.

    A missing (or ``null``) optional parameter gets its ``defaultValue``; without one it is left out, so the
    function's own default applies. ``null`` is passed as ``None`` where the hint admits ``None`` (or there is
    no hint). ``converters`` (by name) are used when given, else built from ``annotations``.
    """
    annotations = annotations or {}
    kwargs: dict[str, Any] = {}
    problems: list[str] = []
    for name, parameter in parameters.items():
        value = arguments.get(name)
        hint = annotations.get(name, Any)
        if value is None:
            if name in arguments and admits_none(hint):
                kwargs[name] = None
                continue
            if parameter.default_value is None:
                continue  # the callback's own default applies
            value = parameter.default_value
        convert = converters.get(name) if converters is not None else converter_for(hint)
        if convert is None:
            kwargs[name] = value
            continue
        try:
            kwargs[name] = convert(value)
        except ValidationError as exc:
            problems.append(_pydantic_problem(name, exc))
        except RecursionError:
            problems.append(f"{name}: nested too deeply")
        except (TypeError, ValueError) as exc:
            problems.append(f"{name}: {shorten(one_line(str(exc)), 120)}")
    if problems:
        raise InvalidArgumentsError(_message(_label(action), problems, parameters), problems)
    return kwargs


def _pydantic_problem(name: str, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for error in errors[:3]:
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{shorten(one_line(str(p)), 20)}"
                      for p in error.get("loc", ()))
        parts.append(f"{name}{loc}: {shorten(one_line(str(error.get('msg', ''))), 100)}")
    if len(errors) > 3:
        parts.append(f"{name}: and {len(errors) - 3} more errors")
    return "; ".join(parts) or f"{name}: invalid"


def prepare_arguments(arguments: object, parameters: Mapping[str, Parameter],
                      definitions: SchemaValidators | Mapping[str, Any] | None = None,
                      annotations: Mapping[str, Any] | None = None, *,
                      converters: Mapping[str, Converter | None] | None = None,
                      action: str | None = None) -> dict[str, Any]:
    """``validate_arguments`` then ``convert_arguments``: what an invocation does before the call."""
    checked = validate_arguments(arguments, parameters, definitions, action=action)
    return convert_arguments(checked, parameters, annotations, converters=converters, action=action)


def build_converters(annotations: Mapping[str, Any], names: Iterable[str]) -> dict[str, Converter | None]:
    """The converter of each parameter in ``names`` (built now, so a bad hint fails at registration)."""
    return {name: converter_for(annotations.get(name, Any)) for name in names}


# --- results ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2048)
def _cached_serializer(annotation: Any) -> Callable[[Any], Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(conversion_hint(annotation))

    def dump(value: Any) -> Any:
        return adapter.dump_python(value, mode="json", by_alias=True, warnings=False)

    return dump


def to_json(value: Any, annotation: Any = Any) -> Any:
    """A result in its JSON form: pydantic's ``mode="json"`` dump for the declared type (bytes: base64).

    Raises ``TypeError``/``ValueError`` (pydantic's serialization error) for what JSON cannot carry.
    """
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return value
    if kind is float:
        return value if math.isfinite(value) else None  # NaN/Infinity have no JSON form; null, as JSON libraries
    if isinstance(value, bytes | bytearray) and strip_annotated(annotation) in (Any, object, bytes, bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    try:
        dump = _cached_serializer(annotation)
    except Exception:  # noqa: BLE001 - unhashable, or unknown to pydantic: uncached, else by the value's type
        try:
            dump = _cached_serializer.__wrapped__(annotation)
        except Exception:  # noqa: BLE001
            dump = _cached_serializer(Any)
    return dump(value)
