"""``LocalStorageManager``: a file store in a directory (a local disk or a volume every process mounts).

    <root>/
    ├── secret                          32 random bytes (0600), created once: the share-URL secret of the store
    ├── objects/<k[:2]>/<k>             data objects; 256 fan-out directories (100k files: ~400 per directory)
    ├── meta/<k[:2]>/<k>.json           metadata documents (JSON written by the service); a small file's
    │                                   data is inlined in it (``{"~data":"<base64>",...``): no object then
    ├── expiry/<YYYYMMDDHHMM>/<k>.<ref> empty markers: the expiry index, one directory per UTC minute
    ├── sessions/<ref>/<k>              empty markers: the session index, one directory per session ref
    ├── locks/<k[:2]>                   256 flock stripes: metadata compare-and-swaps of every process
    ├── locks/marker                    the empty file every marker is a hard link of (rotated when full)
    └── tmp/<k>.<random>.part           writes in flight, os.replace'd into objects/ or meta/ when complete

``<k>`` is a storage key and ``<ref>`` a session ref (both 32 hex, see ``base``): the only names the store
ever makes, so a user's file name cannot reach a path, and the sweep lists ``expiry/`` (a few thousand
bucket names at most) and then only the buckets that have ended: O(expired) whatever the store holds.

Invariants: ``tmp/`` is on the same filesystem as everything else, so ``os.replace`` publishes a complete
file in one step (a reader sees the whole object or none); data is published before its metadata, and the
metadata is the commit. Whatever a killed process leaves in ``tmp/`` is removed by ``purge_incomplete``
(the sweep calls it). ``fsync=True`` adds an fsync of each file before its rename and of its directory
after it (survives a power cut, ~ms per file); without it a process crash still never exposes a torn file,
which is what a store of short-lived files needs, at the speed of ``cp``. The secret is always fsynced.

Creating an inode is what a small upload pays for on a local filesystem (~40-200 µs on a busy VM, against
~5 µs for a link or a rename), so a small upload makes one: markers are hard links of ``locks/marker`` (no
inode of their own; a filesystem without hard links gets empty files), and a file of at most
``small_file_bytes`` is stored by ``write_small`` as its metadata document with the data inlined, published
by one ``os.replace``: the data is committed with its metadata, so nothing reads it without metadata. Large
copies between a local file and the store run in the kernel (``copy_file_range``; ``write_from_file``,
``copy_to_file``), the bytes of an upload read back from the store's own temporary file for the hash.

Small operations (metadata, markers: a few syscalls on a local filesystem) run on the event loop, since a
thread hop would cost more than they do; bulk data moves in a thread, one chunk ahead of the caller. For a
volume on a network filesystem, set ``threaded=True`` to run every operation in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any, TypeVar

from flowmas.errors import FileServiceNotFoundError, FileStorageError, FileTooLargeError, TransientFileStorageError
from flowmas.files.storage.base import (
    BUCKET_RE,
    DEFAULT_CHUNK_SIZE,
    KEY_RE,
    SECRET_BYTES,
    IndexEntry,
    Versioned,
    aiter_chunks,
    bucket_of,
    bucket_start,
    check_key,
    due_bucket,
    marker_name,
    parse_marker,
    too_large_message,
)

T = TypeVar("T")

INLINE_BYTES = 64 * 1024
"""Chunks up to this size are written and read on the loop: a page-cache copy that costs less than a hop."""

SMALL_FILE_BYTES = 4096
"""Files up to this size are inlined in their metadata document by ``write_small`` (one file, one inode)."""
COPY_STEP = 8 * 2**20
"""Bytes per ``copy_file_range`` call of a kernel copy; the hash of a step runs while the next is copied."""

_INLINE_PREFIX = b'{"~data":"'
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIRS = ("objects", "meta", "expiry", "sessions", "locks", "tmp")

_io_pool: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """One pool for every local store of the process: bulk copies are disk-bound, more threads do not help."""
    global _io_pool
    if _io_pool is None:
        _io_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="flowmas-files-io")
    return _io_pool


_feed_io_pool: ThreadPoolExecutor | None = None


def _feed_pool() -> ThreadPoolExecutor:
    """The hashing side of kernel copies: its own pool, so a copy waiting for its hash never waits for a
    thread of ``_pool()`` held by another copy."""
    global _feed_io_pool
    if _feed_io_pool is None:
        _feed_io_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="flowmas-files-hash")
    return _feed_io_pool


class LocalStorageManager:
    """A file store in ``root`` (created on first use). Thread-safe and safe for many processes sharing it."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = False, threaded: bool = False,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.root = Path(root).expanduser()
        self._base = os.fspath(self.root)
        self.fsync = fsync
        self.threaded = threaded
        self.chunk_size = max(4096, int(chunk_size))
        self.stats: dict[str, int] = {"index_buckets_read": 0, "index_markers_read": 0}
        """Counters a test or a benchmark reads: what the sweep's index reads cost."""
        self.small_file_bytes = SMALL_FILE_BYTES
        """What ``write_small`` inlines; the service sends a file this small through it."""
        self._ready = False
        self._secret: bytes | None = None
        self._links = True
        """False once the filesystem refused a hard link: markers are then empty files of their own."""

    def __repr__(self) -> str:
        return f"LocalStorageManager({str(self.root)!r})"

    # --- layout -----------------------------------------------------------------------------------------

    # plain strings, not ``Path``s: a small upload builds a dozen paths, and pathlib's joins cost more than
    # the syscalls they feed
    def _object(self, key: str) -> str:
        return f"{self._base}/objects/{key[:2]}/{key}"

    def _meta(self, key: str) -> str:
        return f"{self._base}/meta/{key[:2]}/{key}.json"

    def _expiry_marker(self, key: str, session: str, expires_at: float) -> str:
        return f"{self._base}/expiry/{bucket_of(expires_at)}/{marker_name(key, session)}"

    def _session_marker(self, key: str, session: str) -> str:
        return f"{self._base}/sessions/{session}/{key}"

    def _tmp(self, key: str) -> str:
        return f"{self._base}/tmp/{key}.{secrets.token_hex(6)}.part"

    def _ensure(self) -> None:
        if self._ready:
            return
        try:
            for name in _DIRS:
                (self.root / name).mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise FileStorageError(
                f"The file store {self.root} cannot be created: it, or a directory above it, is a file. Move "
                "the file away or configure another directory.") from None
        except OSError as exc:
            raise self._error("create the store", exc) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise FileStorageError(f"The file store {self.root} is not writable by this user; fix its "
                                   "permissions or configure another directory.")
        self._ready = True

    def _error(self, doing: str, exc: OSError) -> FileStorageError:
        hints = {
            errno.ENOSPC: "no space left on its device: free space, or lower the time to live or the size limits",
            errno.EDQUOT: "the disk quota is exhausted: free space, or lower the size limits",
            errno.EACCES: "permission denied: fix the permissions of the store's directory",
            errno.EPERM: "operation not permitted: fix the permissions of the store's directory",
            errno.EROFS: "its filesystem is read-only: configure a writable directory",
            errno.EMFILE: "the process has too many open files: raise `ulimit -n` or lower the concurrency",
        }
        hint = hints.get(exc.errno or -1) or exc.strerror or type(exc).__name__
        return FileStorageError(f"The file store {self.root} could not {doing}: {hint}.")

    async def _call(self, doing: str, fn: Callable[..., T], *args: Any) -> T:
        """Run a small filesystem operation (on the loop, or in a thread when ``threaded``); errors translated."""
        try:
            if self.threaded:
                return await asyncio.wrap_future(_pool().submit(fn, *args))
            return fn(*args)
        except OSError as exc:
            raise self._error(doing, exc) from None

    # --- data ---------------------------------------------------------------------------------------------

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> int:
        check_key(key)
        await self._call("create the store", self._ensure)
        tmp = self._tmp(key)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        except OSError as exc:
            raise self._error("start a write", exc) from None
        size = 0
        pending: Future[None] | None = None
        try:
            async for chunk in aiter_chunks(chunks):
                if not chunk:
                    continue
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise FileTooLargeError(too_large_message(max_bytes))
                if pending is not None:
                    await self._wait(pending, "write a file")  # one chunk goes to disk while the next is made
                    pending = None
                if len(chunk) <= INLINE_BYTES and not self.threaded:
                    await self._call("write a file", _write_all, fd, chunk)
                else:
                    pending = _pool().submit(_write_all, fd, chunk)
            if pending is not None:
                await self._wait(pending, "write a file")
                pending = None
            final = self._object(key)
            if size <= INLINE_BYTES and not self.threaded:
                await self._call("publish a file", self._publish, fd, tmp, final)
            else:
                await self._wait(_pool().submit(self._publish, fd, tmp, final), "publish a file")
            fd = -1
            return size
        except BaseException:
            await _settle(_pool().submit(_discard, fd, tmp, pending))
            raise

    async def _wait(self, job: Future[T], doing: str) -> T:
        try:
            return await asyncio.wrap_future(job)
        except OSError as exc:
            raise self._error(doing, exc) from None

    def _publish(self, fd: int, tmp: str, final: str) -> None:
        try:
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        _replace(tmp, final)
        if self.fsync:
            _fsync_dir(os.path.dirname(final))

    async def read(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        check_key(key)
        if start < 0 or (end is not None and end < start):
            return
        try:
            fd = os.open(self._object(key), os.O_RDONLY | _NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            fd = -1
        except OSError as exc:
            raise self._error("open a file", exc) from None
        if fd < 0:  # no object: a small file inlined in its metadata, or nothing
            inline = await self._call("read a file", self._inline_data, key)
            if inline is None:
                raise FileServiceNotFoundError("The store has no data object for this key.")
            stop_at = len(inline) if end is None else min(end + 1, len(inline))
            if start < stop_at:
                yield inline[start:stop_at]
            return
        ahead: Future[bytes] | None = None
        try:
            size = os.fstat(fd).st_size
            stop = size if end is None else min(end + 1, size)
            position = start
            while position < stop:
                count = min(self.chunk_size, stop - position)
                if ahead is not None:
                    job, ahead = ahead, None
                    data = await self._wait(job, "read a file")
                elif count <= INLINE_BYTES and not self.threaded:
                    data = os.pread(fd, count, position)
                else:
                    data = await self._wait(_pool().submit(os.pread, fd, count, position), "read a file")
                if not data:
                    return  # truncated underneath us: cannot happen to a published object, but never loop
                position += len(data)
                following = min(self.chunk_size, stop - position)
                if following > INLINE_BYTES or (following > 0 and self.threaded):
                    ahead = _pool().submit(os.pread, fd, following, position)
                yield data
        except OSError as exc:
            raise self._error("read a file", exc) from None
        finally:
            if ahead is not None:
                with contextlib.suppress(Exception):
                    ahead.result()  # the thread must be done with the descriptor before it is closed
            os.close(fd)

    async def delete(self, key: str) -> bool:
        check_key(key)
        return await self._call("delete a file", self._delete, key)

    def _delete(self, key: str) -> bool:
        with self._stripe(key):
            had_meta = _unlink(self._meta(key))
        return _unlink(self._object(key)) or had_meta

    def _inline_data(self, key: str) -> bytes | None:
        raw = _read_raw(self._meta(key))
        return None if raw is None else _split(raw)[1]

    # --- fast paths the service uses when a manager has them (see ``base``) ------------------------------

    async def write_small(self, key: str, data: bytes, metadata: bytes) -> None:
        """Store a file of at most ``small_file_bytes`` and commit its metadata in one step: the metadata
        document with the data inlined, published by one ``os.replace`` (the data becomes visible with its
        metadata, never before). A larger file or a document that is not a JSON object goes the usual way."""
        check_key(key)
        data, metadata = bytes(data), bytes(metadata)
        if len(data) > self.small_file_bytes or not metadata.startswith(b"{") \
                or metadata.startswith(_INLINE_PREFIX):
            async def one() -> AsyncIterator[bytes]:
                yield data

            await self.write(key, one())
            await self.write_metadata(key, metadata)
            return
        await self._call("create the store", self._ensure)
        await self._call("write a file", self._write_small, key, self._meta(key), _join(metadata, data))

    async def copy_to_file(self, key: str, fd: int) -> int:
        """Copy the data object into the open file ``fd`` (at its offset) in the kernel; returns the bytes
        copied. ``FileServiceNotFoundError`` when there is no such object."""
        check_key(key)
        job = _pool().submit(self._copy_out, key, fd)
        try:
            return await asyncio.wrap_future(job)
        except FileServiceNotFoundError:
            raise  # an OSError (FileNotFoundError) that is already the answer
        except OSError as exc:
            raise self._error("copy a file", exc) from None

    def _copy_out(self, key: str, out: int) -> int:
        try:
            src = os.open(self._object(key), os.O_RDONLY | _NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            inline = self._inline_data(key)
            if inline is None:
                raise FileServiceNotFoundError("The store has no data object for this key.") from None
            _write_all(out, inline)
            return len(inline)
        try:
            size = os.fstat(src).st_size
            copied = 0
            while copied < size:
                done = _kernel_copy(src, out, min(COPY_STEP, size - copied), copied)
                if done == 0:
                    break  # cannot shrink (published objects are immutable), but never loop
                copied += done
            return copied
        finally:
            os.close(src)

    async def write_from_file(self, key: str, fd: int, *, max_bytes: int | None = None,
                              consume: Callable[[bytes], None] | None = None) -> int:
        """Store the data object ``key`` from the open local file ``fd`` (from its start), copied in the kernel
        into a temporary file that is published atomically; returns its size. ``consume`` (run in a thread,
        in order) gets every byte *as stored*, read back from the temporary file while the next step is
        copied: a hash of them is the hash of the stored object. An exception from it, ``max_bytes`` passed
        or a cancellation leaves nothing, as ``write``."""
        check_key(key)
        await self._call("create the store", self._ensure)
        tmp = self._tmp(key)
        stop = threading.Event()
        job = _pool().submit(self._copy_in, fd, tmp, self._object(key), max_bytes, consume, stop)
        try:
            return await asyncio.shield(asyncio.wrap_future(job))
        except asyncio.CancelledError:
            stop.set()  # the copy stops at its next step and removes its file
            with contextlib.suppress(BaseException):
                await asyncio.shield(asyncio.wrap_future(job))
            wait_futures([job])  # a second cancellation: still done (briefly blocking) before the task is
            raise
        except OSError as exc:
            raise self._error("write a file", exc) from None

    def _copy_in(self, src: int, tmp: str, final: str, max_bytes: int | None,
                 consume: Callable[[bytes], None] | None, stop: threading.Event) -> int:
        out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        pending: Future[None] | None = None
        try:
            size = 0
            while True:
                if stop.is_set():
                    raise asyncio.CancelledError()
                step = COPY_STEP if max_bytes is None else min(COPY_STEP, max_bytes + 1 - size)
                done = _kernel_copy(src, out, max(step, 1), size)
                if done == 0:
                    break
                if max_bytes is not None and size + done > max_bytes:
                    raise FileTooLargeError(too_large_message(max_bytes))
                if pending is not None:
                    pending.result()  # in order, one step behind the copy
                    pending = None
                if consume is not None:
                    pending = _feed_pool().submit(_feed, out, size, done, consume)
                size += done
            if pending is not None:
                job, pending = pending, None
                job.result()
            self._publish(out, tmp, final)
            out = -1
            return size
        except BaseException:
            _discard(out, tmp, pending)
            raise

    async def expire_file(self, key: str, session: str, due: float,
                          decide: Callable[[bytes], float | None]) -> tuple[bytes | None, bool]:
        """The sweep's step for one marker, under the key's lock: read the metadata once (``(None, False)``
        when there is none); ``decide(document)`` returns the file's expiry to delete it now, or None to keep
        it (an exception from it propagates). Deleting removes the metadata, the data, the file's expiry
        markers (at its expiry and at ``due``) and its session marker: one read, one lock, one unlink each.
        ``decide`` runs under the lock: it must be quick and must not call the store."""
        check_key(key)
        check_key(session, "session ref")
        return await self._call("expire a file", self._expire_file, key, session, due, decide)

    def _expire_file(self, key: str, session: str, due: float,
                     decide: Callable[[bytes], float | None]) -> tuple[bytes | None, bool]:
        path = self._meta(key)
        with self._stripe(key):
            raw = _read_raw(path)
            if raw is None:
                return None, False
            document = _split(raw)[0]
            expires_at = decide(document)
            if expires_at is None:
                return document, False
            _unlink(path)
        _unlink(self._object(key))
        _unlink(self._expiry_marker(key, session, expires_at))
        if bucket_of(due) != bucket_of(expires_at):
            _unlink(self._expiry_marker(key, session, due))
        _unlink(self._session_marker(key, session))  # its directory goes when the sweep ends the bucket
        return document, True

    # --- metadata -----------------------------------------------------------------------------------------

    async def write_metadata(self, key: str, data: bytes, *, expected_version: str | None = None) -> bool:
        check_key(key)
        await self._call("create the store", self._ensure)
        return await self._call("write metadata", self._write_metadata, key, bytes(data), expected_version)

    def _write_metadata(self, key: str, data: bytes, expected: str | None) -> bool:
        if data.startswith(_INLINE_PREFIX):
            raise FileStorageError('A metadata document may not begin with {"~data": (the local store inlines '
                                   "small files' data under that key).")
        final = self._meta(key)
        if expected is None:
            raw = _read_raw(final)  # a small file's inlined data stays with its new document
            self._write_small(key, final, _join(data, _split(raw)[1]) if raw is not None else data)
            return True
        with self._stripe(key):
            raw = _read_raw(final)
            if raw is None or _version(raw) != expected:
                return False
            self._write_small(key, final, _join(data, _split(raw)[1]))
            return True

    def _write_small(self, key: str, final: str, data: bytes) -> None:
        tmp = self._tmp(key)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        try:
            try:
                _write_all(fd, data)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            _replace(tmp, final)
        except BaseException:
            _unlink(tmp)
            raise
        if self.fsync:
            _fsync_dir(os.path.dirname(final))

    async def read_metadata(self, key: str) -> bytes | None:
        found = await self.read_metadata_versioned(key)
        return found.data if found is not None else None

    async def read_metadata_versioned(self, key: str) -> Versioned | None:
        check_key(key)
        return await self._call("read metadata", _read_versioned, self._meta(key))

    async def delete_metadata(self, key: str, *, expected_version: str | None = None) -> bool:
        check_key(key)
        return await self._call("delete metadata", self._delete_metadata, key, expected_version)

    def _delete_metadata(self, key: str, expected: str | None) -> bool:
        path = self._meta(key)
        with self._stripe(key):
            if expected is not None:
                raw = _read_raw(path)
                if raw is None or _version(raw) != expected:
                    return False
            return _unlink(path)

    @contextlib.contextmanager
    def _stripe(self, key: str) -> Iterator[None]:
        """Hold the flock stripe of ``key``: metadata compare-and-swaps of every thread and process serialise."""
        self._ensure()
        fd = os.open(f"{self._base}/locks/{key[:2]}", os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    # --- indexes ------------------------------------------------------------------------------------------

    async def index_expiry(self, key: str, session: str, expires_at: float, previous: float | None = None) -> None:
        check_key(key)
        check_key(session, "session ref")
        await self._call("create the store", self._ensure)
        await self._call("index a file", self._index, key, session, expires_at, previous)

    def _index(self, key: str, session: str, expires_at: float, previous: float | None) -> None:
        self._mark(self._expiry_marker(key, session, expires_at))
        self._mark(self._session_marker(key, session))
        if previous is not None and bucket_of(previous) != bucket_of(expires_at):
            _unlink(self._expiry_marker(key, session, previous))

    def _mark(self, path: str) -> None:
        """Make the marker ``path``: a hard link of ``locks/marker`` (no inode of its own), else an empty file."""
        source = f"{self._base}/locks/marker"
        for _ in range(6 if self._links else 0):
            try:
                os.link(source, path, follow_symlinks=False)
                return
            except FileExistsError:
                return  # idempotent
            except FileNotFoundError:
                parent = os.path.dirname(path)
                if not os.path.isdir(parent):
                    with contextlib.suppress(FileExistsError):
                        os.makedirs(parent, exist_ok=True)  # a sweep may rmdir an emptied one
                else:
                    self._new_marker_source(source)
            except OSError as exc:
                if exc.errno == errno.EMLINK:
                    self._new_marker_source(source)  # the link count is full: a fresh empty file
                elif exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS):
                    self._links = False  # no hard links on this filesystem
                else:
                    raise
        _touch(path)

    def _new_marker_source(self, source: str) -> None:
        tmp = self._tmp("0" * 32)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600))
        try:
            os.replace(tmp, source)  # several processes may rotate at once: the last one wins, all are fine
        except BaseException:
            _unlink(tmp)
            raise

    async def unindex(self, key: str, session: str, expires_at: float) -> None:
        check_key(key)
        check_key(session, "session ref")
        await self._call("unindex a file", self._unindex, key, session, expires_at)

    def _unindex(self, key: str, session: str, expires_at: float) -> None:
        _unlink(self._expiry_marker(key, session, expires_at))
        marker = self._session_marker(key, session)
        if _unlink(marker):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(marker))  # the session's last file: an empty directory (re-made on use)

    async def expired(self, now: float, *, limit: int | None = None) -> AsyncIterator[IndexEntry]:
        expiry = self.root / "expiry"
        due = due_bucket(now)
        names = await self._call("list the expiry index", _listdir, expiry)
        for name in sorted(n for n in names if not BUCKET_RE.fullmatch(n)):
            removed = await self._call("remove a stray file", _remove_stray, expiry / name)
            yield IndexEntry("", "", 0.0, "", problem=f"expiry/{_shown(name)} is not a bucket of the expiry index; "
                             + ("it was removed" if removed else "it is a directory and was left in place"))
        yielded = 0
        for bucket in sorted(n for n in names if BUCKET_RE.fullmatch(n)):
            if bucket > due:
                break  # fixed-width UTC minutes sort as they come: every later bucket is still running
            directory = expiry / bucket
            markers = await self._call("list the expiry index", _listdir, directory)
            self.stats["index_buckets_read"] += 1
            self.stats["index_markers_read"] += len(markers)
            start = bucket_start(bucket)
            sessions: set[str] = set()
            for name in markers:
                parsed = parse_marker(name)
                if parsed is None:
                    removed = await self._call("remove a stray file", _remove_stray, directory / name)
                    yield IndexEntry("", "", start, bucket, problem=(
                        f"expiry/{bucket}/{_shown(name)} is not a marker of the expiry index; "
                        + ("it was removed" if removed else "it is a directory and was left in place")))
                    continue
                sessions.add(parsed[1])
                yield IndexEntry(parsed[0], parsed[1], start, bucket)
                yielded += 1
                if limit is not None and yielded >= limit:
                    await self._call("prune the session index", self._prune_sessions, sessions)
                    return
            await self._call("prune the session index", self._prune_sessions, sessions)
            with contextlib.suppress(OSError):
                directory.rmdir()  # every marker handled; a marker added meanwhile keeps it (ENOTEMPTY)

    def _prune_sessions(self, sessions: set[str]) -> None:
        """Remove the session directories a bucket's files emptied (``expire_file`` leaves them): once per
        session and bucket, not once per file; a directory still holding markers stays (ENOTEMPTY)."""
        for session in sessions:
            with contextlib.suppress(OSError):
                (self.root / "sessions" / session).rmdir()

    async def session_keys(self, session: str) -> AsyncIterator[str]:
        check_key(session, "session ref")
        for name in await self._call("list a session", _listdir, self.root / "sessions" / session):
            if KEY_RE.fullmatch(name):
                yield name

    # --- the store's secret, leftovers, closing -----------------------------------------------------------

    async def get_secret(self) -> bytes:
        if self._secret is None:
            await self._call("create the store", self._ensure)
            self._secret = await self._call("read or create its secret", self._load_secret)
        return self._secret

    def _load_secret(self) -> bytes:
        path = self.root / "secret"
        for _ in range(3):
            try:
                with open(path, "rb") as file:
                    secret = file.read(SECRET_BYTES + 1)
            except FileNotFoundError:
                tmp = self._tmp("0" * 32)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
                try:
                    _write_all(fd, secrets.token_bytes(SECRET_BYTES))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                try:
                    os.link(tmp, path)  # exactly one process's secret wins; the others read it
                    _fsync_dir(self.root)
                except FileExistsError:
                    pass
                finally:
                    _unlink(tmp)
                continue
            if len(secret) != SECRET_BYTES:
                raise FileStorageError(
                    f"The file store's secret {path} is damaged ({len(secret)} bytes instead of {SECRET_BYTES}). "
                    "Delete it: a new one is made, and share URLs made before stop working.")
            return secret
        raise FileStorageError(f"The file store's secret {path} could not be created; check the directory.")

    async def purge_incomplete(self, older_than: float) -> int:
        return await self._call("remove leftovers of killed writes", self._purge, older_than)

    def _purge(self, older_than: float) -> int:
        removed = 0
        tmp = self.root / "tmp"
        for name in _listdir(tmp):
            path = tmp / name
            try:
                if path.lstat().st_mtime < older_than and _remove_stray(path):
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    async def close(self) -> None:
        return None


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _replace(tmp: str, final: str) -> None:
    try:
        os.replace(tmp, final)
    except FileNotFoundError:
        if not os.path.exists(tmp):
            raise
        os.makedirs(os.path.dirname(final), exist_ok=True)  # a fan-out directory made on first use
        os.replace(tmp, final)


