"""partial_json: every prefix of a valid JSON text parses to a value consistent with the whole; the whole parses
exactly; chunking does not matter; garbage never raises."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flowmas.llm.partial_json import PartialJSON, parse_partial

scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=12)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def consistent(partial: Any, full: Any) -> bool:
    """``partial`` could be what a prefix of ``full`` shows: keys a subset, lists a prefix, strings a prefix,
    scalars equal; the last element of a list (or any value of a dict) may itself be partial."""
    if partial is None:
        return True
    if isinstance(full, dict):
        return isinstance(partial, dict) and all(k in full and consistent(v, full[k]) for k, v in partial.items())
    if isinstance(full, list):
        return (isinstance(partial, list) and len(partial) <= len(full)
                and all(consistent(p, f) for p, f in zip(partial, full, strict=False)))
    if isinstance(full, str):
        return isinstance(partial, str) and full.startswith(partial)
    return bool(partial == full and type(partial) is type(full))


def dumps(value: Any, style: int) -> str:
    if style == 0:
        return json.dumps(value)
    if style == 1:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value, indent=2)


@settings(max_examples=300, deadline=None)
@given(values, st.integers(0, 2))
def test_every_prefix_is_consistent_and_the_whole_is_exact(value: Any, style: int) -> None:
    text = dumps(value, style)
    for end in range(len(text) + 1):
        partial = parse_partial(text[:end])
        assert consistent(partial, value), (text[:end], partial)
    assert parse_partial(text, final=True) == value
    if isinstance(value, (dict, list, str)):
        assert parse_partial(text) == value  # a container or string is known to be complete


@settings(max_examples=200, deadline=None)
@given(values, st.integers(0, 2), st.lists(st.integers(1, 7), min_size=1, max_size=30))
def test_chunking_does_not_matter(value: Any, style: int, sizes: list[int]) -> None:
    text = dumps(value, style)
    parser = PartialJSON()
    position = 0
    i = 0
    while position < len(text):
        size = sizes[i % len(sizes)]
        parser.feed(text[position:position + size])
        position += size
        i += 1
        assert parser.value() == parse_partial(text[:position])
    assert parser.final() == value


@given(st.text(max_size=60))
def test_garbage_never_raises(text: str) -> None:
    parser = PartialJSON()
    for ch in text:
        parser.feed(ch)
        parser.value()
    parser.final()


def test_examples() -> None:
    assert parse_partial("") is None
    assert parse_partial('{"city": "Par') == {"city": "Par"}
    assert parse_partial('{"city": "Paris", "days": 1') == {"city": "Paris"}
    assert parse_partial('{"city": "Paris", "days": 12,') == {"city": "Paris", "days": 12}
    assert parse_partial('{"a": [1, {"b": tr') == {"a": [1, {}]}
    assert parse_partial('{"s": "x\\') == {"s": "x"}
    assert parse_partial('{"s": "x\\u00e') == {"s": "x"}
    assert parse_partial('{"s": "x\\u00e9') == {"s": "xé"}
    assert parse_partial('{"s": "\\ud83d') == {"s": ""}  # half a surrogate pair waits for the other half
    assert parse_partial("12") is None and parse_partial("12", final=True) == 12
    assert parse_partial('{"a": 1} trailing') == {"a": 1}


def test_huge_input_streams_in_linear_time() -> None:
    big = json.dumps({"text": "x" * 2_000_000, "items": list(range(20_000))})
    parser = PartialJSON()
    started = time.perf_counter()
    for i in range(0, len(big), 4096):
        parser.feed(big[i:i + 4096])
    elapsed = time.perf_counter() - started
    assert parser.value() == json.loads(big)
    assert elapsed < 2.0
