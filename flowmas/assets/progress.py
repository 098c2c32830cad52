"""Progress of one transfer: a tqdm bar on a terminal, a log line every N MiB otherwise.

Listeners (for example the Prefect task's progress artifact) get ``(asset, done, total)`` at most once a
second; they are how faces observe a download without the core knowing about them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Protocol

from tqdm import tqdm

ProgressListener = Callable[[str, int, "int | None"], None]

log = logging.getLogger("flowmas.assets")
MiB = 2**20


class Progress(Protocol):
    def start(self, total: int | None, initial: int = 0) -> None: ...
    def advance(self, n: int) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    def start(self, total: int | None, initial: int = 0) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class TransferProgress:
    """Reports one asset's transfer to the terminal or the log, and to listeners."""

    def __init__(
        self,
        asset: str,
        *,
        enabled: bool,
        interval_mb: float,
        listeners: list[ProgressListener] | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.asset = asset
        self.enabled = enabled
        self.interval = int(interval_mb * MiB)
        self.listeners = listeners or []
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.total: int | None = None
        self.done = 0
        self._bar: tqdm | None = None
        self._next_log = self.interval
        self._next_notify = 0.0

    def start(self, total: int | None, initial: int = 0) -> None:
        self.total, self.done = total, initial
        self._next_log = initial + self.interval
        if self.enabled and self.terminal:
            self._bar = tqdm(
                total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=self.asset, leave=False, file=sys.stderr,
            )
        elif self.enabled and initial:
            log.info("Resuming %s at %.1f MiB", self.asset, initial / MiB)
        self._notify(force=True)

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and self.done >= self._next_log:
            self._next_log = self.done + self.interval
            of = f" / {self.total / MiB:.1f} MiB ({100 * self.done / self.total:.0f}%)" if self.total else " MiB"
            log.info("Downloading %s: %.1f%s", self.asset, self.done / MiB, of)
        self._notify()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._notify(force=True)

    def _notify(self, force: bool = False) -> None:
        if not self.listeners:
            return
        now = time.monotonic()
        if force or now >= self._next_notify:
            self._next_notify = now + 1.0
            for listener in self.listeners:
                listener(self.asset, self.done, self.total)
