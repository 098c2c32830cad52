"""``ActionThreads``: the threads that run sync actions, handing each result straight to an asyncio future.

Why not ``loop.run_in_executor(ThreadPoolExecutor)``: every call there goes through a ``concurrent.futures``
future (a ``Condition``, an ``RLock``), the executor's Python-level idle semaphore and shutdown lock, and then a
second, chained asyncio future; under load each of those locks is one more wait for the GIL, which the event
loop holds. Here a call is one tuple on a ``SimpleQueue`` and one ``call_soon_threadsafe`` back: measured with
20 concurrent callers of a sync ``Add`` on uvloop, about twice the calls per second.

Threads are made on demand, up to ``max_threads``: a submission claims an idle thread or, when none is idle,
starts one, so a call never waits behind a slow one while a thread could still be made. Past ``max_threads``
calls queue. Threads are daemons (a sync action stuck forever does not hold the process at exit) named
``<prefix>_<n>``. A future cancelled before its thread takes the call skips it; a call already running cannot be
stopped and its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ActionThreads"]

_Call = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # cancelled (a timeout) while the call ran
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class ActionThreads:
    """Runs sync callables off the event loop (module docstring); ``submit`` from the loop's thread only."""

    def __init__(self, max_threads: int = 32, *, name: str = "opaca-action") -> None:
        self.max_threads = max(1, int(max_threads))
        self.name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a call, less the calls already promised to them
        self._threads: list[threading.Thread] = []
        self._numbers = itertools.count()
        self._closed = False

    def submit(self, call: Callable[[], Any]) -> asyncio.Future[Any]:
        """An asyncio future (of the running loop) that ``call()``'s result or exception will resolve."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the action threads are closed")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.max_threads:
                thread = threading.Thread(target=self._work, name=f"{self.name}_{next(self._numbers)}", daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # "can't start new thread": the threads there are will take the call
                    if not self._threads:
                        raise
                else:
                    self._threads.append(thread)
            self._calls.put((call, loop, future))
        return future

    @property
    def threads(self) -> int:
        return len(self._threads)

    def close(self) -> None:
        """Lets the threads go once the calls queued so far are done; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._calls.put(None)

    def _work(self) -> None:
        calls = self._calls
        while True:
            item = calls.get()
            if item is None:
                return
            call, loop, future = item
            if not future.cancelled():
                result: Any = None
                error: BaseException | None = None
                try:
                    result = call()
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's future, whatever it is
                    error = exc
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
                    loop.call_soon_threadsafe(_resolve, future, result, error)
                del item, call, result, error
            with self._lock:
                self._idle += 1
