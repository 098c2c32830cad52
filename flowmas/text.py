"""Text for people: sizes in human units, and user-supplied strings made safe to show in one line."""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(size: float) -> str:
    """``512 B``, ``1.5 KiB``, ``3.0 MiB``: binary units as ``ls -h`` and ``df -h`` print them."""
    if size < 1024:
        return f"{size:.0f} B"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def shorten(text: str, limit: int = 60) -> str:
    """Long user-supplied names cut to ``limit`` characters for messages (the full name is never needed)."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped, so it cannot forge a log line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
