"""The one retry policy of the inference clients: exponential backoff with full jitter, ``retry-after`` honoured.

Only ``TransientError``s are retried (flowmas.errors decides what is transient; the adapters map 429, 5xx,
timeouts and dropped connections to it). A delay is ``uniform(0, min(max_delay, initial * multiplier**n))``
("full jitter"), or the provider's ``retry_after`` when it said one (capped at ``max_retry_after``: a provider
asking for longer makes us give up now, with its error). ``deadline`` bounds the whole call, sleeps included:
a retry whose sleep would pass it is not made. The SDKs' own retries are off (``max_retries=0``), so this is
the only loop. ``clock``, ``sleep`` and ``random`` are injectable for tests.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from flowmas.errors import ConfigurationError, TransientError

log = logging.getLogger("flowmas.llm")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry transient failures. ``max_attempts=1`` means no retries."""

    max_attempts: int = 4
    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 20.0
    max_retry_after: float = 60.0
    deadline: float | None = None
    """Seconds for the whole call, retries and sleeps included (None: attempts alone bound it)."""
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False, compare=False)
    random: Callable[[], float] = field(default=_random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"RetryPolicy.max_attempts must be at least 1, not {self.max_attempts}.")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ConfigurationError("RetryPolicy delays must be >= 0 and the multiplier >= 1.")

    def delay(self, attempt: int, exc: BaseException) -> float | None:
        """Seconds to wait after failed ``attempt`` (1-based), or None when ``exc`` must not be retried now."""
        if not isinstance(exc, TransientError) or attempt >= self.max_attempts:
            return None
        retry_after = exc.retry_after
        if retry_after is not None and retry_after >= 0:
            return retry_after if retry_after <= self.max_retry_after else None
        ceiling = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return ceiling * self.random()

    async def run(self, attempt_fn: Callable[[int], Awaitable[T]], *, what: str = "request") -> T:
        """Await ``attempt_fn(attempt)`` until it succeeds or fails for good; the last error propagates."""
        started = self.clock()
        attempt = 1
        while True:
            try:
                return await attempt_fn(attempt)
            except TransientError as exc:
                wait = self.delay(attempt, exc)
                if wait is None:
                    raise
                if self.deadline is not None and self.clock() - started + wait > self.deadline:
                    raise
                log.info("%s failed (%s: %s); retry %d/%d in %.2f s", what, type(exc).__name__, exc, attempt,
                         self.max_attempts - 1, wait)
                await self.sleep(wait)
                attempt += 1


NO_RETRIES = RetryPolicy(max_attempts=1)
