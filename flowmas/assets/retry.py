"""When to try again: exponential backoff with jitter, for transient errors only, honouring Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass

from flowmas.errors import TransientError


@dataclass(frozen=True)
class Backoff:
    """``delay(n)`` for the n-th retry (0-based): base x 2^n, +/- jitter, capped; Retry-After wins if longer."""

    base: float = 5.0
    cap: float = 60.0
    jitter: float = 0.5

    def delay(self, attempt: int, error: BaseException | None = None, rng: random.Random | None = None) -> float:
        raw = min(self.cap, self.base * (2**attempt))
        spread = raw * self.jitter
        delay: float = max(0.0, raw + (rng or random).uniform(-spread, spread))
        retry_after = error.retry_after if isinstance(error, TransientError) else None
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap * 5))
        return delay
