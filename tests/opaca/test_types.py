"""Python type hints -> OPACA parameters: every case of the anchor's table (§2.7), each SDK bug shown fixed.

Every definition a parameter names must exist (the platform's OpenAPI export turns an undefined name into a
dangling ``$ref``), be a valid draft-07 schema on its own, and hold no reference it cannot resolve.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from datetime import date, datetime
from enum import Enum, IntEnum
from typing import Annotated, Any, Literal, Optional, Union

import jsonschema
import pytest
from pydantic import BaseModel, Field
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from flowmas.opaca.models import ArrayItems, Parameter
from flowmas.opaca.types import ANY, JSON_TYPES, TypeMappingError, parameter_for, signature_for


class Color(Enum):
    RED = "red"
    GREEN = "green"


class Level(IntEnum):
    LOW = 1
    HIGH = 2


class Engine(BaseModel):
    """An engine."""

    hp: int = Field(gt=0)
    color: Color = Color.RED


class Car(BaseModel):
    name: str
    engine: Engine
    spare: Engine | None = None


class Tree(BaseModel):
    value: int
    children: list[Tree] = []


class Truck(BaseModel):
    load: float


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Movie(TypedDict):
    title: str
    year: int


def mapped(hint: Any, default: Any = Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The wire form of one hint's parameter, and the definitions it brought."""
    definitions: dict[str, Any] = {}
    if default is Any:
        parameter = parameter_for(hint, definitions=definitions)
    else:
        parameter = parameter_for(hint, default, definitions=definitions)
    return parameter.wire(), definitions


def assert_resolvable(parameter: Parameter | ArrayItems, definitions: dict[str, Any]) -> None:
    """Every type name used is a JSON type or a definition that validates standalone without dangling refs."""
    assert parameter.type in JSON_TYPES or parameter.type in definitions, parameter.type
    if parameter.type == "array":
        assert parameter.items is not None, "an array without items refuses every value on the platform"
        assert_resolvable(parameter.items, definitions)
    for name, schema in definitions.items():
        jsonschema.Draft7Validator.check_schema(schema)
        resolver_refs = _refs(schema)
        for ref in resolver_refs:
            assert ref.startswith("#/definitions/"), ref
            assert ref.removeprefix("#/definitions/") in schema.get("definitions", {}), (name, ref)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


# --- primitives --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("hint", "expected"), [
    (int, "integer"), (float, "number"), (str, "string"), (bool, "boolean"), (None, "null"), (type(None), "null"),
])
def test_primitives(hint, expected):
    wire, definitions = mapped(hint)
    assert wire == {"type": expected, "required": True}
    assert definitions == {}


@pytest.mark.parametrize("hint", [Any, object])
def test_any_is_a_defined_type_that_accepts_every_value(hint):
    # SDK: "Any", a name nothing defines (the platform skips it, its OpenAPI export dangles)
    wire, definitions = mapped(hint)
    assert wire["type"] == ANY
    validator = jsonschema.Draft7Validator(definitions[ANY])
    for value in (1, "x", None, [1, [2]], {"a": 1}, True, 1.5):
        assert validator.is_valid(value)


def test_a_missing_hint_is_any():
    def f(x, y: int):  # x has no hint: the point of the test
        return x

    signature = signature_for(f)
    assert signature.parameters["x"].type == ANY
    assert signature.result is not None and signature.result.type == ANY
    assert ANY in signature.definitions


# --- optional and unions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("hint", [Optional[int], int | None, Union[int, None], Union[None, int]])  # noqa: UP007, UP045
def test_optional_is_the_type_and_not_required(hint):
    # SDK: Optional[int] -> object (get_origin(int) is None); int | None -> AttributeError at registration
    wire, definitions = mapped(hint)
    assert wire == {"type": "integer", "required": False}
    assert definitions == {}


def test_optional_list_keeps_its_items():
    wire, _ = mapped(Optional[list[str]])  # noqa: UP045
    assert wire == {"type": "array", "required": False, "items": {"type": "string"}}


@pytest.mark.parametrize("hint", [Union[int, float], int | float, float | int])  # noqa: UP007
def test_int_or_float_is_number(hint):
    # SDK: object
    wire, definitions = mapped(hint)
    assert wire == {"type": "number", "required": True}
    assert definitions == {}


