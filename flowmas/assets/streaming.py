"""Write a byte stream to disk and sha256 it in the same pass, with the work spread over three threads.

The caller's thread fills pooled buffers (straight from a socket with ``readinto``, or from a file); one
thread hashes each buffer and another writes it. ``hashlib`` and ``os.write`` release the GIL, so on two
cores the three overlap and a download costs about what ``curl -o`` costs, instead of download + a second
hashing pass (what OpenMAS does, ~4x slower). Memory stays bounded: ``buffers x buffer_size``.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

DEFAULT_BUFFER_SIZE = 4 * 2**20
DEFAULT_BUFFERS = 6
IDLE_FLUSH_SECONDS = 0.05
"""How long a partly filled buffer waits for more bytes before it is written anyway."""


class ReadInto(Protocol):
    """A byte source: ``readinto`` returns 0 only at the end (it may return fewer bytes than asked)."""

    def readinto(self, buffer: memoryview) -> int: ...


class HashingWriter:
    """Append buffers to ``path`` while hashing them; ``close()`` fsyncs and returns the hex digest.

    With ``resume=prefix`` (from ``hash_prefix``, taken before the request that resumes) the file is
    appended to and the digest covers the whole file. Use as a context manager: leaving with an exception
    stops the threads and keeps what was written (a resumable ``.part``), it never deletes.
    """

    def __init__(
        self,
        path: Path,
        *,
        resume: Prefix | None = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        buffers: int = DEFAULT_BUFFERS,
    ) -> None:
        self.path = path
        self.buffer_size = buffer_size
        self._hash = resume.digest.copy() if resume else hashlib.sha256()
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._unallocated = buffers  # allocated on demand: small downloads never pay for the whole pool
        self._to_hash: queue.Queue[tuple[bytearray, memoryview] | None] = queue.Queue()
        self._to_write: queue.Queue[tuple[bytearray, memoryview] | None] = queue.Queue()
        self._pending: dict[int, int] = {}
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        self.size = resume.size if resume else 0
        os.ftruncate(self._fd, self.size)  # drop any bytes written after the prefix was hashed
        os.lseek(self._fd, self.size, os.SEEK_SET)
        self._threads = [
            threading.Thread(target=self._run, args=(self._to_hash, self._hash.update), daemon=True),
            threading.Thread(target=self._run, args=(self._to_write, self._write), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._closed = False

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._closed:
            self._stop()

    def fill_from(self, source: ReadInto, on_progress: Callable[[int], None] | None = None) -> int:
        """Read ``source`` to its end through the pipeline; returns the number of bytes added.

        Buffers are filled whole while bytes keep coming; a source that can tell (``ready``) whether more
        is waiting gets what it has written as soon as it goes quiet for ``IDLE_FLUSH_SECONDS``, so a slow
        transfer loses nothing in memory when the process is killed.
        """
        ready = getattr(source, "ready", None)
        added = 0
        while True:
            buffer = self._take_buffer()
            view = memoryview(buffer)
            filled = 0
            ended = False
            while filled < len(buffer):
                if filled and ready is not None and not ready(IDLE_FLUSH_SECONDS):
                    break  # nothing more is arriving right now: write what we hold
                n = source.readinto(view[filled:])
                if not n:
                    ended = True
                    break
                filled += n
            if filled:
                self._submit(buffer, view[:filled])
                added += filled
                if on_progress is not None:
                    on_progress(filled)
            else:
                self._free.put(buffer)
            if ended:
                return added

    def write(self, data: bytes) -> None:
        """Add one chunk (for sources that yield bytes instead of filling buffers)."""
        for start in range(0, len(data), self.buffer_size):
            piece = data[start : start + self.buffer_size]
            buffer = self._take_buffer()
            buffer[: len(piece)] = piece
            self._submit(buffer, memoryview(buffer)[: len(piece)])

    def close(self) -> str:
        """Drain the threads, fsync, close; returns the sha256 hex digest of the whole file."""
        self._stop()
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest()

    def _take_buffer(self) -> bytearray:
        if self._error is not None:
            raise self._error
        if self._unallocated and self._free.empty():
            self._unallocated -= 1
            return bytearray(self.buffer_size)
        return self._free.get()

    def _submit(self, buffer: bytearray, view: memoryview) -> None:
        with self._lock:
            self._pending[id(buffer)] = 2
        self.size += len(view)
        self._to_hash.put((buffer, view))
        self._to_write.put((buffer, view))

    def _write(self, view: memoryview) -> None:
        while view:
            view = view[os.write(self._fd, view) :]

    def _run(self, inbox: queue.Queue[tuple[bytearray, memoryview] | None], work: Callable[..., object]) -> None:
        while (item := inbox.get()) is not None:
            buffer, view = item
            try:
                if self._error is None:
                    work(view)
            except BaseException as exc:  # noqa: BLE001 - surfaced to the caller's thread by _take_buffer/close
                self._error = exc
            finally:
                self._release(buffer)

    def _release(self, buffer: bytearray) -> None:
        with self._lock:
            self._pending[id(buffer)] -= 1
            done = self._pending[id(buffer)] == 0
        if done:
            self._free.put(buffer)

    def _stop(self) -> None:
        self._closed = True
        self._to_hash.put(None)
        self._to_write.put(None)
        for thread in self._threads:
            thread.join()
        try:
            if self._error is None:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)


@dataclass(frozen=True)
class Prefix:
    """The sha256 state and length of the bytes already in a partial file."""

    digest: Any
    size: int


def hash_prefix(path: Path) -> Prefix:
    """Hash what a partial file holds, before asking the server for the rest (never while it waits)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as file:
        buffer = bytearray(DEFAULT_BUFFER_SIZE)
        view = memoryview(buffer)
        while n := file.readinto(buffer):
            digest.update(view[:n])
            size += n
    return Prefix(digest, size)


def sha256_file(path: Path, on_progress: Callable[[int], None] | None = None) -> str:
    """Hash a file in large reads (hashlib releases the GIL, so this runs well in a worker thread)."""
    digest = hashlib.sha256()
    buffer = bytearray(DEFAULT_BUFFER_SIZE)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while n := file.readinto(buffer):
            digest.update(view[:n])
            if on_progress is not None:
                on_progress(n)
    return digest.hexdigest()


def copy_and_hash(source: BinaryIO, dest: Path, on_progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Copy an open binary file to ``dest`` through the pipeline; returns (sha256, size)."""
    with HashingWriter(dest) as writer:
        writer.fill_from(source, on_progress)  # type: ignore[arg-type]
        return writer.close(), writer.size
