"""Prefect's ``retry_condition_fn`` for every flowmas task: retry only what the core marks ``TransientError``.

Prefect plans retry delays before a run and cannot take a server's ``Retry-After`` into account; when a
transient error asked for longer than the planned delay, the difference is waited here (Prefect calls the
condition only when a retry is left), capped like the core's backoff. ``transient_only`` serves sync tasks,
``transient_only_async`` async ones (whose state's result must be awaited).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun

from flowmas.errors import TransientError, is_transient
from flowmas.settings import FlowmasSettings

__all__ = ["retry_after_beyond_plan", "transient_only", "transient_only_async"]

log = logging.getLogger("flowmas.tasks")


def transient_only(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a sync task's failure only when it is transient, after any extra wait its ``retry_after`` asks."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the condition decides on any failure
        if not is_transient(exc):
            return False
        extra = retry_after_beyond_plan(task, task_run, exc)
        if extra > 0:
            log.info("The server asked to retry after %.0f s; waiting %.1f s more than planned",
                     getattr(exc, "retry_after", 0) or 0, extra)
            time.sleep(extra)
        return True
    return False


async def transient_only_async(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """The same for an async task."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            await state.aresult()
        except Exception as raised:  # noqa: BLE001 - the condition decides on any failure
            exc = raised
    if not isinstance(exc, Exception) or not is_transient(exc):
        return False
    extra = retry_after_beyond_plan(task, task_run, exc)
    if extra > 0:
        log.info("The server asked to retry later; waiting %.1f s more than planned", extra)
        await asyncio.sleep(extra)
    return True


def retry_after_beyond_plan(task: Task[..., Any], task_run: TaskRun, exc: Exception) -> float:
    """How much longer than Prefect's planned delay ``exc``'s ``retry_after`` asks to wait (0 if not)."""
    retry_after = exc.retry_after if isinstance(exc, TransientError) else None
    if not retry_after:
        return 0.0
    delays = task.retry_delay_seconds or 0
    if isinstance(delays, Sequence):  # Prefect's rule: the n-th retry waits delays[n], the last one repeats
        planned = float(delays[min(max(task_run.run_count - 1, 0), len(delays) - 1)]) if delays else 0.0
    else:
        planned = float(delays)
    cap = FlowmasSettings().max_retry_delay_seconds * 5
    return max(0.0, min(float(retry_after), cap) - planned)
