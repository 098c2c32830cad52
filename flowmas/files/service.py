"""``FileService``: session-scoped, expiring files behind ``amfs://`` URLs, over any ``StorageManager``.

What it adds to the storage: sessions (every operation checks one; a share URL replaces it for reads),
limits counted while the bytes stream, time to live and expiry, the metadata (sha256, size, schema and
shape computed in the same single pass as the upload), read params, Solace Agent Mesh's method names, and a
``*_sync`` twin of every async method.

Decisions (the contract for the faces that call it):

* **Not found is one answer.** A missing file, another session's file, a URL whose name differs from the
  stored one and a damaged metadata document all raise ``FileServiceNotFoundError`` with the same message
  (only the URL the caller gave differs): no caller learns that another session's file exists. A file of
  the caller's own session that has expired is ``FileExpiredError`` (also a ``FileNotFoundError``) from the
  instant ``expiration_timestamp`` is reached, before any sweep.
* **Session ids** are non-empty text of at most 1,024 characters that is not only whitespace; any Unicode
  character is allowed, controls included (they are compared exactly, in constant time, and hashed for the
  index), but not a lone surrogate (not text). Anything else is ``SessionMismatchError`` (SAM: "Invalid
  session ID"), raised before anything is read or stored.
* **Caller kwargs** become metadata (``data_source`` has its own field, the rest go in ``extra``). A kwarg
  that names a key the service computes (``size``, ``file_size``, ``sha256``, ``expiration_timestamp``,
  ``session_id``, ``url``, ``schema-yaml``, ...) is **ignored with a warning**, not refused: SAM's gateways
  pass ``file_size=`` (the client's claim) and ``session_id=``, and must keep working, while nothing a
  caller says can change what the service measured. ``ttl`` (seconds) sets the time to live, capped by
  ``max_time_to_live``; ``mime_type`` declares the type (else it is guessed from the name). A value that is
  not JSON (or a non-text key, or more than 64 KiB of extras) is ``ConfigurationError`` before any byte is
  read.
* **Limits** (``max_file_bytes``, ``max_session_bytes``) are counted as the bytes arrive, never from a
  declared size; passing one is ``FileTooLargeError`` and leaves nothing (no data, no metadata, no index
  marker). The session limit counts the session's live files plus the uploads in flight in this process;
  two processes uploading into one session at the same moment may together pass it by one upload. The count
  of a session's files is kept for ``USAGE_FRESH_SECONDS`` (moved by this service's own uploads and deletes),
  so another process's deletes make room within those seconds.
* **``download_to_buffer``** returns the whole (transformed) file whatever its size: a buffer download is
  how a caller asks for everything. ``read_max_bytes`` (SAM's ``max_allowed_file_retrieve_size``) bounds
  only what is inlined into an LLM's context (the OPACA ReadFile action reads it from the service);
  ``open_stream`` and ``download_to_file`` stream in bounded memory.
* **Order of an upload**: index markers, then the data (atomically), then the metadata — the commit (see
  ``storage.base``). Changes after the commit (extend, delete, the sweep) are compare-and-swaps on the
  metadata's version, so an extend that returned has never been undone by a racing sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import mimetypes
import os
import secrets
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from flowmas.errors import (
    ConfigurationError,
    FileExpiredError,
    FileServiceError,
    FileServiceNotFoundError,
    FileStorageError,
    FileTooLargeError,
    SessionMismatchError,
    TransientFileStorageError,
)
from flowmas.files.inference import Inferencer, file_kind
from flowmas.files.metadata import OWNED_KEYS, FileMetadata
from flowmas.files.storage.base import (
    EXPIRY_BUCKET_SECONDS,
    CopiesLocalFiles,
    ExpiresInPlace,
    IndexEntry,
    StorageManager,
    StoresSmallFiles,
    Versioned,
    new_key,
    session_ref,
    too_large_message,
)
from flowmas.files.urls import SHARE_PARAM, build_url, parse_url, share_url, validate_filename, verify_share
from flowmas.text import human_size, one_line, shorten

if TYPE_CHECKING:
    from flowmas.files.config import FileServiceConfig
    from flowmas.settings import FlowmasSettings, Project

T = TypeVar("T")
log = logging.getLogger(__name__)

DAY = 86_400.0
MiB = 2**20
CHUNK_BYTES = MiB
"""Largest piece an upload handles at once (a caller's bigger chunk is sliced): bounds memory per upload."""
INLINE_DIGEST_BYTES = 64 * 1024
"""Pieces up to this size are hashed and inferred on the loop; bigger ones in a thread."""
MAX_SESSION_ID_LENGTH = 1024
MAX_EXTRA_BYTES = 64 * 1024
MAX_EXTRA_KEY_LENGTH = 100
CAS_ATTEMPTS = 20
USAGE_FRESH_SECONDS = 5.0
"""How long a session's counted usage is trusted (moved by this service's own uploads and deletes meanwhile)."""
MAX_USAGE_ENTRIES = 10_000
_MIME_RE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&^_.+-/; =\"")


@dataclass
class ExpiryReport:
    """What one sweep did. ``problems`` and ``errors`` are sentences; neither ever stops a sweep."""

    expired: int = 0
    """Files whose time had come, deleted."""
    bytes_freed: int = 0
    debris: int = 0
    """Markers of uploads that crashed (or of files deleted halfway), past the grace period: cleaned."""
    pending: int = 0
    """Markers without metadata still within the grace period (an upload may be in flight): kept."""
    kept: int = 0
    """Files extended meanwhile (their stale marker moved) or that an extend won a race against."""
    incomplete_removed: int = 0
    """Temporary files / multipart uploads of killed writers removed (``purge_incomplete``)."""
    markers_read: int = 0
    problems: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        text = (f"{self.expired} expired file(s) deleted ({human_size(self.bytes_freed)}), {self.debris} leftover(s) "
                f"of crashed uploads cleaned, {self.incomplete_removed} incomplete write(s) removed, "
                f"{self.kept} kept (extended), {self.pending} pending, in {self.seconds:.2f} s")
        if self.problems:
            text += f"; {len(self.problems)} problem(s) in the index"
        if self.errors:
            text += f"; {len(self.errors)} error(s)"
        return text



