"""Arguments against parameters with the platform's rules (anchor §2.5), then conversion for the callback."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Any, Literal, Optional

import pytest
from pydantic import BaseModel, Field

from flowmas.errors import InvalidArgumentsError
from flowmas.opaca.models import ArrayItems, Parameter
from flowmas.opaca.types import signature_for
from flowmas.opaca.validation import (
    SchemaValidators,
    convert_arguments,
    describe,
    prepare_arguments,
    to_json,
    validate_arguments,
)


def p(type_: str, *, required: bool = True, items: ArrayItems | None = None, default: Any = None) -> Parameter:
    return Parameter(type=type_, required=required, items=items, default_value=default)


def problems(arguments: Any, parameters: dict[str, Parameter], definitions: Any = None) -> list[str]:
    with pytest.raises(InvalidArgumentsError) as caught:
        validate_arguments(arguments, parameters, definitions, action="Act")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("Invalid arguments for action 'Act': ")
    return caught.value.problems


# --- the platform's type rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(("type_", "good", "bad"), [
    ("integer", [0, -3, 10**20], [True, False, 1.0, 1.5, "1", [1], None]),
    ("number", [0, 1.5, -2, 10**20, 1e300], [True, False, "1.5", float("nan"), float("inf"), [1.0]]),
    ("string", ["", "x", "ünï"], [1, True, b"x", ["x"], {"x": 1}]),
    ("boolean", [True, False], [0, 1, "true", None]),
    ("object", [{}, {"a": [1]}], [[], "x", 1]),
])
def test_json_types(type_, good, bad):
    parameters = {"v": p(type_)}
    for value in good:
        assert validate_arguments({"v": value}, parameters) == {"v": value}
    for value in bad:
        found = problems({"v": value}, parameters)
        assert len(found) == 1 and found[0].startswith("v: "), (value, found)


def test_booleans_are_not_numbers():
    found = problems({"x": True, "y": False}, {"x": p("number"), "y": p("integer")})
    assert found == ["x: expected number, got boolean true", "y: expected integer, got boolean false"]


def test_null_type_accepts_only_null_even_when_required():
    assert validate_arguments({"v": None}, {"v": p("null")}) == {"v": None}
    assert problems({"v": 0}, {"v": p("null")}) == ["v: expected null, got integer 0"]


def test_required_must_be_present_and_not_null():
    parameters = {"a": p("integer"), "b": p("string")}
    found = problems({"a": None}, parameters)
    assert found == ["a: required integer, got null", "b: required string, got nothing (missing)"]


def test_optional_may_be_missing_or_null():
    parameters = {"a": p("integer", required=False)}
    assert validate_arguments({}, parameters) == {}
    assert validate_arguments({"a": None}, parameters) == {"a": None}
    assert problems({"a": "x"}, parameters) == ["a: expected integer, got string 'x'"]


def test_extra_parameters_are_invalid():
    found = problems({"a": 1, "b": 2, "c": 3}, {"a": p("integer")})
    assert found == ["unknown parameters 'b', 'c'"]
    found = problems({f"k{i}": i for i in range(10)}, {})
    assert found == ["unknown parameters 'k0', 'k1', 'k2' and 7 more"]


def test_arrays_check_items_recursively():
    matrix = {"m": p("array", items=ArrayItems(type="array", items=ArrayItems(type="number")))}
    assert validate_arguments({"m": [[1, 2.5], [], [3]]}, matrix)
    assert problems({"m": [[1], [2, "3"]]}, matrix) == ["m[1][1]: expected number, got string '3'"]
    assert problems({"m": [1]}, matrix) == ["m[0]: expected array, got integer 1"]
    assert problems({"m": [[None]]}, matrix) == ["m[0][0]: expected number, got null"]
    assert problems({"m": {"0": []}}, matrix) == ["m: expected array, got object with 1 key"]


def test_definitions_are_json_schema_draft7():
    definitions = {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"],
                             "additionalProperties": False}}
    parameters = {"at": p("Point"), "path": p("array", items=ArrayItems(type="Point"))}
    assert validate_arguments({"at": {"x": 1}, "path": [{"x": 2}]}, parameters, definitions)
    found = problems({"at": {"y": 1}, "path": [{"x": 1}, {"x": "far"}]}, parameters, definitions)
    assert found[0].startswith("at: does not match 'Point': ")
    assert found[1].startswith("path[1].x: does not match 'Point': ")


def test_schema_validators_are_cached_per_schema_object():
    schema = {"type": "integer"}
    validators = SchemaValidators({"N": schema})
    first = validators.get("N")
    assert first is not None and validators.get("N") is first
    validators.update({"N": schema, "M": {"type": "string"}})
    assert validators.get("N") is first  # unchanged schema: kept
    validators.update({"N": {"type": "integer"}})
    assert validators.get("N") is not first  # a new schema object: rebuilt
    assert validators.get("Unknown") is None


def test_unknown_type_names_skip_checking():
    assert validate_arguments({"v": {"anything": [1]}}, {"v": p("SomethingElse")}) == {"v": {"anything": [1]}}
    assert validate_arguments({"v": [1, "a", None]}, {"v": p("array", items=ArrayItems(type="Whatever"))})


def test_every_problem_is_listed_on_one_line_without_echoing_values():
    huge = "y" * 1_000_000
    with pytest.raises(InvalidArgumentsError) as caught:
        validate_arguments({"a": huge, "b": True, "zz": 1}, {"a": p("integer"), "b": p("number")}, action="Act")
    message = str(caught.value)
    assert len(message) < 600 and "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy" not in message
    assert "unknown parameter 'zz'" in message
    assert "a: expected integer, got string 'yyyyyyyyyyyyyyyyyyyyyyy…' (1000000 characters)" in message
    assert "b: expected number, got boolean true" in message
    assert "Expected: a (integer), b (number)." in message


def test_describe_is_short():
    assert describe(10**100) == "integer of about 101 digits"
    assert describe(-(10**5000)) == "integer of about 5001 digits"  # str() would refuse it
    assert describe([0] * 5) == "array of 5 items"
    assert describe(float("-inf")) == "-Infinity (not a JSON number)"
    assert describe(object()).startswith("a Python object")


# --- conversion --------------------------------------------------------------------------------------------


class Color(Enum):
    RED = "red"
    GREEN = "green"


class Car(BaseModel):
    name: str
    speed: float = 1.0


def run(func: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    signature = signature_for(func)
    return prepare_arguments(arguments, signature.parameters, signature.definitions, signature.annotations,
                             action=func.__name__)


def test_conversion_to_models_enums_datetimes_and_tuples():
    def act(car: Car, color: Color, when: datetime, pair: tuple[int, str], cars: list[Car],
            tags: set[str], data: bytes, level: Literal["a", "b"], ratio: float) -> None:
        return None

    kwargs = run(act, {"car": {"name": "a"}, "color": "green", "when": "2024-05-01T12:00:00Z",
                       "pair": [1, "x"], "cars": [{"name": "b", "speed": 2}], "tags": ["t", "t"],
                       "data": "/wA=", "level": "b", "ratio": 2})
    assert kwargs["car"] == Car(name="a")
    assert kwargs["color"] is Color.GREEN
    assert kwargs["when"] == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert kwargs["pair"] == (1, "x")
    assert kwargs["cars"] == [Car(name="b", speed=2.0)]
    assert kwargs["tags"] == {"t"}
    assert kwargs["data"] == b"\xff\x00"
    assert kwargs["level"] == "b"
    assert kwargs["ratio"] == 2.0 and isinstance(kwargs["ratio"], float)


def test_conversion_failures_are_invalid_arguments():
    def act(pair: tuple[int, str], positive: Annotated[int, Field(gt=0)], data: bytes) -> None:
        return None

    with pytest.raises(InvalidArgumentsError) as caught:
        run(act, {"pair": [1, "x", 3], "positive": -1, "data": "not base64!"})
    message = str(caught.value)
    assert "pair" in message and "positive" in message and "data" in message
    assert "\n" not in message


def test_enum_values_are_validated_before_conversion():
    def act(color: Color) -> None:
        return None

    with pytest.raises(InvalidArgumentsError, match="color: does not match 'Color'"):
        run(act, {"color": "blue"})


def test_defaults_are_filled_and_null_follows_the_hint():
    def act(a: int = 3, color: Color = Color.GREEN, b: int | None = 4, c: Optional[str] = None) -> None:  # noqa: UP045
        return None

    assert run(act, {}) == {"a": 3, "color": Color.GREEN, "b": 4}
    assert run(act, {"a": None, "b": None, "c": None}) == {"a": 3, "color": Color.GREEN, "b": None, "c": None}
    assert run(act, {"a": 7, "color": "red"}) == {"a": 7, "color": Color.RED, "b": 4}


def test_hand_written_parameters_without_annotations_pass_json_as_is():
    parameters = {"x": p("integer"), "y": p("integer", required=False, default=10), "z": p("string", required=False)}
    assert prepare_arguments({"x": 1}, parameters) == {"x": 1, "y": 10}
    assert convert_arguments({"x": 1, "z": None}, parameters) == {"x": 1, "y": 10, "z": None}


def test_results_in_json_form():
    assert to_json(Car(name="a")) == {"name": "a", "speed": 1.0}
    assert to_json([Car(name="a")], list[Car]) == [{"name": "a", "speed": 1.0}]
    assert to_json(Color.RED, Color) == "red"
    assert to_json(datetime(2024, 1, 1, tzinfo=UTC), datetime) == "2024-01-01T00:00:00Z"
    assert to_json(b"\xff\x00", bytes) == "/wA="
    assert to_json(b"\xff\x00") == "/wA="
    assert to_json((1, 2)) == [1, 2]
    assert to_json(float("nan")) is None
    assert to_json(3, int) == 3 and to_json("x") == "x" and to_json(None) is None
    with pytest.raises((TypeError, ValueError)):
        to_json(object())
