"""How long a download may take, and how slowly it may crawl.

A read timeout alone never ends a download whose server trickles a few bytes at a time (seen: 40 B/s
for hours): every read returns before the timeout. A ``Deadline`` bounds the whole download (every
attempt and the pauses between them), and a ``SpeedFloor`` ends a transfer whose average over a window
stays below a floor. Both raise ``DownloadTimeoutError``, which is transient: the ``.part`` is kept, so a
later attempt (a Prefect retry, the next call) resumes where this one stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flowmas.errors import DownloadTimeoutError

DEADLINE_SETTING = "FLOWMAS_DOWNLOAD_DEADLINE_SECONDS"
MIN_SPEED_SETTING = "FLOWMAS_HTTP_MIN_SPEED"
SPEED_WINDOW_SETTING = "FLOWMAS_HTTP_MIN_SPEED_WINDOW_SECONDS"


@dataclass
class Deadline:
    """The moment a download must be over (``time.monotonic`` based), with what to say when it passes."""

    seconds: float
    ends: float = field(init=False)

    def __post_init__(self) -> None:
        self.ends = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.ends - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.ends

    def bound(self, timeout: float) -> float:
        """``timeout`` shortened to what is left, so no single wait outlives the deadline."""
        return max(0.001, min(timeout, self.remaining()))

    def error(self, asset: str, label: str, done: int | None = None) -> DownloadTimeoutError:
        got = f" ({done} bytes received)" if done is not None else ""
        return DownloadTimeoutError(
            f"Asset {asset!r}: the download from {label} did not finish within {self.seconds:g} s{got}. The partial "
            f"file is kept and the next attempt resumes it; raise {DEADLINE_SETTING} for slow links.",
            asset=asset,
        )


@dataclass
class SpeedFloor:
    """Ends a transfer whose average speed over ``window`` seconds stays below ``bytes_per_second``.

    ``bytes_per_second == 0`` switches it off. Windows tumble: each one is judged on its own bytes.
    """

    bytes_per_second: float
    window: float
    _start: float = field(default_factory=time.monotonic, init=False)
    _bytes: int = field(default=0, init=False)

    def observe(self, n: int, asset: str, label: str) -> None:
        if not self.bytes_per_second:
            return
        self._bytes += n
        now = time.monotonic()
        elapsed = now - self._start
        if elapsed < self.window:
            return
        rate = self._bytes / elapsed
        self._start, self._bytes = now, 0
        if rate < self.bytes_per_second:
            raise DownloadTimeoutError(
                f"Asset {asset!r}: the transfer from {label} averaged {rate:.0f} B/s over the last {elapsed:.0f} s, "
                f"below {MIN_SPEED_SETTING}={self.bytes_per_second:g} B/s. The partial file is kept and the next "
                f"attempt resumes it; lower {MIN_SPEED_SETTING} (0 switches the check off) for very slow links.",
                asset=asset,
            )