@dataclass(frozen=True)
class CappedRead:
    """At most ``max_bytes`` of a file, its URL's params applied: what goes into a prompt (``read_capped``)."""

    data: bytes
    text: str | None
    """``data`` as text when it is UTF-8 (a character the cap cut in two left out), else None: send base64."""
    truncated: bool
    """True when the file (after its params) had more bytes than ``max_bytes``."""
    max_bytes: int
    mime_type: str | None


@dataclass(frozen=True)
class _Access:
    """A file an operation may touch, as read once (``version`` is what a compare-and-swap compares)."""

    metadata: FileMetadata
    version: str
    params: dict[str, str]
    shared: bool


class FileService:
    """Session files over ``storage`` (see the module docstring). Not a singleton: build one per store."""

    def __init__(
        self,
        storage: StorageManager,
        *,
        max_time_to_live: float = DAY,
        default_ttl: float | None = None,
        max_file_bytes: int | None = None,
        max_session_bytes: int | None = None,
        infer_max_bytes: int = 64 * MiB,
        read_max_bytes: int = 300_000,
        upload_grace_seconds: float = 3600.0,
        expiration_check_interval: float = 600.0,
        share_secret: bytes | str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.max_time_to_live = _positive("max_time_to_live", max_time_to_live, most=365 * DAY)
        self.default_ttl = (self.max_time_to_live if default_ttl is None
                            else min(_positive("default_ttl", default_ttl, most=365 * DAY), self.max_time_to_live))
        self.max_file_bytes = None if max_file_bytes is None else int(_positive("max_file_bytes", max_file_bytes,
                                                                                 most=2**50, integer=True))
        self.max_session_bytes = None if max_session_bytes is None else int(
            _positive("max_session_bytes", max_session_bytes, most=2**50, integer=True))
        self.infer_max_bytes = int(_positive("infer_max_bytes", infer_max_bytes, most=2**40, integer=True))
        self.read_max_bytes = int(_positive("read_max_bytes", read_max_bytes, most=2**40, integer=True))
        self.upload_grace_seconds = _positive("upload_grace_seconds", upload_grace_seconds, most=7 * DAY)
        self.expiration_check_interval = _positive("expiration_check_interval", expiration_check_interval,
                                                   most=DAY)
        if isinstance(share_secret, str):
            share_secret = share_secret.encode("utf-8")
        if share_secret is not None and len(share_secret) < 16:
            raise ConfigurationError("The file share secret (FLOWMAS_FILES_SHARE_SECRET) must be at least 16 bytes.")
        self._share_secret = share_secret
        self.clock = clock
        self._inflight: dict[str, int] = {}
        self._inflight_lock = threading.Lock()
        self._usage: dict[str, tuple[float, int]] = {}
        """Session ref -> (when counted, bytes of its live files): ``_session_used``'s few seconds of memory."""
        self._runner: _LoopThread | None = None
        self._runner_lock = threading.Lock()
        self._closed = False
        self._caps_of: object = None
        self._caps: tuple[bool, bool, bool] = (False, False, False)

    def _fast(self) -> tuple[bool, bool, bool]:
        """Which optional fast paths the storage has: (small files, local copies, in-place expiry). Cached
        per storage object: ``isinstance`` against a runtime-checkable protocol costs tens of µs."""
        if self._caps_of is not self.storage:
            self._caps = (isinstance(self.storage, StoresSmallFiles), isinstance(self.storage, CopiesLocalFiles),
                          isinstance(self.storage, ExpiresInPlace))
            self._caps_of = self.storage
        return self._caps

    def __repr__(self) -> str:
        return f"FileService({self.storage!r}, max_time_to_live={self.max_time_to_live:g})"

    # --- construction from the project ----------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: FileServiceConfig | Mapping[str, Any] | None = None,
        *,
        project: Project | None = None,
        settings: FlowmasSettings | None = None,
        storage_resolver: Callable[[str], StorageManager] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> FileService:
        """The service ``services.file_service`` describes, ``FLOWMAS_FILES_*`` variables taking precedence.

        ``config`` wins over ``project``; with neither, the project file is looked for as everywhere
        (``FLOWMAS_PROJECT``, then the current directory and its parents), and without one the defaults
        apply (a volume store in ``$FLOWMAS_HOME/files``). Every mistake is a ``ConfigurationError`` naming
        the YAML path or the ``FLOWMAS_`` variable.
        """
        from flowmas.files.config import apply_environment, build_storage, file_service_config
        from flowmas.settings import FlowmasSettings, find_project_file, load_project

        settings = settings if settings is not None else FlowmasSettings()
        base_dir: Path | None = None
        if config is None:
            if project is None:
                found = find_project_file(settings=settings)
                if found is not None:
                    project = load_project(found, settings=settings)
            if project is not None:
                config = project.services.file_service
                base_dir = project.directory
        elif project is not None:
            base_dir = project.directory
        checked = apply_environment(file_service_config(config), settings)
        storage = build_storage(checked, settings=settings, base_dir=base_dir, resolver=storage_resolver)
        secret = settings.files_share_secret
        return cls(
            storage,
            max_time_to_live=checked.max_time_to_live,
            default_ttl=checked.default_ttl,
            max_file_bytes=checked.max_file_bytes,
            max_session_bytes=checked.max_session_bytes,
            infer_max_bytes=checked.infer_max_bytes,
            read_max_bytes=checked.read_max_bytes,
            upload_grace_seconds=checked.upload_grace_seconds,
            expiration_check_interval=checked.expiration_check_interval,
            share_secret=secret.get_secret_value() if secret is not None else None,
            clock=clock,
        )

    # --- uploads --------------------------------------------------------------------------------------

    async def upload_from_buffer(self, buffer: bytes | bytearray | memoryview | str, file_name: str,
                                 session_id: str, **kwargs: Any) -> dict[str, Any]:
        """Store ``buffer`` (text is UTF-8 encoded) as ``file_name`` in ``session_id``; its metadata dict."""
        if isinstance(buffer, str):
            buffer = buffer.encode("utf-8", "surrogatepass")
        if not isinstance(buffer, bytes | bytearray | memoryview):
            raise ConfigurationError(f"upload_from_buffer needs bytes or text, not {type(buffer).__name__}.")
        view = memoryview(buffer).cast("B")
        pieces = (bytes(view[start:start + CHUNK_BYTES]) for start in range(0, len(view), CHUNK_BYTES))
        return await self._upload(_from_iterable(pieces, threaded=False), file_name, session_id, kwargs)

    async def upload_from_file(self, path: str | os.PathLike[str], session_id: str, **kwargs: Any) -> dict[str, Any]:
        """Store the file at ``path`` under its base name (``file_name=`` renames it), read in chunks."""
        if not isinstance(path, str | os.PathLike):
            raise ConfigurationError(f"upload_from_file needs a path, not {type(path).__name__}.")
        source = Path(path)
        file_name = kwargs.pop("file_name", None) or source.name
        try:
            handle = await asyncio.to_thread(open, source, "rb")
        except IsADirectoryError:
            raise ConfigurationError(f"{shorten(str(source), 120)} is a directory, not a file to upload.") from None
        except OSError as exc:
            raise FileNotFoundError(exc.errno, f"Cannot read {shorten(str(source), 120)}: {exc.strerror}") from None
        try:
            local = handle if self._fast()[1] and _is_regular(handle) else None
            return await self._upload(_read_file(handle), file_name, session_id, kwargs, local=local)
        finally:
            await asyncio.to_thread(handle.close)

    async def upload_from_stream(self, chunks: AsyncIterable[bytes] | Iterable[bytes], file_name: str,
                                 session_id: str, **kwargs: Any) -> dict[str, Any]:
        """Store what ``chunks`` yields (a sync iterable is pulled in a thread: it may block)."""
        if isinstance(chunks, bytes | bytearray | memoryview | str):
            raise ConfigurationError("upload_from_stream needs an iterable of byte chunks; for one buffer use "
                                     "upload_from_buffer.")
        if isinstance(chunks, AsyncIterable):
            source: AsyncIterator[bytes] = _from_async(chunks)
        elif isinstance(chunks, Iterable):
            source = _from_iterable(chunks, threaded=not isinstance(chunks, list | tuple))
        else:
            raise ConfigurationError(f"upload_from_stream needs an iterable of bytes, not {type(chunks).__name__}.")
        return await self._upload(source, file_name, session_id, kwargs)

    async def _upload(self, chunks: AsyncIterator[bytes], file_name: str, session_id: str,
                      kwargs: dict[str, Any], *, local: Any = None) -> dict[str, Any]:
        """One upload. ``local``: an open regular file ``chunks`` reads, for a manager that copies local files
        in the kernel (hashed and inferred from the bytes as stored, which must match the file before and
        after). A stream that ends within ``small_file_bytes`` of a manager that stores small files in one
        step goes through ``write_small``."""
        session = _check_session(session_id)
        validate_filename(file_name)
        ttl, mime_type, data_source, extra = self._upload_options(file_name, kwargs)
        ref = session_ref(session)
        key = new_key()
        now = self.clock()
        expires_at = now + ttl
        inferencer = Inferencer.for_file(file_name, mime_type, max_bytes=self.infer_max_bytes)
        digest = hashlib.sha256()
        limit, session_room = await self._room(ref, session)
        counted = _Counter()

        def take(piece: bytes) -> None:
            digest.update(piece)
            if inferencer is not None:
                inferencer.feed(piece)

        async def measured() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise ConfigurationError(f"An upload chunk must be bytes, not {type(chunk).__name__}.")
                view = memoryview(chunk).cast("B")
                for start in range(0, len(view), CHUNK_BYTES):
                    piece = bytes(view[start:start + CHUNK_BYTES])
                    self._reserve(ref, counted, len(piece), session_room)
                    if len(piece) > INLINE_DIGEST_BYTES:
                        await asyncio.to_thread(take, piece)
                    else:
                        take(piece)
                    yield piece

        await self.storage.index_expiry(key, ref, expires_at)
        committed = False
        inline: bytes | None = None
        try:
            if local is not None:
                storage: Any = self.storage

                def consume(piece: bytes) -> None:
                    self._reserve(ref, counted, len(piece), session_room)
                    take(piece)

                fd = local.fileno()
                before = _identity(await asyncio.to_thread(os.fstat, fd))
                size = await storage.write_from_file(key, fd, max_bytes=limit, consume=consume)
                if _identity(await asyncio.to_thread(os.fstat, fd)) != before:
                    raise TransientFileStorageError(
                        f"{shorten(one_line(file_name), 80)!r} changed while it was being uploaded; nothing was "
                        "stored. Upload it again once it is complete.")
            else:
                stream = measured()
                head: list[bytes] = []
                small = int(getattr(self.storage, "small_file_bytes", -1)) if self._fast()[0] else -1
                if small >= 0:
                    total, ended = 0, True
                    async for piece in stream:
                        head.append(piece)
                        total += len(piece)
                        if total > small:
                            ended = False
                            break
                    if ended:
                        inline = b"".join(head)
                if inline is not None:
                    if limit is not None and len(inline) > limit:
                        raise FileTooLargeError(too_large_message(limit))
                    size = len(inline)
                else:
                    size = await self.storage.write(key, _chain(head, stream), max_bytes=limit)
            result = inferencer.finish() if inferencer is not None else None
            metadata = FileMetadata(
                key=key, session_ref=ref, session_id=session, filename=file_name, size=size,
                mime_type=mime_type, sha256=digest.hexdigest(), upload_timestamp=now,
                expiration_timestamp=expires_at, data_source=data_source,
                schema_yaml=result.schema_yaml if result else None, shape=result.shape if result else None,
                schema_error=result.error if result else None, sampled=result.sampled if result else False,
                extra=extra)
            if inline is not None:
                fast: Any = self.storage
                await fast.write_small(key, inline, metadata.to_stored())
            else:
                await self.storage.write_metadata(key, metadata.to_stored())
            committed = True
            self._account(ref, size)
            return metadata.to_dict()
        finally:
            self._release(ref, counted)
            if not committed:
                await _settle(self._discard(key, ref, expires_at))

    async def _discard(self, key: str, ref: str, expires_at: float) -> None:
        """Undo an upload that failed: whatever of it exists goes (data, markers)."""
        try:
            await self.storage.delete(key)
        finally:
            await self.storage.unindex(key, ref, expires_at)

    def _upload_options(self, file_name: str, kwargs: dict[str, Any]) -> tuple[float, str | None, str | None,
                                                                              dict[str, Any]]:
        ttl = self.default_ttl
        mime_type = mimetypes.guess_type(file_name, strict=False)[0]
        data_source: str | None = None
        extra: dict[str, Any] = {}
        ignored: list[str] = []
        for name, value in kwargs.items():
            if not isinstance(name, str) or not name or len(name) > MAX_EXTRA_KEY_LENGTH or not name.isprintable():
                raise ConfigurationError(f"Metadata key {shorten(repr(name), 60)} must be printable text of 1 to "
                                         f"{MAX_EXTRA_KEY_LENGTH} characters.")
            if name == "ttl":
                if value is not None:
                    ttl = self._ttl(value)
            elif name == "mime_type":
                if value is not None:
                    mime_type = _check_mime(value)
            elif name == "data_source":
                if value is not None and not isinstance(value, str):
                    raise ConfigurationError(f"data_source must be text, not {type(value).__name__}.")
                data_source = value
            elif name in OWNED_KEYS:
                ignored.append(name)
            else:
                extra[name] = value
        if ignored:
            log.warning("Upload of %r: ignored the metadata key(s) %s: the service computes them.",
                        shorten(one_line(file_name), 60), ", ".join(sorted(ignored)))
        try:
            encoded = json.dumps(extra, allow_nan=False, ensure_ascii=True)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"Upload metadata must be JSON (text, numbers, booleans, null, lists, mappings with text keys): "
                f"{shorten(one_line(str(exc)), 120)}.") from None
        if len(encoded) > MAX_EXTRA_BYTES:
            raise ConfigurationError(f"Upload metadata is {len(encoded):,} bytes of JSON; at most "
                                     f"{MAX_EXTRA_BYTES:,} are kept per file.")
        return ttl, mime_type, data_source, json.loads(encoded)

    def _ttl(self, value: object) -> float:
        """A time to live in seconds, capped by ``max_time_to_live``."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(f"ttl must be a number of seconds, not {type(value).__name__}.")
        if not math.isfinite(value) or value <= 0:
            raise ConfigurationError(f"ttl must be a positive, finite number of seconds; got {value!r}.")
        return min(float(value), self.max_time_to_live)

    async def _room(self, ref: str, session: str) -> tuple[int | None, int | None]:
        """``(max bytes for the write, room left in the session)`` as the upload starts."""
        limit = self.max_file_bytes
        if self.max_session_bytes is None:
            return limit, None
        used = await self._session_used(ref, session)
        room = max(0, self.max_session_bytes - used)
        return limit, room

    async def _session_used(self, ref: str, session: str) -> int:
        """Bytes of the session's live files. Counting reads every metadata document of the session, so a count
        is kept for ``USAGE_FRESH_SECONDS`` and moved by this service's own uploads and deletes: N uploads into
        one session cost O(N), not O(N²). Another process's changes are seen within those seconds."""
        now = self.clock()
        with self._inflight_lock:
            cached = self._usage.get(ref)
        if cached is not None and 0 <= now - cached[0] < USAGE_FRESH_SECONDS:
            return cached[1]
        used = sum(md.size for md in await self._session_files(ref, session))
        with self._inflight_lock:
            if len(self._usage) >= MAX_USAGE_ENTRIES:
                self._usage.clear()
            self._usage[ref] = (now, used)
        return used

    def _account(self, ref: str, delta: int) -> None:
        with self._inflight_lock:
            cached = self._usage.get(ref)
            if cached is not None:
                self._usage[ref] = (cached[0], max(0, cached[1] + delta))

    def _reserve(self, ref: str, counted: _Counter, size: int, room: int | None) -> None:
        with self._inflight_lock:
            counted.bytes += size
            self._inflight[ref] = self._inflight.get(ref, 0) + size
            in_flight = self._inflight[ref]
        if room is not None and in_flight > room:
            assert self.max_session_bytes is not None
            raise FileTooLargeError(
                f"The session's files would pass its limit of {self.max_session_bytes:,} bytes "
                f"({human_size(self.max_session_bytes)}); nothing was stored. Delete files of the session or "
                "raise the limit (max_session_bytes).")

    def _release(self, ref: str, counted: _Counter) -> None:
        with self._inflight_lock:
            left = self._inflight.get(ref, 0) - counted.bytes
            if left > 0:
                self._inflight[ref] = left
            else:
                self._inflight.pop(ref, None)
            counted.bytes = 0

    # --- access ---------------------------------------------------------------------------------------

    async def _access(self, url: str, session_id: object, *, share_allowed: bool) -> _Access:
        """Read the file ``url`` names for ``session_id`` (or for a share URL's holder); else the one answer."""
        parsed = parse_url(url)
        params = dict(parsed.params)
        token = params.pop(SHARE_PARAM, None)
        shared = token is not None and share_allowed
        session: str | None = None
        refused: FileServiceError | None = None
        if shared:
            assert token is not None
            try:
                verify_share(token, await self._secret(), self.clock(), signature=parsed.signature)
            except (SessionMismatchError, FileExpiredError) as exc:
                # the owner may still read with a dead share URL of its own file; anyone else hears why not
                if not _is_session(session_id):
                    raise
                refused, shared, session = exc, False, str(session_id)
        else:
            session = _check_session(session_id)
        shown = build_url(parsed.signature, parsed.filename)
        try:
            return await self._check(parsed.signature, parsed.filename, shown, session, params, shared)
        except FileServiceNotFoundError:
            if refused is not None:
                raise refused from None
            raise

    async def _check(self, signature: str, filename: str, shown: str, session: str | None, params: dict[str, str],
                     shared: bool) -> _Access:
        found = await self.storage.read_metadata_versioned(signature)
        if found is None:
            raise _not_found(shown)
        try:
            metadata = FileMetadata.from_stored(found.data)
        except ValueError as exc:
            log.warning("The metadata document of %s is damaged (%s); treated as absent.", signature, exc)
            raise _not_found(shown) from None
        if metadata.key != signature or metadata.filename != filename:
            raise _not_found(shown)
        if session is not None and not hmac.compare_digest(metadata.session_id.encode("utf-8", "surrogatepass"),
                                                           session.encode("utf-8", "surrogatepass")):
            raise _not_found(shown)
        if metadata.expired(self.clock()):
            raise FileExpiredError(f"The file {_show(shown)} expired at {_when(metadata.expiration_timestamp)}; "
                                   "it is gone (upload it again).")
        return _Access(metadata, found.version, params, shared)

    async def _secret(self) -> bytes:
        if self._share_secret is None:
            self._share_secret = await self.storage.get_secret()
        return self._share_secret

    # --- reads ----------------------------------------------------------------------------------------

    async def get_metadata(self, url: str, session_id: str | None) -> dict[str, Any]:
        """The file's metadata dict (a share URL's holder gets it without the owner's session id)."""
        access = await self._access(url, session_id, share_allowed=True)
        return access.metadata.to_dict(include_session=not access.shared)

    async def open_stream(self, url: str, session_id: str | None) -> AsyncGenerator[bytes, None]:
        """The file's bytes, read params applied, in chunks (the access check runs at the first iteration)."""
        access = await self._access(url, session_id, share_allowed=True)
        async for chunk in self._content(access):
            yield chunk

    async def _content(self, access: _Access) -> AsyncGenerator[bytes, None]:
        metadata = access.metadata
        if not access.params:
            stream = self.storage.read(metadata.key)
        else:
            from flowmas.files.params import apply_read_plan, check_plan_for, parse_read_params

            plan = parse_read_params(access.params)
            check_plan_for(plan, filename=metadata.filename, mime_type=metadata.mime_type)
            start, end = plan.byte_range if plan.byte_range is not None else (0, None)
            stream = apply_read_plan(plan, self.storage.read(metadata.key, start=start, end=end),
                                     filename=metadata.filename, mime_type=metadata.mime_type,
                                     document_max_bytes=self.infer_max_bytes)
        try:
            async for chunk in stream:
                yield chunk
        except FileServiceNotFoundError:
            raise _not_found(metadata.url) from None  # deleted or swept while it was being read
        finally:
            closing = getattr(stream, "aclose", None)
            if closing is not None:
                await closing()

    async def download_to_buffer(self, url: str, session_id: str | None) -> bytes:
        """The whole file (read params applied) in memory, whatever its size: see the module docstring."""
        access = await self._access(url, session_id, share_allowed=True)
        return b"".join([chunk async for chunk in self._content(access)])

    async def read_capped(self, url: str, session_id: str | None, max_bytes: int | None = None) -> CappedRead:
        """At most ``max_bytes`` (default and most: ``read_max_bytes``) of the file, read params applied, for an
        LLM's context: whether more was there, and the bytes as text when they are UTF-8."""
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                      or max_bytes < 1):
            raise ConfigurationError(f"max_bytes must be a whole number of bytes, at least 1; got {max_bytes!r}.")
        cap = min(max_bytes or self.read_max_bytes, self.read_max_bytes)
        access = await self._access(url, session_id, share_allowed=True)
        kept = bytearray()
        truncated = False
        chunks = self._content(access)
        try:
            async for chunk in chunks:
                room = cap - len(kept)
                if len(chunk) > room:
                    kept += chunk[:room]
                    truncated = True
                    break
                kept += chunk
        finally:
            await chunks.aclose()
        data = bytes(kept)
        return CappedRead(data=data, text=_utf8_text(data, truncated), truncated=truncated, max_bytes=cap,
                          mime_type=access.metadata.mime_type)

    async def download_to_file(self, url: str, destination: str | os.PathLike[str], session_id: str | None) -> Path:
        """Write the file (read params applied) to ``destination``, atomically: a reader of ``destination``
        sees the old file or the whole new one, never a part; a failure leaves the old one (or nothing)."""
        if not isinstance(destination, str | os.PathLike):
            raise ConfigurationError(f"download_to_file needs a destination path, not {type(destination).__name__}.")
        target = Path(destination).expanduser()
        if target.is_dir():
            raise IsADirectoryError(errno_isdir(), f"{target} is a directory; give the path of the file to write.")
        access = await self._access(url, session_id, share_allowed=True)
        tmp = target.with_name(f".{target.name[:200]}.{secrets.token_hex(6)}.part")
        handle = await asyncio.to_thread(open, tmp, "xb")
        try:
            try:
                if not access.params and self._fast()[1]:
                    try:  # the whole object, untransformed: a kernel copy
                        copier: Any = self.storage
                        await copier.copy_to_file(access.metadata.key, handle.fileno())
                    except FileServiceNotFoundError:
                        raise _not_found(access.metadata.url) from None  # deleted or swept meanwhile
                else:
                    async for chunk in self._content(access):
                        await asyncio.to_thread(handle.write, chunk)
            finally:
                await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return target

    async def resolve_url(self, url: str, session_id: str | None, return_extra: bool = False) -> Any:
        """SAM's ``resolve_url``: the content with read params applied — text (``str``) for a text file,
        ``bytes`` for a binary one or a zip/gzip encoding, ``str`` for base64/datauri; with ``return_extra``
        the tuple ``(content, the file's original bytes, metadata dict)`` as SAM returned it."""
        access = await self._access(url, session_id, share_allowed=True)
        data = b"".join([chunk async for chunk in self._content(access)])
        content: bytes | str = data
        encoding = access.params.get("encoding")
        if encoding in ("base64", "datauri"):
            content = data.decode("ascii", "replace")
        elif encoding is None and file_kind(access.metadata.filename, access.metadata.mime_type) != "binary":
            content = data.decode("utf-8", "replace")
        if not return_extra:
            return content
        original = data if not access.params else b"".join(
            [chunk async for chunk in self._content(_Access(access.metadata, access.version, {}, access.shared))])
        return content, original, access.metadata.to_dict(include_session=not access.shared)

    # --- changes --------------------------------------------------------------------------------------

    async def delete(self, url: str, session_id: str) -> bool:
        """Delete the file (its metadata first: readers stop seeing it at once). True when it was deleted;
        a missing file (or another session's) is ``FileServiceNotFoundError`` as everywhere."""
        for _ in range(CAS_ATTEMPTS):
            access = await self._access(url, session_id, share_allowed=False)
            md = access.metadata
            if await self.storage.delete_metadata(md.key, expected_version=access.version):
                self._account(md.session_ref, -md.size)
                await self.storage.delete(md.key)
                await self.storage.unindex(md.key, md.session_ref, md.expiration_timestamp)
                return True
        raise FileStorageError("The file kept changing while it was being deleted; try again.")

    async def extend_expiry(self, url: str, session_id: str, ttl: float) -> dict[str, Any]:
        """Set the file to expire ``ttl`` seconds from now (capped by ``max_time_to_live``); its metadata."""
        seconds = self._ttl(ttl)
        return await self._set_expiry(url, session_id, lambda now: now + seconds)

    async def _set_expiry(self, url: str, session_id: str, when: Callable[[float], float]) -> dict[str, Any]:
        for _ in range(CAS_ATTEMPTS):
            access = await self._access(url, session_id, share_allowed=False)
            md = access.metadata
            now = self.clock()
            expires_at = min(when(now), now + self.max_time_to_live)
            if expires_at <= now:
                raise ConfigurationError("The new expiration time is in the past; delete the file instead.")
            await self.storage.index_expiry(md.key, md.session_ref, expires_at)  # the new marker first
            updated = md.replace(expiration_timestamp=expires_at)
            if await self.storage.write_metadata(md.key, updated.to_stored(), expected_version=access.version):
                await self.storage.index_expiry(md.key, md.session_ref, expires_at,
                                                previous=md.expiration_timestamp)
                return updated.to_dict()
            # changed meanwhile (another extend, a delete, the sweep): read again; a stray new marker is
            # harmless (the sweep finds current metadata behind it and moves on)
        raise FileStorageError("The file kept changing while its expiry was being set; try again.")

    async def share(self, url: str, session_id: str, ttl: float) -> str:
        """A share URL of the file: any session holding it may read the file and its metadata (not change
        it) for ``ttl`` seconds (capped by ``max_time_to_live``), while the file lives. The URL's read
        params are kept."""
        seconds = self._ttl(ttl)
        access = await self._access(url, session_id, share_allowed=False)
        plain = build_url(access.metadata.key, access.metadata.filename, access.params or None)
        return share_url(plain, self.clock() + seconds, await self._secret())

    async def list_files(self, session_id: str) -> list[dict[str, Any]]:
        """The session's live files' metadata, oldest first: O(the session's files)."""
        session = _check_session(session_id)
        files = await self._session_files(session_ref(session), session)
        return [md.to_dict() for md in sorted(files, key=lambda md: (md.upload_timestamp, md.key))]

    async def _session_files(self, ref: str, session: str) -> list[FileMetadata]:
        keys = [key async for key in self.storage.session_keys(ref)]
        found: list[FileMetadata] = []
        now = self.clock()
        semaphore = asyncio.Semaphore(16)

        async def one(key: str) -> None:
            async with semaphore:
                data = await self.storage.read_metadata(key)
            if data is None:
                return  # an upload in flight, or debris for the sweep
            try:
                md = FileMetadata.from_stored(data)
            except ValueError:
                return
            if md.key == key and md.session_id == session and not md.expired(now):
                found.append(md)

        await asyncio.gather(*(one(key) for key in keys))
        return found

    # --- expiry ---------------------------------------------------------------------------------------

    async def expire(self, *, limit: int | None = None) -> ExpiryReport:
        """One sweep: every file whose expiry bucket has ended and whose time has come is deleted, the
        leftovers of crashed uploads older than ``upload_grace_seconds`` removed. O(expired): it reads the
        expiry index's ended buckets, never a listing of the store. Nothing in the store can stop it: each
        marker's trouble is reported in ``errors``/``problems`` and the sweep goes on."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigurationError(f"limit must be a positive whole number, got {limit!r}.")
        started = time.monotonic()
        report = ExpiryReport()
        now = self.clock()
        async for entry in self.storage.expired(now, limit=limit):
            if entry.problem:
                report.problems.append(entry.problem)
                continue
            report.markers_read += 1
            try:
                await self._expire_one(entry, now, report)
            except Exception as exc:  # noqa: BLE001 - one file's trouble never stops a sweep
                report.errors.append(f"{entry.key}: {type(exc).__name__}: {shorten(one_line(str(exc)), 200)}")
        try:
            report.incomplete_removed = await self.storage.purge_incomplete(now - self.upload_grace_seconds)
        except Exception as exc:  # noqa: BLE001 - reported, as above
            report.errors.append(f"purge of incomplete writes: {type(exc).__name__}: {shorten(str(exc), 200)}")
        report.seconds = time.monotonic() - started
        if report.expired or report.debris:
            with self._inflight_lock:
                self._usage.clear()  # sessions shrank: count again
        if report.errors:
            log.warning("File expiry sweep: %s; first error: %s", report, report.errors[0])
        return report

    async def _expire_one(self, entry: IndexEntry, now: float, report: ExpiryReport) -> None:
        key, ref = entry.key, entry.session
        parsed: list[FileMetadata] = []
        if self._fast()[2]:
            def decide(document: bytes) -> float | None:
                md = FileMetadata.from_stored(document)
                parsed.append(md)
                if md.key == key and md.session_ref == ref and md.expired(now):
                    return md.expiration_timestamp
                return None

            try:
                sweeper: Any = self.storage
                document, deleted = await sweeper.expire_file(key, ref, entry.due, decide)
            except ValueError:
                parsed.clear()  # damaged metadata: the general path below reports and removes it
            else:
                if deleted:
                    report.expired += 1
                    report.bytes_freed += parsed[0].size
                    return
                if document is not None:
                    # kept (extended, or a marker that does not match): the general path, without a re-read
                    await self._expire_kept(entry, parsed[0], report)
                    return
        found: Versioned | None = await self.storage.read_metadata_versioned(key)
        if found is None:
            if now < entry.due + EXPIRY_BUCKET_SECONDS + self.upload_grace_seconds:
                report.pending += 1  # an upload of a short-lived file may still be writing
                return
            await self.storage.delete(key)
            await self.storage.unindex(key, ref, entry.due)
            report.debris += 1
            return
        try:
            md = FileMetadata.from_stored(found.data)
        except ValueError as exc:
            report.problems.append(f"metadata of {key} is damaged ({exc}); the file was removed")
            if await self.storage.delete_metadata(key, expected_version=found.version):
                await self.storage.delete(key)
            await self.storage.unindex(key, ref, entry.due)
            report.debris += 1
            return
        if md.key != key or md.session_ref != ref or not md.expired(now):
            await self._expire_kept(entry, md, report)
            return
        if not await self.storage.delete_metadata(key, expected_version=found.version):
            report.kept += 1  # changed meanwhile (an extend won): the next sweep looks again
            return
        await self.storage.delete(key)
        await self.storage.unindex(key, ref, md.expiration_timestamp)
        if md.expiration_timestamp >= entry.due + EXPIRY_BUCKET_SECONDS or md.expiration_timestamp < entry.due:
            await self.storage.unindex(key, ref, entry.due)
        report.expired += 1
        report.bytes_freed += md.size

    async def _expire_kept(self, entry: IndexEntry, md: FileMetadata, report: ExpiryReport) -> None:
        """A marker whose file stays: one that does not match its key's metadata, or a file extended since."""
        key, ref = entry.key, entry.session
        if md.key != key or md.session_ref != ref:
            # a marker that does not match the document behind its key (made by hand, or a damaged index):
            # drop the marker; the file keeps its own markers
            report.problems.append(f"marker {key}.{ref} does not match the metadata of {key}; the marker was dropped")
            await self.storage.unindex(key, ref, entry.due)
            if md.key == key:
                await self.storage.index_expiry(key, md.session_ref, md.expiration_timestamp)
            return
        # extended: this marker is stale; make sure the current one exists, then drop this one
        await self.storage.index_expiry(key, ref, md.expiration_timestamp, previous=entry.due)
        report.kept += 1

    # --- Solace Agent Mesh's names --------------------------------------------------------------------

    async def delete_by_url(self, url: str, session_id: str) -> bool:
        """SAM's name for ``delete`` (which now checks the session)."""
        return await self.delete(url, session_id)

    async def update_file_expiration(self, url: str, expiration_timestamp: float, session_id: str) -> dict[str, Any]:
        """SAM's ``update_file_expiration(url, timestamp)`` plus the session check: an absolute expiry (epoch
        seconds), capped at ``max_time_to_live`` from now."""
        if isinstance(expiration_timestamp, bool) or not isinstance(expiration_timestamp, int | float) \
                or not math.isfinite(expiration_timestamp):
            raise ConfigurationError(f"expiration_timestamp must be epoch seconds, got {expiration_timestamp!r}.")
        at = float(expiration_timestamp)
        return await self._set_expiry(url, session_id, lambda now: at)

    async def list_all_metadata(self, session_id: str) -> list[dict[str, Any]]:
        """SAM's name for ``list_files``."""
        return await self.list_files(session_id)

    @staticmethod
    def get_file_block_by_metadata(metadata: Mapping[str, Any]) -> str:
        """SAM's ``<file>`` block for an LLM (``render_for_llm``: escaped, injection-proof)."""
        from flowmas.files.render import render_for_llm

        return render_for_llm(metadata)

    async def get_file_block_by_url(self, url: str, session_id: str | None) -> str:
        """The ``<file>`` block of the file ``url`` names (SAM's name; it now checks the session)."""
        return self.get_file_block_by_metadata(await self.get_metadata(url, session_id))

    # --- lifecycle ------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Release the storage and the sync twins' thread; the service is not used afterwards."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.storage.close()
        finally:
            runner, self._runner = self._runner, None
            if runner is not None:
                runner.stop()

    async def __aenter__(self) -> FileService:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __enter__(self) -> FileService:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close_sync()

    # --- sync twins -----------------------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the service's private loop (a daemon thread): works whether or not a loop
        runs in the caller's thread."""
        with self._runner_lock:
            if self._runner is None:
                self._runner = _LoopThread()
            runner = self._runner
        return runner.run(coroutine)

    def upload_from_buffer_sync(self, buffer: bytes | bytearray | memoryview | str, file_name: str,
                                session_id: str, **kwargs: Any) -> dict[str, Any]:
        return self._run(self.upload_from_buffer(buffer, file_name, session_id, **kwargs))

    def upload_from_file_sync(self, path: str | os.PathLike[str], session_id: str, **kwargs: Any) -> dict[str, Any]:
        return self._run(self.upload_from_file(path, session_id, **kwargs))

    def upload_from_stream_sync(self, chunks: Iterable[bytes], file_name: str, session_id: str,
                                **kwargs: Any) -> dict[str, Any]:
        return self._run(self.upload_from_stream(chunks, file_name, session_id, **kwargs))

    def download_to_buffer_sync(self, url: str, session_id: str | None) -> bytes:
        return self._run(self.download_to_buffer(url, session_id))

    def download_to_file_sync(self, url: str, destination: str | os.PathLike[str], session_id: str | None) -> Path:
        return self._run(self.download_to_file(url, destination, session_id))

    def read_capped_sync(self, url: str, session_id: str | None, max_bytes: int | None = None) -> CappedRead:
        return self._run(self.read_capped(url, session_id, max_bytes))

    def open_stream_sync(self, url: str, session_id: str | None) -> Iterator[bytes]:
        """The chunks of ``open_stream``, pulled one at a time through the private loop."""
        stream = self.open_stream(url, session_id)

        async def step() -> bytes | None:
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return None

        def chunks() -> Iterator[bytes]:
            try:
                while (chunk := self._run(step())) is not None:
                    yield chunk
            finally:
                self._run(stream.aclose())

        return chunks()

    def get_metadata_sync(self, url: str, session_id: str | None) -> dict[str, Any]:
        return self._run(self.get_metadata(url, session_id))

    def delete_sync(self, url: str, session_id: str) -> bool:
        return self._run(self.delete(url, session_id))

    def extend_expiry_sync(self, url: str, session_id: str, ttl: float) -> dict[str, Any]:
        return self._run(self.extend_expiry(url, session_id, ttl))

    def list_files_sync(self, session_id: str) -> list[dict[str, Any]]:
        return self._run(self.list_files(session_id))

    def share_sync(self, url: str, session_id: str, ttl: float) -> str:
        return self._run(self.share(url, session_id, ttl))

    def expire_sync(self, *, limit: int | None = None) -> ExpiryReport:
        return self._run(self.expire(limit=limit))

    def resolve_url_sync(self, url: str, session_id: str | None, return_extra: bool = False) -> Any:
        return self._run(self.resolve_url(url, session_id, return_extra))

    def delete_by_url_sync(self, url: str, session_id: str) -> bool:
        return self._run(self.delete_by_url(url, session_id))

    def update_file_expiration_sync(self, url: str, expiration_timestamp: float, session_id: str) -> dict[str, Any]:
        return self._run(self.update_file_expiration(url, expiration_timestamp, session_id))

    def list_all_metadata_sync(self, session_id: str) -> list[dict[str, Any]]:
        return self._run(self.list_all_metadata(session_id))

    def get_file_block_by_url_sync(self, url: str, session_id: str | None) -> str:
        return self._run(self.get_file_block_by_url(url, session_id))

    def close_sync(self) -> None:
        """``close`` from synchronous code."""
        if self._closed:
            return
        runner = _LoopThread()
        try:
            runner.run(self.close())
        finally:
            runner.stop()


