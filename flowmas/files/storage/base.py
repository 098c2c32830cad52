"""The ``StorageManager`` protocol every file store implements, and what the managers share.

A store holds, per file, a *data object* and a *metadata document* under one key, plus two indexes:

* the **expiry index**: one marker per file in a time bucket (the UTC minute its file expires in), so a
  sweep reads the buckets that have ended, and nothing else: O(expired), never a listing of the store;
* the **session index**: one marker per file under its session's ref, so listing a session's files is
  O(that session's files).

Keys are the service's signatures only (``KEY_RE``: 32 lowercase hex characters); session ids are stored in
indexes as refs (``session_ref``: a hash, also 32 hex). No user-controlled string ever becomes a path or an
object key, so no file name or content can collide with the store's own names or stop a sweep. Every method
refuses anything else with ``InvalidFileURLError``.

Order of an upload, which is what makes every crash recoverable: index markers first, then the data
(atomically), then the metadata (atomically): **the metadata is the commit**. A reader that finds metadata
finds the data; a crash leaves at worst markers and data without metadata, which the sweep finds through
its marker and removes once the upload's grace period has passed. Metadata changes after the commit
(extending, deleting) are compare-and-swap on the document's *version* (local: inode/mtime under a flock
stripe; S3: the ETag with ``If-Match``; memory: a counter under a lock), so a sweep can never delete a file
whose expiry an extend just moved.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

from flowmas.errors import InvalidFileURLError

KEY_RE = re.compile(r"[0-9a-f]{32}")
"""A storage key (the signature of an ``amfs://`` URL) and a session ref: 32 lowercase hex characters."""

EXPIRY_BUCKET_SECONDS = 60
"""Width of an expiry-index bucket. A file is swept at most this long after it expired (readers stop seeing
it at the instant it expires, whatever the sweep does); small enough that a bucket stays small."""

BUCKET_FORMAT = "%Y%m%d%H%M"
BUCKET_RE = re.compile(r"[0-9]{12}")

DEFAULT_CHUNK_SIZE = 2**20
"""Bytes per read chunk and per write to disk: big enough that a thread hop per chunk costs nothing."""

SECRET_BYTES = 32


def new_key() -> str:
    """A fresh storage key: 128 random bits from ``secrets``."""
    return secrets.token_hex(16)


def check_key(key: object, what: str = "storage key") -> str:
    """``key`` if it is one of ours (32 lowercase hex), else ``InvalidFileURLError``: nothing else reaches a path."""
    if isinstance(key, str) and KEY_RE.fullmatch(key):
        return key
    shown = repr(key)[:40]
    raise InvalidFileURLError(
        f"{shown} is not a {what} of this file service (32 lowercase hex characters); keys come only from "
        "the service's own amfs:// URLs.")


def session_ref(session_id: str) -> str:
    """The ref under which the indexes know a session: a hash, so a session id never becomes a path."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def bucket_of(timestamp: float) -> str:
    """The expiry bucket (UTC minute, ``YYYYMMDDHHMM``) a file expiring at ``timestamp`` is indexed under."""
    return time.strftime(BUCKET_FORMAT, time.gmtime(max(0, int(timestamp // EXPIRY_BUCKET_SECONDS)
                                                         * EXPIRY_BUCKET_SECONDS)))


def bucket_start(bucket: str) -> float:
    """The first instant of ``bucket`` (epoch seconds)."""
    import calendar

    return float(calendar.timegm(time.strptime(bucket, BUCKET_FORMAT)))


def due_bucket(now: float) -> str:
    """The last bucket that has entirely ended at ``now``: buckets up to it hold only due markers."""
    return bucket_of(now - EXPIRY_BUCKET_SECONDS)


def marker_name(key: str, session: str) -> str:
    """An expiry marker's name inside its bucket: ``<key>.<session ref>`` (the sweep needs both)."""
    return f"{key}.{session}"


def parse_marker(name: str) -> tuple[str, str] | None:
    """``(key, session ref)`` of a marker name, or None for anything that is not one of ours."""
    key, dot, session = name.partition(".")
    if dot and KEY_RE.fullmatch(key) and KEY_RE.fullmatch(session):
        return key, session
    return None


class Versioned(NamedTuple):
    """A metadata document and its version: what a compare-and-swap compares."""

    data: bytes
    version: str


@dataclass(frozen=True)
class IndexEntry:
    """One marker of the expiry index, as a sweep reads it.

    ``due`` is the start of the marker's bucket: the file expired at or after it (the metadata says exactly
    when). An entry with ``problem`` set is not a marker of ours (a stray file in the index): the manager has
    already removed it, or could not, and says so; ``key`` and ``session`` are empty then.
    """

    key: str
    session: str
    due: float
    bucket: str
    problem: str | None = None


@runtime_checkable
class StorageManager(Protocol):
    """Where a file service keeps its files. One contract suite (tests/files/test_storage_contract.py) runs
    against every implementation; a custom manager (``services.file_service.type``) implements the same.

    ``read``, ``expired`` and ``session_keys`` are async generators (plain ``def`` here so that the protocol
    types them as what calling them returns).
    """

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> int:
        """Store the data object ``key`` from ``chunks``; returns its size.

        Atomic: invisible until complete. An error or a cancellation leaves nothing (S3: the multipart upload
        is aborted). ``FileTooLargeError`` as soon as more than ``max_bytes`` have arrived.
        """
        ...

    def read(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes ``start..end`` (inclusive, like HTTP ranges; clamped to the object) in chunks.

        ``FileServiceNotFoundError`` (from the first iteration) when there is no such object.
        """
        ...

    async def delete(self, key: str) -> bool:
        """Remove the file: its metadata first (readers stop seeing it), then its data. True if either existed."""
        ...

    async def write_metadata(self, key: str, data: bytes, *, expected_version: str | None = None) -> bool:
        """Replace the metadata document atomically. With ``expected_version``: only if the stored document is
        still that version (compare-and-swap); False when it changed or is gone."""
        ...

    async def read_metadata(self, key: str) -> bytes | None:
        """The metadata document, or None when there is none (not yet committed, deleted, never existed)."""
        ...

    async def read_metadata_versioned(self, key: str) -> Versioned | None:
        """The metadata document and its version, for a compare-and-swap."""
        ...

    async def delete_metadata(self, key: str, *, expected_version: str | None = None) -> bool:
        """Remove the metadata document (only if still ``expected_version`` when given); True if removed."""
        ...

    async def index_expiry(self, key: str, session: str, expires_at: float, previous: float | None = None) -> None:
        """Add ``key`` to the expiry index at ``expires_at`` and to ``session``'s index (idempotent); then drop
        its marker at ``previous`` if that is another bucket. ``session`` is a ref (``session_ref``)."""
        ...

    def expired(self, now: float, *, limit: int | None = None) -> AsyncIterator[IndexEntry]:
        """The markers of every bucket that ended by ``now``, oldest first: O(expired), never a full listing."""
        ...

    async def unindex(self, key: str, session: str, expires_at: float) -> None:
        """Drop ``key``'s expiry marker at ``expires_at`` and its session marker (missing ones are fine)."""
        ...

    def session_keys(self, session: str) -> AsyncIterator[str]:
        """The keys indexed under ``session`` (a ref): O(that session's files)."""
        ...

    async def get_secret(self) -> bytes:
        """A random secret created once per store and the same for every process and instance using it."""
        ...

    async def purge_incomplete(self, older_than: float) -> int:
        """Remove what writes killed with their process left (temporary files, multipart uploads) that began
        before ``older_than``; returns how many. In-flight writes are younger and untouched."""
        ...

    async def close(self) -> None:
        """Release connections and threads; the manager is not used afterwards."""
        ...


# --- optional fast paths --------------------------------------------------------------------------------
#
# A manager may also implement any of these; the service uses one when ``isinstance(manager, <protocol>)``
# holds and keeps the streaming path otherwise (the memory and S3 managers implement none). Each keeps every
# guarantee above: they only do the same work in fewer steps.


@runtime_checkable
class StoresSmallFiles(Protocol):
    """Small files in one step (local: the data inlined in the metadata document: one file, one inode)."""

    small_file_bytes: int
    """The largest file ``write_small`` is for; the service sends bigger ones through ``write``."""

    async def write_small(self, key: str, data: bytes, metadata: bytes) -> None:
        """Store the data and commit its metadata at once, atomically: ``read`` (ranges included) and
        ``delete`` behave as after ``write`` + ``write_metadata``, the data is never visible without its
        metadata, and ``write_metadata`` of a new version keeps the data. The index markers come first, as
        for every upload."""
        ...


@runtime_checkable
class CopiesLocalFiles(Protocol):
    """Kernel copies between a local file and the store (local: ``copy_file_range``)."""

    async def write_from_file(self, key: str, fd: int, *, max_bytes: int | None = None,
                              consume: Callable[[bytes], None] | None = None) -> int:
        """``write`` from the open file ``fd`` (read from offset 0; the caller checks that it did not change).
        ``consume`` gets every byte in order *as stored* (read back from the object being written), in
        pieces of at most ``DEFAULT_CHUNK_SIZE``, in a thread; its exception aborts the write (leaving
        nothing), so a hash it computes is the stored object's."""
        ...

    async def copy_to_file(self, key: str, fd: int) -> int:
        """Append the whole data object to the open file ``fd``; the bytes copied. ``FileServiceNotFoundError``
        when there is none. The caller makes the destination atomic (temporary file, then a rename)."""
        ...


@runtime_checkable
class ExpiresInPlace(Protocol):
    """The sweep's step for one expiry marker in one locked pass."""

    async def expire_file(self, key: str, session: str, due: float,
                          decide: Callable[[bytes], float | None]) -> tuple[bytes | None, bool]:
        """Under the lock of ``key``'s metadata compare-and-swaps: read the metadata (``(None, False)`` when
        there is none) and call ``decide(document)``: a float (the file's expiry) deletes the file now —
        metadata, data, its expiry markers at that instant and at ``due``, its session marker — and returns
        ``(document, True)``; None keeps it: ``(document, False)``. An exception of ``decide`` propagates and
        changes nothing. ``decide`` runs under the lock: quick, and never calling the store."""
        ...


async def aiter_chunks(source: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    """Iterate a sync or async iterable of bytes as an async iterator."""
    if isinstance(source, AsyncIterable):
        async for chunk in source:
            yield chunk
    else:
        for chunk in source:
            yield chunk


def too_large_message(max_bytes: int) -> str:
    from flowmas.text import human_size

    return (f"The file is larger than the limit of {max_bytes:,} bytes ({human_size(max_bytes)}); "
            "nothing was stored. Send a smaller file or raise the limit.")
