"""RetryPolicy with an injected clock and sleep; Anthropic cache breakpoints by rule; the HTTP-error rule."""

from __future__ import annotations

from typing import Any

import pytest

from flowmas.errors import (
    ContextLengthExceededError,
    LLMConnectionError,
    LLMHTTPError,
    TransientError,
    TransientLLMHTTPError,
)
from flowmas.llm._http import parse_retry_after, status_error
from flowmas.llm.caching import MAX_BREAKPOINTS, place_breakpoints
from flowmas.llm.retry import RetryPolicy


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy(t: FakeTime, **kw: Any) -> RetryPolicy:
    return RetryPolicy(clock=t.clock, sleep=t.sleep, random=lambda: 1.0, **kw)


def failing(errors: list[BaseException], result: str = "ok") -> Any:
    calls: list[int] = []

    async def attempt(n: int) -> str:
        calls.append(n)
        if errors:
            raise errors.pop(0)
        return result

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


async def test_backoff_is_exponential_capped_and_jittered() -> None:
    t = FakeTime()
    fn = failing([LLMConnectionError("x") for _ in range(5)])
    assert await policy(t, max_attempts=6, initial_delay=1, max_delay=5).run(fn) == "ok"
    assert t.sleeps == [1, 2, 4, 5, 5]
    half = RetryPolicy(random=lambda: 0.5, initial_delay=2)
    assert half.delay(1, LLMConnectionError("x")) == 1.0


async def test_retry_after_is_honoured_and_capped() -> None:
    t = FakeTime()
    fn = failing([TransientLLMHTTPError("429", status=429, retry_after=7.5)])
    assert await policy(t).run(fn) == "ok"
    assert t.sleeps == [7.5]
    too_long = TransientLLMHTTPError("429", status=429, retry_after=3600)
    with pytest.raises(TransientLLMHTTPError):
        await policy(FakeTime(), max_retry_after=60).run(failing([too_long]))


async def test_non_transient_errors_and_exhaustion_raise() -> None:
    t = FakeTime()
    fn = failing([LLMHTTPError("400", status=400)])
    with pytest.raises(LLMHTTPError):
        await policy(t).run(fn)
    assert fn.calls == [1] and t.sleeps == []
    fn = failing([LLMConnectionError(str(i)) for i in range(10)])
    with pytest.raises(LLMConnectionError, match="2"):
        await policy(t, max_attempts=3).run(fn)
    assert fn.calls == [1, 2, 3]


async def test_deadline_bounds_the_whole_call() -> None:
    t = FakeTime()
    fn = failing([LLMConnectionError(str(i)) for i in range(10)])
    with pytest.raises(LLMConnectionError):
        await policy(t, max_attempts=10, initial_delay=4, deadline=10).run(fn)
    assert sum(t.sleeps) <= 10 and t.sleeps == [4, 8][: len(t.sleeps)]


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_http_error_rule() -> None:
    common: dict[str, Any] = {"provider": "p", "model": "m", "request_id": "req-1"}
    assert isinstance(status_error(status=429, message="slow down", **common), TransientError)
    assert isinstance(status_error(status=529, message="overloaded", **common), TransientError)
    assert isinstance(status_error(status=503, message="x", **common), TransientError)
    for status in (400, 401, 403, 404, 413, 422):
        err = status_error(status=status, message="bad", **common)
        assert type(err) is LLMHTTPError and not isinstance(err, TransientError)
        assert err.status == status and err.request_id == "req-1" and "req-1" in str(err) and "bad" in str(err)
    assert isinstance(status_error(status=400, message="prompt is too long: 210000 tokens > 200000 maximum",
                                   **common), ContextLengthExceededError)
    assert isinstance(status_error(status=400, message="x", code="context_length_exceeded", **common),
                      ContextLengthExceededError)
    assert isinstance(status_error(status=400, message="Input is too long for requested model.", **common),
                      ContextLengthExceededError)
    scrubbed = status_error(status=401, message="bad key sk-secret", scrub=lambda s: s.replace("sk-secret", "***"),
                            **common)
    assert "sk-secret" not in str(scrubbed) and "sk-secret" not in (scrubbed.provider_message or "")


def _request(n_messages: int = 3) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    tools = [{"name": "a", "input_schema": {}}, {"name": "b", "input_schema": {}}]
    system = [{"type": "text", "text": "sys"}]
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": [{"type": "text", "text": f"m{i}"}]}
        for i in range(n_messages)
    ]
    return tools, system, messages


def marked(items: list[dict[str, Any]]) -> list[int]:
    return [i for i, item in enumerate(items) if "cache_control" in item]


def test_breakpoints_by_rule() -> None:
    tools, system, messages = _request(4)
    assert place_breakpoints(tools, system, messages) == 4
    assert marked(tools) == [1] and marked(system) == [0]
    assert marked(messages[3]["content"]) == [0]  # the last message
    assert marked(messages[2]["content"]) == [0]  # the previous user turn
    assert marked(messages[0]["content"]) == []


def test_breakpoints_skip_uncacheable_blocks_and_respect_the_limit() -> None:
    tools, system, messages = _request(1)
    messages[0]["content"].append({"type": "thinking", "thinking": "hm", "signature": "s"})
    messages[0]["content"].append({"type": "text", "text": ""})
    place_breakpoints(tools, system, messages)
    assert marked(messages[0]["content"]) == [0]
    tools, system, messages = _request(3)
    for t in tools:
        t["cache_control"] = {"type": "ephemeral"}
    system[0]["cache_control"] = {"type": "ephemeral"}
    messages[0]["content"][0]["cache_control"] = {"type": "ephemeral"}
    assert place_breakpoints(tools, system, messages) == MAX_BREAKPOINTS
    assert marked(messages[2]["content"]) == []  # no room left: 4 were placed by the caller
    assert place_breakpoints([], [], []) == 0


def test_breakpoints_copy_blocks_instead_of_changing_them() -> None:
    tools, system, messages = _request(2)
    original_block = messages[1]["content"][0]
    original_tool = tools[1]
    place_breakpoints(tools, system, messages)
    assert "cache_control" not in original_block and "cache_control" not in original_tool
