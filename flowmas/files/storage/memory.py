"""``MemoryStorageManager``: a file store in this process's memory, for tests and small deployments.

    MemoryStore (one per store; every manager built with ``store=`` the same one shares it)
    ├── objects:  {key: bytes}
    ├── meta:     {key: (document bytes, version counter)}
    ├── expiry:   {bucket "YYYYMMDDHHMM": {(key, ref)}} + a sorted list of the buckets (bisect)
    ├── sessions: {ref: {key}}
    └── secret:   32 random bytes, made with the store

Unlike Solace Agent Mesh's class-level dict, a store is an object: two services in one process do not see
each other's files unless they are given the same store. Every operation takes the store's lock for a
dict update, never while bytes are streaming (a write collects its chunks first, then publishes them in one
assignment), so it is thread-safe and readers see a whole object or none. **Bounded**: ``max_bytes``
(default 1 GiB) caps the data the store holds, counted as chunks arrive; a write that would pass it is a
``FileStorageError`` and leaves nothing. It dies with the process: not for files that must outlive it.
"""

from __future__ import annotations

import bisect
import secrets
import threading
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from flowmas.errors import FileServiceNotFoundError, FileStorageError, FileTooLargeError
from flowmas.files.storage.base import (
    DEFAULT_CHUNK_SIZE,
    SECRET_BYTES,
    IndexEntry,
    Versioned,
    aiter_chunks,
    bucket_of,
    bucket_start,
    check_key,
    due_bucket,
    too_large_message,
)
from flowmas.text import human_size

DEFAULT_MAX_BYTES = 2**30


