"""``ActionThreads``: sync calls off the loop, results handed straight to asyncio futures, threads on demand."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from flowmas.opaca.threads import ActionThreads


async def test_results_and_exceptions_reach_the_future_on_the_loop() -> None:
    threads = ActionThreads(4)
    assert await threads.submit(lambda: 1 + 2) == 3
    with pytest.raises(ZeroDivisionError):
        await threads.submit(lambda: 1 / 0)

    def leave() -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit):  # any BaseException is the caller's to see, not the thread's to die of
        await threads.submit(leave)
    assert await threads.submit(threading.current_thread) is not threading.current_thread()
    assert (await threads.submit(threading.current_thread)).name.startswith("opaca-action_")
    threads.close()


async def test_a_call_never_waits_behind_a_slow_one_while_a_thread_can_be_made() -> None:
    threads = ActionThreads(8)
    release = threading.Event()
    slow = threads.submit(lambda: release.wait(10))
    started = time.monotonic()
    assert await threads.submit(lambda: "quick") == "quick"
    assert time.monotonic() - started < 2 and not slow.done()
    for _ in range(20):  # sequential quick calls reuse the idle thread: no thread per call
        await threads.submit(lambda: None)
    assert threads.threads == 2
    release.set()
    assert await slow is True
    threads.close()


async def test_past_max_threads_calls_queue_and_a_cancelled_one_is_skipped() -> None:
    threads = ActionThreads(1)
    release = threading.Event()
    ran: list[str] = []
    first = threads.submit(lambda: release.wait(10))
    skipped = threads.submit(lambda: ran.append("skipped"))
    queued = threads.submit(lambda: ran.append("queued") or "done")
    skipped.cancel()  # e.g. its timeout expired while it waited for the thread
    await asyncio.sleep(0.05)
    assert not queued.done() and threads.threads == 1
    release.set()
    assert await first is True and await queued == "done"
    assert ran == ["queued"]
    threads.close()


async def test_a_result_arriving_after_a_cancel_is_dropped() -> None:
    threads = ActionThreads(2)
    release = threading.Event()
    future = threads.submit(lambda: release.wait(10) and "late")
    future.cancel()
    release.set()
    assert await threads.submit(lambda: "next") == "next"  # the thread went on; nothing raised on the loop
    assert future.cancelled()
    threads.close()


async def test_close_lets_queued_calls_finish_then_ends_the_threads() -> None:
    threads = ActionThreads(1, name="closing-test")
    release = threading.Event()
    first = threads.submit(lambda: release.wait(10))
    second = threads.submit(lambda: "second")
    threads.close()
    threads.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        threads.submit(lambda: None)
    release.set()
    assert await first is True and await second == "second"
    deadline = time.monotonic() + 5
    while any(t.name.startswith("closing-test_") for t in threading.enumerate()) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name.startswith("closing-test_")]


async def test_when_the_os_refuses_a_thread_the_existing_ones_take_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection of the OS's "can't start new thread" (the only way to get it as root): with threads to
    spare the call queues for them; with none it is refused, and nothing is left half-counted."""
    threads = ActionThreads(4, name="refused-test")
    refuse = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        threads.submit(lambda: None)
    assert threads.threads == 0
    monkeypatch.setattr(threading.Thread, "start", refuse)
    release = threading.Event()
    busy = threads.submit(lambda: release.wait(10))  # one real thread, now busy
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    queued = threads.submit(lambda: "queued")
    assert threads.threads == 1 and not queued.done()
    release.set()
    assert await busy is True and await queued == "queued"  # the one thread took it once free
    monkeypatch.setattr(threading.Thread, "start", refuse)
    threads.close()