def _discard(fd: int, tmp: str, pending: Future[None] | None) -> None:
    """Undo a failed write: wait for the chunk in flight, close, remove the temporary file."""
    if pending is not None:
        with contextlib.suppress(BaseException):
            pending.result()
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    _unlink(tmp)


async def _settle(job: Future[None]) -> None:
    """Wait for a cleanup job even through a second cancellation (then briefly blocking): a cancelled write must
    have left nothing by the time its task is done."""
    try:
        await asyncio.shield(asyncio.wrap_future(job))
    except asyncio.CancelledError:
        job.result()
        raise


def _read_raw(path: str) -> bytes | None:
    """A metadata file as stored (inlined data included), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _version(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _read_versioned(path: str) -> Versioned | None:
    raw = _read_raw(path)
    if raw is None:
        return None
    return Versioned(_split(raw)[0], _version(raw))


def _join(document: bytes, data: bytes | None) -> bytes:
    """A metadata document (a JSON object) with ``data`` inlined as its first member ``"~data"`` (base64)."""
    if data is None:
        return document
    body = document[1:]
    separator = b"" if body.lstrip().startswith(b"}") else b","
    return _INLINE_PREFIX + base64.b64encode(data) + b'"' + separator + body


def _split(raw: bytes) -> tuple[bytes, bytes | None]:
    """``(document, inlined data or None)`` of a stored metadata file (``_join`` undone)."""
    if not raw.startswith(_INLINE_PREFIX):
        return raw, None
    end = raw.find(b'"', len(_INLINE_PREFIX))
    try:
        data = base64.b64decode(raw[len(_INLINE_PREFIX):end], validate=True)
    except (binascii.Error, ValueError):
        return raw, None  # damaged: the document is returned as it is and fails its parse
    body = raw[end + 1:]
    return b"{" + (body[1:] if body.startswith(b",") else body), data


def _kernel_copy(src: int, out: int, count: int, offset: int) -> int:
    """Copy up to ``count`` bytes from ``src`` at ``offset`` to ``out`` at ``offset``, in the kernel when it
    can (``copy_file_range``, then ``sendfile``), else through a buffer; the bytes copied (0 at the end)."""
    try:
        return os.copy_file_range(src, out, count, offset, offset)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
    data = os.pread(src, count, offset)
    view = memoryview(data)
    while view:
        written = os.pwrite(out, view, offset + len(data) - len(view))
        view = view[written:]
    return len(data)


def _feed(fd: int, start: int, count: int, consume: Callable[[bytes], None]) -> None:
    """Read ``count`` bytes at ``start`` of ``fd`` (the store's own temporary file) and pass them to ``consume``
    in pieces of ``DEFAULT_CHUNK_SIZE``."""
    position, stop = start, start + count
    while position < stop:
        piece = os.pread(fd, min(DEFAULT_CHUNK_SIZE, stop - position), position)
        if not piece:
            raise TransientFileStorageError("A file being stored was truncated underneath the store.")
        consume(piece)
        position += len(piece)


def _touch(path: str) -> None:
    for _ in range(5):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | _NOFOLLOW, 0o600))
            return
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.makedirs(os.path.dirname(path), exist_ok=True)  # a sweep may rmdir an emptied one meanwhile
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | _NOFOLLOW, 0o600))


def _unlink(path: str | Path) -> bool:
    try:
        os.unlink(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _remove_stray(path: Path) -> bool:
    """Remove a file or link that is not the store's (never following a link); False for a directory."""
    try:
        os.unlink(path)
        return True
    except IsADirectoryError:
        return False
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.EPERM):
            return False
        raise


def _fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _shown(name: str) -> str:
    from flowmas.text import one_line, shorten

    return shorten(one_line(name), 60)
