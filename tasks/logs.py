"""flowmas's own log lines in the Prefect run logs.

The core logs through ``logging.getLogger("flowmas...")``; under Prefect that logger has no handler and
inherits the root's WARNING, so a 286 MiB download's run log showed only Prefect's lines. Every task and
flow of this package calls ``forward_core_logs()`` first: it gives the ``flowmas`` logger (once per
process) a Prefect API handler that sends each record to the run of the thread that logged it, and drops
records logged outside any run instead of warning about them, and sets the logger to INFO if it was
unset. Where ``PREFECT_LOGGING_EXTRA_LOGGERS`` already routes ``flowmas``, nothing is added (no duplicate
lines).
"""

from __future__ import annotations

import logging
import threading

from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler

_lock = threading.Lock()


class RunLogHandler(APILogHandler):
    """Prefect's API log handler, silent outside a flow or task run."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            get_run_context()
        except MissingContextError:
            return
        super().emit(record)


def forward_core_logs(level: int = logging.INFO) -> None:
    """Send ``flowmas`` log records of ``level`` and above to the run logs (idempotent, thread-safe)."""
    logger = logging.getLogger("flowmas")
    with _lock:
        if not any(isinstance(handler, APILogHandler) for handler in logger.handlers):
            logger.addHandler(RunLogHandler())
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