@dataclass
class MemoryStore:
    """The shared state of one in-memory store (pass it to several managers to share it)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    objects: dict[str, bytes] = field(default_factory=dict)
    meta: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    expiry: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    buckets: list[str] = field(default_factory=list)
    sessions: dict[str, set[str]] = field(default_factory=dict)
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(SECRET_BYTES))
    used: int = 0
    """Bytes held by objects plus bytes reserved by writes in flight."""
    versions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class MemoryStorageManager:
    """A store in memory; ``store=`` shares one between managers (as several processes share a directory)."""

    def __init__(self, store: MemoryStore | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.store = store if store is not None else MemoryStore(max_bytes=max_bytes)
        self.chunk_size = max(1, int(chunk_size))
        self.stats: dict[str, int] = {"index_buckets_read": 0, "index_markers_read": 0}

    def __repr__(self) -> str:
        return f"MemoryStorageManager({len(self.store.objects)} objects)"

    # --- data ---------------------------------------------------------------------------------------------

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> int:
        check_key(key)
        store = self.store
        parts: list[bytes] = []
        reserved = 0
        try:
            async for chunk in aiter_chunks(chunks):
                if not chunk:
                    continue
                if max_bytes is not None and reserved + len(chunk) > max_bytes:
                    raise FileTooLargeError(too_large_message(max_bytes))
                with store.lock:
                    if store.used + len(chunk) > store.max_bytes:
                        raise FileStorageError(
                            f"The memory file store is full ({human_size(store.used)} of its "
                            f"{human_size(store.max_bytes)}); nothing was stored. Delete files, lower their time "
                            "to live, or give the store a larger max_bytes.")
                    store.used += len(chunk)  # reserved while the write streams
                reserved += len(chunk)
                parts.append(bytes(chunk))
            data = b"".join(parts)
            parts.clear()
            with store.lock:
                replaced = store.objects.get(key)
                store.objects[key] = data
                if replaced is not None:
                    store.used -= len(replaced)
                reserved = 0  # the reservation is now the object's own size
            return len(data)
        finally:
            if reserved:
                with store.lock:
                    store.used -= reserved

    async def read(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        check_key(key)
        with self.store.lock:
            data = self.store.objects.get(key)
        if data is None:
            raise FileServiceNotFoundError("The store has no data object for this key.")
        if start < 0 or (end is not None and end < start):
            return
        stop = len(data) if end is None else min(end + 1, len(data))
        view = memoryview(data)
        for position in range(start, stop, self.chunk_size):
            yield bytes(view[position:min(position + self.chunk_size, stop)])

    async def delete(self, key: str) -> bool:
        check_key(key)
        store = self.store
        with store.lock:
            had_meta = store.meta.pop(key, None) is not None
            data = store.objects.pop(key, None)
            if data is not None:
                store.used -= len(data)
        return had_meta or data is not None

    # --- metadata -----------------------------------------------------------------------------------------

    async def write_metadata(self, key: str, data: bytes, *, expected_version: str | None = None) -> bool:
        check_key(key)
        store = self.store
        with store.lock:
            if expected_version is not None:
                current = store.meta.get(key)
                if current is None or str(current[1]) != expected_version:
                    return False
            store.versions += 1
            store.meta[key] = (bytes(data), store.versions)
            return True

    async def read_metadata(self, key: str) -> bytes | None:
        found = await self.read_metadata_versioned(key)
        return found.data if found is not None else None

    async def read_metadata_versioned(self, key: str) -> Versioned | None:
        check_key(key)
        with self.store.lock:
            current = self.store.meta.get(key)
        return Versioned(current[0], str(current[1])) if current is not None else None

    async def delete_metadata(self, key: str, *, expected_version: str | None = None) -> bool:
        check_key(key)
        store = self.store
        with store.lock:
            current = store.meta.get(key)
            if current is None or (expected_version is not None and str(current[1]) != expected_version):
                return False
            del store.meta[key]
            return True

    # --- indexes ------------------------------------------------------------------------------------------

    async def index_expiry(self, key: str, session: str, expires_at: float, previous: float | None = None) -> None:
        check_key(key)
        check_key(session, "session ref")
        bucket = bucket_of(expires_at)
        store = self.store
        with store.lock:
            if bucket not in store.expiry:
                store.expiry[bucket] = set()
                bisect.insort(store.buckets, bucket)
            store.expiry[bucket].add((key, session))
            store.sessions.setdefault(session, set()).add(key)
            if previous is not None and bucket_of(previous) != bucket:
                self._drop_marker(bucket_of(previous), key, session)

    def _drop_marker(self, bucket: str, key: str, session: str) -> None:
        markers = self.store.expiry.get(bucket)
        if markers is not None:
            markers.discard((key, session))
            if not markers:
                del self.store.expiry[bucket]
                index = bisect.bisect_left(self.store.buckets, bucket)
                if index < len(self.store.buckets) and self.store.buckets[index] == bucket:
                    del self.store.buckets[index]

    async def unindex(self, key: str, session: str, expires_at: float) -> None:
        check_key(key)
        check_key(session, "session ref")
        store = self.store
        with store.lock:
            self._drop_marker(bucket_of(expires_at), key, session)
            keys = store.sessions.get(session)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del store.sessions[session]

    async def expired(self, now: float, *, limit: int | None = None) -> AsyncIterator[IndexEntry]:
        due = due_bucket(now)
        store = self.store
        with store.lock:
            buckets = store.buckets[:bisect.bisect_right(store.buckets, due)]
        yielded = 0
        for bucket in buckets:
            with store.lock:
                markers = sorted(store.expiry.get(bucket, ()))
            self.stats["index_buckets_read"] += 1
            self.stats["index_markers_read"] += len(markers)
            start = bucket_start(bucket)
            for key, session in markers:
                yield IndexEntry(key, session, start, bucket)
                yielded += 1
                if limit is not None and yielded >= limit:
                    return

    async def session_keys(self, session: str) -> AsyncIterator[str]:
        check_key(session, "session ref")
        with self.store.lock:
            keys = sorted(self.store.sessions.get(session, ()))
        for key in keys:
            yield key

    # --- secret, leftovers, closing -----------------------------------------------------------------------

    async def get_secret(self) -> bytes:
        return self.store.secret

    async def purge_incomplete(self, older_than: float) -> int:
        return 0  # a write in memory that dies dies with its bytes

    async def close(self) -> None:
        return None
