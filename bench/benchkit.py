"""What every benchmark here shares: the statistics it reports and the table it prints.

Each ``bench/*.py`` is run as a script (``python bench/files.py``), so this module is imported as ``benchkit``
from the same directory.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@dataclass
class Row:
    """One line of a benchmark's table: a figure, its baseline measured in the same run, and the target."""

    measure: str
    flowmas: str
    baseline: str
    ratio: str
    target: str
    met: str


def print_table(rows: Sequence[Row], headers: Row | None = None) -> None:
    headers = headers or Row("measure", "flowmas", "baseline", "ratio", "target", "met")
    table = [headers, *rows]
    widths = [max(len(getattr(r, f)) for r in table) for f in Row.__annotations__]
    for index, row in enumerate(table):
        cells = (getattr(row, f).ljust(w) for f, w in zip(Row.__annotations__, widths, strict=True))
        print("  ".join(cells).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))
