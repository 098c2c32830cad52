"""``EmbeddedCache``: the whole ``Cache`` contract in process memory (the default of ``flowmas up``).

Entries are stored encoded (JSON bytes or tagged raw bytes), exactly as ``RedisCache`` stores them, so the two
backends behave alike: a ``get`` returns a fresh object, never one another task may be mutating.

**Concurrency.** Every operation holds one ``threading.Lock`` for a few dictionary operations and never awaits
under it, so the cache may be shared by several event loops in several threads (a Prefect task runner's
threads, a FastAPI app and a flow in one process). A waiting ``get_message`` is a future on *its* loop,
resolved with ``call_soon_threadsafe`` by whichever thread publishes: it wakes on publish, never polls. One
waiter is woken per message; a waiter that times out or is cancelled after being woken passes the wake-up on,
so no message sits in a mailbox while a consumer waits. Subscribers get each broadcast through a queue on
their own loop (unbounded: a subscriber that never reads grows it).

**TTLs** use ``clock`` (``time.monotonic``; injectable for tests). An expired entry disappears when it is next
read or listed, and a sweep every ``SWEEP_EVERY`` writes drops those never read again.

Layout: ``values[prefix][full key]`` and ``boxes[prefix][full mailbox name]``, so listing or clearing a
namespace costs the size of that namespace, never of the whole cache.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Final

from flowmas.cache.base import (
    RAISE,
    RAW_TAG,
    BaseCache,
    NamespaceDump,
    check_dump,
    check_max_length,
    check_timeout,
    check_ttl,
    decode,
    dump_entries,
    encode,
)
from flowmas.errors import MailboxError

__all__ = ["EmbeddedCache"]

SWEEP_EVERY: Final = 1024


@dataclass(slots=True)
class _Entry:
    data: bytes
    expires: float | None


@dataclass(slots=True, eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


@dataclass(slots=True, eq=False)
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[bytes | None]


def _resolve(future: asyncio.Future[None], error: BaseException | None = None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


@dataclass
class _Store:
    """The state every view of one ``EmbeddedCache`` shares."""

    clock: Callable[[], float]
    lock: threading.Lock = field(default_factory=threading.Lock)
    values: dict[str, dict[str, _Entry]] = field(default_factory=dict)
    boxes: dict[str, dict[str, deque[bytes]]] = field(default_factory=dict)
    box_expires: dict[tuple[str, str], float] = field(default_factory=dict)
    waiters: dict[tuple[str, str], deque[_Waiter]] = field(default_factory=dict)
    subscribers: dict[tuple[str, str], list[_Subscriber]] = field(default_factory=dict)
    writes: int = 0
    closed: bool = False

    # All methods below are called with ``lock`` held.

    def live(self, prefix: str, full: str) -> _Entry | None:
        space = self.values.get(prefix)
        entry = space.get(full) if space else None
        if entry is not None and entry.expires is not None and entry.expires <= self.clock():
            self.drop(prefix, full)
            return None
        return entry

    def drop(self, prefix: str, full: str) -> bool:
        space = self.values.get(prefix)
        if space is None or space.pop(full, None) is None:
            return False
        if not space:
            del self.values[prefix]
        return True

    def put(self, prefix: str, full: str, data: bytes, ttl: float | None) -> None:
        expires = None if ttl is None else self.clock() + ttl
        self.values.setdefault(prefix, {})[full] = _Entry(data, expires)
        self.wrote()

    def sweep(self) -> None:
        now = self.clock()
        for prefix, space in list(self.values.items()):
            for full in [f for f, e in space.items() if e.expires is not None and e.expires <= now]:
                self.drop(prefix, full)
        for prefix, full in [where for where, expires in self.box_expires.items() if expires <= now]:
            self.drop_box(prefix, full)

    def wrote(self) -> None:
        self.writes += 1
        if self.writes % SWEEP_EVERY == 0:
            self.sweep()

    def live_items(self, prefix: str) -> list[tuple[str, _Entry]]:
        now = self.clock()
        space = self.values.get(prefix, {})
        expired = [full for full, entry in space.items() if entry.expires is not None and entry.expires <= now]
        for full in expired:
            self.drop(prefix, full)
        return list(self.values.get(prefix, {}).items())

    def push(self, prefix: str, full: str, messages: Iterable[bytes], *, max_length: int | None = None,
             ttl: float | None = None) -> None:
        box = self.live_box(prefix, full)
        if box is None:
            box = self.boxes.setdefault(prefix, {}).setdefault(full, deque())
        count = len(box)
        box.extend(messages)
        added = len(box) - count
        if max_length is not None:
            while len(box) > max_length:
                box.popleft()
        if ttl is None:
            self.box_expires.pop((prefix, full), None)
        else:
            self.box_expires[(prefix, full)] = self.clock() + ttl
        self.wrote()
        for _ in range(min(added, len(box))):
            if not self.wake_one((prefix, full)):
                break

    def live_box(self, prefix: str, full: str) -> deque[bytes] | None:
        space = self.boxes.get(prefix)
        box = space.get(full) if space else None
        if box is not None:
            expires = self.box_expires.get((prefix, full))
            if expires is not None and expires <= self.clock():
                self.drop_box(prefix, full)
                return None
        return box

    def pop(self, prefix: str, full: str) -> bytes | None:
        box = self.live_box(prefix, full)
        if not box:
            return None
        data = box.popleft()
        if not box:
            self.drop_box(prefix, full)
        return data

    def drop_box(self, prefix: str, full: str) -> None:
        self.box_expires.pop((prefix, full), None)
        space = self.boxes.get(prefix)
        if space is not None:
            space.pop(full, None)
            if not space:
                del self.boxes[prefix]

    def wake_one(self, where: tuple[str, str]) -> bool:
        queue = self.waiters.get(where)
        while queue:
            waiter = queue.popleft()
            if not queue:
                del self.waiters[where]
            if waiter.future.done():
                continue
            try:
                waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
            except RuntimeError:  # its loop is closed: that waiter is gone
                continue
            return True
        return False

    def forget(self, where: tuple[str, str], waiter: _Waiter) -> None:
        """A waiter leaves without a message: take it off the queue, and pass on a wake-up it may have had."""
        queue = self.waiters.get(where)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self.waiters[where]
        space = self.boxes.get(where[0])
        if space and space.get(where[1]):
            self.wake_one(where)


class EmbeddedCache(BaseCache):
    """The ``Cache`` contract in process memory; see the module docstring for what is thread-safe."""

    def __init__(self, *, namespace: str = "", suffix: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(namespace=namespace, suffix=suffix)
        self._store = _Store(clock)

    def __repr__(self) -> str:
        return f"EmbeddedCache(namespace={self.prefix!r})"

    # --- values -------------------------------------------------------------------------------------------

    async def get(self, key: str, default: Any = RAISE, *, raw: bool = False) -> Any:
        full, prefix = self._full(key), self.prefix
        with self._store.lock:
            entry = self._store.live(prefix, full)
        if entry is None:
            if default is RAISE:
                raise KeyError(key)
            return default
        return decode(key, entry.data, raw=raw)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        wanted = {key: self._full(key) for key in keys}
        prefix = self.prefix
        with self._store.lock:
            found = {key: entry.data for key, full in wanted.items()
                     if (entry := self._store.live(prefix, full)) is not None}
        return {key: decode(key, data) for key, data in found.items()}

    async def set(self, key: str, value: Any, *, raw: bool = False, ttl: float | None = None) -> None:
        full, prefix, ttl = self._full(key), self.prefix, check_ttl(ttl)
        data = encode(key, value, raw=raw)
        with self._store.lock:
            self._store.put(prefix, full, data, ttl)

    async def delete(self, key: str) -> bool:
        full, prefix = self._full(key), self.prefix
        with self._store.lock:
            return self._store.live(prefix, full) is not None and self._store.drop(prefix, full)

    async def delete_many(self, keys: Iterable[str]) -> int:
        fulls = {self._full(key) for key in keys}
        prefix = self.prefix
        with self._store.lock:
            return sum(self._store.live(prefix, full) is not None and self._store.drop(prefix, full)
                       for full in fulls)

    def _scope_items(self) -> list[tuple[str, _Entry]]:
        """Live ``(key as shown, entry)`` pairs of the current scope; call with the lock held."""
        items = []
        for full, entry in self._store.live_items(self.prefix):
            key = self._strip(full)
            if key is not None:
                items.append((key, entry))
        return items

    async def keys(self) -> builtins.set[str]:
        with self._store.lock:
            return {key for key, _ in self._scope_items()}

    async def get_all(self) -> dict[str, Any]:
        with self._store.lock:
            items = [(key, entry.data) for key, entry in self._scope_items()]
        return {key: decode(key, data) for key, data in items}

    async def clear(self) -> None:
        prefix = self.prefix
        with self._store.lock:
            self._clear_locked(prefix)

    def _clear_locked(self, prefix: str) -> None:
        store = self._store
        for full in list(store.values.get(prefix, {})):
            if self._strip(full) is not None:
                store.drop(prefix, full)
        for full in list(store.boxes.get(prefix, {})):
            if self._strip(full) is not None:
                store.drop_box(prefix, full)

    # --- mailboxes and broadcast --------------------------------------------------------------------------

    async def publish_to_mailbox(self, mailbox: str, value: Any, *, max_length: int | None = None,
                                 ttl: float | None = None) -> None:
        full, prefix = self._full(mailbox, "mailbox"), self.prefix
        max_length, ttl = check_max_length(max_length), check_ttl(ttl)
        data = encode(mailbox, value)
        with self._store.lock:
            self._store.push(prefix, full, (data,), max_length=max_length, ttl=ttl)

    async def get_message(self, mailbox: str, timeout: float | None = None) -> Any | None:
        full, prefix, timeout = self._full(mailbox, "mailbox"), self.prefix, check_timeout(timeout)
        store, where = self._store, (prefix, full)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else deadline - loop.time()
            waiter = None
            with store.lock:
                data = store.pop(prefix, full)
                if data is None and (remaining is None or remaining > 0):
                    if store.closed:
                        raise MailboxError(f"The cache was closed while waiting on mailbox {mailbox!r}.")
                    waiter = _Waiter(loop, loop.create_future())
                    store.waiters.setdefault(where, deque()).append(waiter)
            if data is not None:
                return decode(mailbox, data)
            if waiter is None:
                return None
            try:
                async with asyncio.timeout(remaining):
                    await waiter.future
            except TimeoutError:
                with store.lock:
                    store.forget(where, waiter)
                    data = store.pop(prefix, full)  # a message that arrived as the time ran out
                return None if data is None else decode(mailbox, data)
            except BaseException:
                with store.lock:
                    store.forget(where, waiter)
                raise

    async def publish(self, channel: str, value: Any) -> int:
        full, prefix = self._full(channel, "channel"), self.prefix
        data = encode(channel, value)
        with self._store.lock:
            subscribers = list(self._store.subscribers.get((prefix, full), ()))
        reached = 0
        for subscriber in subscribers:
            try:
                subscriber.loop.call_soon_threadsafe(subscriber.queue.put_nowait, data)
            except RuntimeError:  # its loop is closed
                continue
            reached += 1
        return reached

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        """Every message published on ``channel`` (in this namespace) while the block is open."""
        return self._subscription(self._full(channel, "channel"), self.prefix, channel)

    @contextlib.asynccontextmanager
    async def _subscription(self, full: str, prefix: str, channel: str) -> AsyncIterator[AsyncIterator[Any]]:
        subscriber = _Subscriber(asyncio.get_running_loop(), asyncio.Queue())
        where = (prefix, full)
        with self._store.lock:
            self._store.subscribers.setdefault(where, []).append(subscriber)
        try:
            yield self._messages(subscriber.queue, channel)
        finally:
            with self._store.lock:
                subscribers = self._store.subscribers.get(where, [])
                with contextlib.suppress(ValueError):
                    subscribers.remove(subscriber)
                if not subscribers:
                    self._store.subscribers.pop(where, None)

    @staticmethod
    async def _messages(queue: asyncio.Queue[bytes | None], channel: str) -> AsyncIterator[Any]:
        while (data := await queue.get()) is not None:
            yield decode(channel, data)

    # --- snapshots ----------------------------------------------------------------------------------------

    async def dump_namespace(self) -> NamespaceDump:
        dump: NamespaceDump = {"values": {}, "raw": {}, "mailboxes": {}, "ttls": {}}
        store = self._store
        with store.lock:
            now = store.clock()
            items = self._scope_items()
            boxes = [(name, list(box)) for full in list(store.boxes.get(self.prefix, {}))
                     if (name := self._strip(full)) is not None
                     and (box := store.live_box(self.prefix, full)) is not None]
        for key, entry in items:
            if entry.data[:1] == RAW_TAG:
                dump["raw"][key] = base64.b64encode(entry.data[1:]).decode()
            else:
                dump["values"][key] = decode(key, entry.data)
            if entry.expires is not None:
                dump["ttls"][key] = max(entry.expires - now, 0.001)
        for name, messages in boxes:
            dump["mailboxes"][name] = [decode(name, data) for data in messages]
        return dump

    async def load_namespace(self, dump: NamespaceDump, *, replace: bool = True) -> None:
        dump = check_dump(dump)
        entries, boxes = dump_entries(dump)
        prefix, tail = self.prefix, self._tail()
        with self._store.lock:
            if replace:
                self._clear_locked(prefix)
            for key, data in entries.items():
                self._store.put(prefix, key + tail, data, dump["ttls"].get(key))
            for name, messages in boxes.items():
                if replace:
                    self._store.drop_box(prefix, name + tail)
                self._store.push(prefix, name + tail, messages)

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Always reachable: it is this process."""

    async def close(self) -> None:
        """Wake every waiting consumer with ``MailboxError`` and end every subscription (views: nothing)."""
        if self._is_view:
            return
        store = self._store
        with store.lock:
            store.closed = True
            waiters = [w for queue in store.waiters.values() for w in queue]
            store.waiters.clear()
            subscribers = [s for subs in store.subscribers.values() for s in subs]
        for waiter in waiters:
            with contextlib.suppress(RuntimeError):
                waiter.loop.call_soon_threadsafe(_resolve, waiter.future, MailboxError("The cache was closed."))
        for subscriber in subscribers:
            with contextlib.suppress(RuntimeError):
                subscriber.loop.call_soon_threadsafe(subscriber.queue.put_nowait, None)