# --- helpers ------------------------------------------------------------------------------------------


class _Counter:
    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


class _LoopThread:
    """An event loop in a daemon thread, for the sync twins."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="flowmas-files-sync", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coroutine.close()
            raise RuntimeError("A FileService *_sync method was called from inside the service's own loop; "
                               "await the async method instead.")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()


def _positive(name: str, value: object, *, most: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not float(value).is_integer()):
        raise ConfigurationError(f"FileService {name} must be a {'whole ' if integer else ''}number, got {value!r}.")
    if not math.isfinite(value) or not 0 < value <= most:
        raise ConfigurationError(f"FileService {name} must be positive and at most {most:g}; got {value!r}.")
    return float(value)


def _is_session(session_id: object) -> bool:
    try:
        _check_session(session_id)
    except SessionMismatchError:
        return False
    return True


def _check_session(session_id: object) -> str:
    """``session_id`` if it may name a session (see the module docstring), else ``SessionMismatchError``."""
    if not isinstance(session_id, str):
        raise SessionMismatchError(f"Invalid session id: it must be text, not {type(session_id).__name__}.")
    if not session_id.strip():
        raise SessionMismatchError("Invalid session id: it is empty.")
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise SessionMismatchError(f"Invalid session id: it is {len(session_id):,} characters long; at most "
                                   f"{MAX_SESSION_ID_LENGTH:,} are allowed.")
    try:
        session_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(session_id[exc.start])
        raise SessionMismatchError(f"Invalid session id: it contains a lone surrogate (U+{code:04X}) at position "
                                   f"{exc.start}, which is not Unicode text.") from None
    return session_id


def _check_mime(value: object) -> str:
    if not isinstance(value, str) or not 3 <= len(value) <= 200 or "/" not in value \
            or not set(value) <= _MIME_RE_CHARS:
        raise ConfigurationError(f"mime_type must be a MIME type such as 'text/csv'; got {shorten(repr(value), 60)}.")
    return value


def _show(url: str) -> str:
    return repr(shorten(one_line(url), 120))


def _not_found(url: str) -> FileServiceNotFoundError:
    """The one answer for a missing file, another session's file and a wrong name."""
    return FileServiceNotFoundError(
        f"No file {_show(url)} in this session: it does not exist, was deleted, or belongs to another session. "
        "List the session's files to see what it holds.")


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(timestamp))