def test_other_unions_are_an_any_of_definition():
    # SDK: Union[int, str] -> object
    wire, definitions = mapped(int | str)
    assert wire == {"type": "IntegerOrString", "required": True}
    assert definitions["IntegerOrString"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    validator = jsonschema.Draft7Validator(definitions["IntegerOrString"])
    assert validator.is_valid(3) and validator.is_valid("x")
    assert not validator.is_valid(1.5) and not validator.is_valid(None) and not validator.is_valid(True)


def test_optional_union_is_the_union_and_not_required():
    wire, definitions = mapped(int | str | None)
    assert wire == {"type": "IntegerOrString", "required": False}
    assert "IntegerOrString" in definitions


def test_union_of_models_inlines_them_and_stays_resolvable():
    definitions: dict[str, Any] = {}
    parameter = parameter_for(Car | Tree, definitions=definitions)
    assert parameter.type == "CarOrTree"
    assert_resolvable(parameter, definitions)
    validator = jsonschema.Draft7Validator(definitions["CarOrTree"])
    assert validator.is_valid({"value": 1, "children": [{"value": 2}]})
    assert validator.is_valid({"name": "a", "engine": {"hp": 3}})
    assert not validator.is_valid({"value": "x"})


# --- literals and enums ------------------------------------------------------------------------------------


def test_literal_is_an_enum_definition():
    # SDK: "Literal", undefined
    wire, definitions = mapped(Literal["fast", "slow"])
    assert wire == {"type": "Literal_fast_slow", "required": True}
    assert definitions["Literal_fast_slow"] == {"enum": ["fast", "slow"], "type": "string"}


def test_literals_that_would_share_a_readable_name_get_distinct_names():
    a, _ = mapped(Literal["a_b"])
    b, _ = mapped(Literal["a", "b"])
    c, _ = mapped(Literal[1, 2])
    d, _ = mapped(Literal["1", "2"])
    assert len({a["type"], b["type"], c["type"], d["type"]}) == 4


def test_literal_with_none_is_optional():
    wire, definitions = mapped(Literal["a", "b", None])
    assert wire["required"] is False
    assert definitions[wire["type"]]["enum"] == ["a", "b"]


@pytest.mark.parametrize(("hint", "values", "kind"), [(Color, ["red", "green"], "string"), (Level, [1, 2], "integer")])
def test_enum_is_a_definition_of_its_name(hint, values, kind):
    # SDK: "Color", undefined
    wire, definitions = mapped(hint)
    assert wire == {"type": hint.__name__, "required": True}
    assert definitions[hint.__name__]["enum"] == values
    assert definitions[hint.__name__]["type"] == kind


# --- strings of other things -------------------------------------------------------------------------------


@pytest.mark.parametrize("hint", [datetime, date, bytes, bytearray])
def test_datetimes_and_bytes_are_strings(hint):
    # SDK: "datetime" / "bytes", undefined
    wire, definitions = mapped(hint)
    assert wire == {"type": "string", "required": True}
    assert definitions == {}


# --- arrays and objects ------------------------------------------------------------------------------------


def test_bare_list_has_permissive_items_not_array():
    # SDK: items "array" (so every flat list was refused by the platform)
    for hint in (list, typing.List, Sequence, set):  # noqa: UP006
        wire, definitions = mapped(hint)
        assert wire == {"type": "array", "required": True, "items": {"type": ANY}}, hint
        assert ANY in definitions


def test_nested_lists():
    wire, _ = mapped(list[list[float]])
    assert wire == {"type": "array", "required": True,
                    "items": {"type": "array", "items": {"type": "number"}}}
    wire, _ = mapped(typing.List[typing.List[int]])  # noqa: UP006
    assert wire["items"] == {"type": "array", "items": {"type": "integer"}}


def test_list_of_optional_elements_admits_null_elements():
    wire, definitions = mapped(list[int | None])
    assert wire["items"] == {"type": "IntegerOrNull"}
    validator = jsonschema.Draft7Validator(definitions["IntegerOrNull"])
    assert validator.is_valid(None) and validator.is_valid(1) and not validator.is_valid("1")


def test_list_of_models():
    definitions: dict[str, Any] = {}
    parameter = parameter_for(list[Car], definitions=definitions)
    assert parameter.wire()["items"] == {"type": "Car"}
    assert_resolvable(parameter, definitions)


@pytest.mark.parametrize("hint", [dict, dict[str, int], typing.Dict[str, Any], typing.Mapping[str, float]])  # noqa: UP006
def test_dicts_are_objects(hint):
    wire, definitions = mapped(hint)
    assert wire == {"type": "object", "required": True}
    assert definitions == {}


def test_tuples_are_arrays():
    # SDK: "tuple", not a JSON type
    wire, _ = mapped(tuple[int, ...])
    assert wire == {"type": "array", "required": True, "items": {"type": "integer"}}
    wire, _ = mapped(tuple[float, float])
    assert wire["items"] == {"type": "number"}
    wire, definitions = mapped(tuple[int, str])
    assert wire["items"] == {"type": "IntegerOrString"}
    assert "IntegerOrString" in definitions


# --- models ------------------------------------------------------------------------------------------------


def test_pydantic_model_flattens_nested_defs_without_dangling_refs():
    definitions: dict[str, Any] = {}
    parameter = parameter_for(Car, definitions=definitions)
    assert parameter.type == "Car"
    assert set(definitions) >= {"Car", "Engine", "Color"}  # nested $defs are definitions of their own
    assert "$defs" not in str(definitions)
    assert_resolvable(parameter, definitions)
    car = jsonschema.Draft7Validator(definitions["Car"])
    assert car.is_valid({"name": "a", "engine": {"hp": 3, "color": "green"}})
    assert not car.is_valid({"name": "a", "engine": {"hp": 3, "color": "blue"}})
    assert definitions["Engine"]["description"] == "An engine."


def test_recursive_model_stays_resolvable():
    definitions: dict[str, Any] = {}
    parameter = parameter_for(Tree, definitions=definitions)
    assert_resolvable(parameter, definitions)
    tree = jsonschema.Draft7Validator(definitions["Tree"])
    assert tree.is_valid({"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}]})
    assert not tree.is_valid({"value": 1, "children": [{"value": "two"}]})


@pytest.mark.parametrize(("hint", "good", "bad"), [
    (Point, {"x": 1, "y": 2.5}, {"x": "a", "y": 1}),
    (Movie, {"title": "t", "year": 1999}, {"title": "t"}),
])
def test_dataclasses_and_typed_dicts_are_definitions(hint, good, bad):
    definitions: dict[str, Any] = {}
    parameter = parameter_for(hint, definitions=definitions)
    assert parameter.type == hint.__name__
    validator = jsonschema.Draft7Validator(definitions[hint.__name__])
    assert validator.is_valid(good) and not validator.is_valid(bad)


def test_two_different_types_of_one_name_are_refused():
    OtherCar = type("Car", (BaseModel,), {"__annotations__": {"wheels": int}})
    definitions: dict[str, Any] = {}
    parameter_for(Car, definitions=definitions)
    with pytest.raises(TypeMappingError, match="'Car'"):
        parameter_for(OtherCar, definitions=definitions)


def test_a_class_pydantic_cannot_describe_is_any():
    class Opaque:
        pass

    class OldTypedDict(typing.TypedDict):  # pydantic refuses typing.TypedDict before Python 3.12
        a: int

    for hint in (Opaque, OldTypedDict):
        wire, definitions = mapped(hint)
        assert wire["type"] == ANY and ANY in definitions


def test_annotated_constraints_keep_the_base_type():
    wire, _ = mapped(Annotated[int, Field(gt=0)])
    assert wire == {"type": "integer", "required": True}


# --- defaults and signatures -------------------------------------------------------------------------------


def test_defaults_are_optional_with_their_json_value():
    # SDK: required false but no defaultValue
    assert mapped(int, 5)[0] == {"type": "integer", "required": False, "defaultValue": 5}
    assert mapped(Color, Color.GREEN)[0]["defaultValue"] == "green"
    assert mapped(datetime, datetime(2024, 5, 1, 12))[0]["defaultValue"] == "2024-05-01T12:00:00"
    assert mapped(bytes, b"\xff\x00")[0]["defaultValue"] == "/wA="  # standard base64
    assert mapped(list[int], [1, 2])[0]["defaultValue"] == [1, 2]
    assert mapped(Engine, Engine(hp=3))[0]["defaultValue"] == {"hp": 3, "color": "red"}
    assert mapped(Optional[int], None)[0] == {"type": "integer", "required": False}  # noqa: UP045
    assert "defaultValue" not in mapped(float, float("nan"))[0]  # no JSON form: described without it


def test_signature_skips_self_and_login_token_and_maps_the_result():
    class Agentish:
        def act(self, login_token: str, car: Car, count: int = 1) -> list[Car]:
            return [car] * count

    signature = signature_for(Agentish().act)
    assert list(signature.parameters) == ["car", "count"]
    assert signature.result is not None and signature.result.wire() == {
        "type": "array", "required": True, "items": {"type": "Car"}}
    assert signature.annotations == {"car": Car, "count": int, "return": list[Car]}
    assert "Car" in signature.definitions

    def unbound(self, login_token: str, x: int) -> None:
        return None

    signature = signature_for(unbound)
    assert list(signature.parameters) == ["x"]
    assert signature.result is not None and signature.result.type == "null"


def test_signature_of_async_function_and_string_annotations():
    async def fetch(url: str, retries: int | None = None) -> dict[str, int]:
        return {}

    signature = signature_for(fetch)
    assert signature.parameters["url"].wire() == {"type": "string", "required": True}
    assert signature.parameters["retries"].wire() == {"type": "integer", "required": False}
    assert signature.result is not None and signature.result.type == "object"


def test_variadic_parameters_are_not_described_and_positional_only_is_refused():
    def variadic(x: int, *args: int, **kwargs: int) -> int:
        return x

    assert list(signature_for(variadic).parameters) == ["x"]

    def positional(x: int, /) -> int:
        return x

    with pytest.raises(TypeError, match="positional-only"):
        signature_for(positional)
