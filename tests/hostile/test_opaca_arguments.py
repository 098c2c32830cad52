"""Absurd and hostile action arguments: each gets an ``InvalidArgumentsError`` with a short one-line message,
never a crash, a hang or a huge echo, and the container is left exactly as it was.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from pydantic import BaseModel

from flowmas.errors import InvalidArgumentsError
from flowmas.opaca import AbstractAgent, Container, Login, LoginMsg, action
from flowmas.opaca.validation import MAX_DEPTH

MAX_MESSAGE = 1500


class Car(BaseModel):
    name: str
    speed: float = 1.0


class Target(AbstractAgent):
    """One action with a parameter of every kind."""

    def __init__(self, container: Container) -> None:
        super().__init__(container, "target")
        self.calls = 0

    @action
    def take(self, count: int = 0, ratio: float = 0.0, name: str = "", matrix: list[list[float]] | None = None,
             anything: Any = None, mapping: dict[str, Any] | None = None, car: Car | None = None,
             numbers: list[int] | None = None) -> int:
        self.calls += 1
        return count

    async def handle_login(self, login: LoginMsg) -> bool:
        return login.login.password == "ok"


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def nested_objects(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def self_containing() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


HUGE = "x" * 5_000_000
HOSTILE: dict[str, Any] = {
    "deep array as a matrix": {"matrix": nested(10_000)},
    "deep array as any": {"anything": nested(10_000)},
    "deep array of numbers": {"numbers": nested(5_000)},
    "deep objects as a mapping": {"mapping": nested_objects(10_000)},
    "deep objects in a model": {"car": {"name": "a", "speed": nested_objects(5_000)}},
    "just past the depth limit": {"anything": nested(MAX_DEPTH + 1)},
    "a list containing itself": {"anything": self_containing()},
    "a list containing itself as numbers": {"numbers": self_containing()},
    "huge string as an integer": {"count": HUGE},
    "huge string as a model": {"car": HUGE},
    "huge parameter name": {HUGE: 1},
    "huge integer as a string": {"name": -(10**5000)},
    "NaN": {"ratio": float("nan")},
    "Infinity": {"ratio": float("inf")},
    "-Infinity in a matrix": {"matrix": [[1.0, float("-inf")]]},
    "NaN deep in any": {"anything": {"a": [1, {"b": float("nan")}]}},
    "NaN in a mapping": {"mapping": {"k": float("nan")}},
    "NaN in a model": {"car": {"name": "a", "speed": float("nan")}},
    "NUL in a name": {"count\x00": 1},
    "unicode names": {"cöunt": 1, "𝔠𝔬𝔲𝔫𝔱": 2, "\u202ecount": 3, "count\n": 4},
    "10k extra keys": {f"extra{i}": i for i in range(10_000)},
    "non-string keys": {1: 2, None: 3, (1, 2): 4},
    "non-string key inside": {"mapping": {1: "x"}},
    "python objects": {"anything": object()},
    "a set": {"anything": {1, 2}},
    "bytes": {"name": b"raw"},
    "bool as count": {"count": True},
    "float as count": {"count": 1.0},
}
NOT_OBJECTS: dict[str, Any] = {
    "a list": [1, 2, 3],
    "a string": '{"count": 1}',
    "null": None,
    "a number": 42,
    "bytes": b'{"count": 1}',
    "a huge list": list(range(1_000_000)),
}


def state(box: Container) -> str:
    return json.dumps(box.info_wire(), sort_keys=True)


@pytest.fixture
def box() -> Container:
    return Container({"imageName": "hostile"}, environ={})


@pytest.mark.parametrize("case", list(HOSTILE) + [f"not an object: {name}" for name in NOT_OBJECTS])
async def test_hostile_arguments_are_refused_briefly(box: Container, case: str):
    target = Target(box)
    token = await box.login(Login(username="u", password="ok"))
    before = state(box)
    arguments = NOT_OBJECTS[case.removeprefix("not an object: ")] if case.startswith("not an object") else HOSTILE[case]
    started = time.monotonic()
    with pytest.raises(InvalidArgumentsError) as caught:
        await box.invoke("Take", arguments)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert len(message) < MAX_MESSAGE, message[:300]
    assert "\n" not in message and "\x00" not in message and "\u202e" not in message
    assert "x" * 100 not in message
    assert target.calls == 0
    assert state(box) == before and box.is_logged_in(token)
    assert await box.invoke("Take", {"count": 7}) == 7  # and the container still works


async def test_arguments_are_not_modified(box: Container):
    Target(box)
    arguments = {"count": "seven", "mapping": {"a": [1, 2]}}
    snapshot = json.dumps(arguments)
    with pytest.raises(InvalidArgumentsError):
        await box.invoke("Take", arguments)
    assert json.dumps(arguments) == snapshot


async def test_large_valid_payloads_still_pass(box: Container):
    Target(box)
    matrix = [[float(i)] * 100 for i in range(1_000)]
    assert await box.invoke("Take", {"count": 1, "matrix": matrix, "name": HUGE,
                                     "anything": nested(MAX_DEPTH - 2)}) == 1