def errno_isdir() -> int:
    import errno

    return errno.EISDIR


async def _from_iterable(items: Iterable[bytes], *, threaded: bool) -> AsyncIterator[bytes]:
    if not threaded:
        for item in items:
            yield item
        return
    iterator = iter(items)

    def pull() -> bytes | None:
        return next(iterator, None)

    while True:
        pulled: bytes | None = await asyncio.to_thread(pull)
        if pulled is None:
            return
        yield pulled


async def _from_async(items: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for item in items:
        yield item


async def _chain(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for piece in head:
        yield piece
    async for piece in rest:
        yield piece


def _is_regular(handle: Any) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.fstat(handle.fileno()).st_mode)
    except (OSError, AttributeError, ValueError):
        return False


def _identity(info: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced or written: a copy taken between two equal ones is consistent."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


async def _read_file(handle: Any) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
        yield chunk


async def _settle(cleanup: Coroutine[Any, Any, None]) -> None:
    """Finish a cleanup even if the task is cancelled meanwhile (then re-raise the cancellation)."""
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
    except Exception as exc:  # noqa: BLE001 - the original error matters more; the sweep cleans up after
        log.warning("Cleaning up a failed upload failed (%s); the expiry sweep will remove what is left.", exc)


def _utf8_text(data: bytes, truncated: bool) -> str | None:
    """``data`` as text if it is UTF-8 (a character a cap cut in two is left out), else None."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if truncated and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            return data[: exc.start].decode("utf-8")
        return None
