"""Local HTTP/1.1 file server for tests and benchmarks of the asset downloader.

Built on the stdlib (``ThreadingHTTPServer``) so that tests exercise the real ``httpx`` client over real
sockets without any extra dependency. The HTTP subset reproduced is the one a resuming downloader relies on:

* ``GET`` and ``HEAD`` with persistent (keep-alive) HTTP/1.1 connections; every response carries
  ``Content-Length`` (no chunked encoding), so clients can always detect truncated bodies;
* strong ``ETag`` validators and an optional literal ``Last-Modified``;
* single byte ranges (``bytes=N-``, ``bytes=N-M``, ``bytes=-K``) answered with ``206`` +
  ``Content-Range``, ``416`` + ``Content-Range: bytes */TOTAL`` when unsatisfiable, and ``If-Range``
  (ETag or date, strong comparison); multi-range or malformed ``Range`` headers are ignored (a full
  ``200``), which RFC 9110 permits;
* exact-match request-header checks (bearer tokens, API keys) answered with ``401``;
* per-request scripted faults: arbitrary statuses, redirects, truncated bodies and throttled bodies;
* servers that lie: ``if_range=False`` ignores ``If-Range`` (splicing versions), and scripted ``status``
  answers can send a ``206``/``416`` nobody asked for, ``Content-Encoding`` bodies or a ``Location``-less
  redirect.

Not reproduced: conditional GETs (``If-None-Match`` / ``304``), content coding, request bodies, methods
other than GET/HEAD (the stdlib answers ``501``). Paths are matched literally, without percent-decoding;
the query string is recorded but ignored for routing.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.base import ThreadedServer, TrackedHandler

__all__ = [
    "Behaviour",
    "DropAfter",
    "FileServer",
    "Ok",
    "Redirect",
    "RequestRecord",
    "Slow",
    "Status",
    "drop_after",
    "ok",
    "redirect",
    "slow",
    "status",
]

_CHUNK = 64 * 1024  # granularity of in-memory writes, so a client abort leaves an exact byte count
_AUTO = "auto"


# --------------------------------------------------------------------------------------------- behaviours


@dataclass(frozen=True)
class Ok:
    """Serve the request normally."""


@dataclass(frozen=True)
class Status:
    """Answer with a fixed status, headers and body instead of the file."""

    code: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class DropAfter:
    """Send the normal headers, then only ``n`` body bytes, then cut the connection (HEAD: headers only)."""

    n: int


@dataclass(frozen=True)
class Slow:
    """Pace the body to ``bytes_per_second``, writing ``chunk`` bytes at a time."""

    bytes_per_second: int
    chunk: int = 16384


@dataclass(frozen=True)
class Redirect:
    """Answer with a body-less redirect to ``location``."""

    location: str
    code: int = 302


Behaviour = Ok | Status | DropAfter | Slow | Redirect


def ok() -> Ok:
    """Serve normally; lets a script end a fault sequence explicitly, e.g. ``[status(503), ok()]``."""
    return Ok()


def status(code: int, *, headers: dict[str, str] | None = None, body: bytes = b"") -> Status:
    """Answer ``code`` (e.g. 503, 429 with ``Retry-After``) instead of serving the file."""
    return Status(code, tuple((headers or {}).items()), body)


def drop_after(n: int) -> DropAfter:
    """Truncate the body after ``n`` bytes and close the connection abruptly (a mid-transfer failure)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return DropAfter(n)


def slow(bytes_per_second: int, chunk: int = 16384) -> Slow:
    """Throttle the body so a test can interrupt the downloading process mid-transfer."""
    if bytes_per_second <= 0 or chunk <= 0:
        raise ValueError("bytes_per_second and chunk must be > 0")
    return Slow(bytes_per_second, chunk)


def redirect(location: str, code: int = 302) -> Redirect:
    """Redirect to ``location`` (absolute URLs allow cross-origin redirects between two servers)."""
    return Redirect(location, code)


# ------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it, with the status it answered."""

    method: str
    path: str  # without the query string
    headers: dict[str, str]  # names lower-cased
    range: str | None  # raw Range header
    status: int
    query: str = ""
    at: float = field(default_factory=time.monotonic)  # when it was answered (time.monotonic)


@dataclass(frozen=True)
class _Entry:
    data: bytes | Path
    etag: str | None  # resolved, or _AUTO for files (recomputed per request, so edits change it)
    last_modified: str | None
    ranges: bool
    require_headers: dict[str, str]
    if_range: bool = True


class _Unsatisfiable(Exception):
    pass


def _parse_range(value: str, total: int) -> tuple[int, int] | None:
    """Return the inclusive byte span asked for, or None when the header should be ignored.

    Raises _Unsatisfiable for a well-formed range that lies outside the representation.
    """
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if m is None or not (m[1] or m[2]):
        return None
    if not m[1]:  # suffix range: the last K bytes
        suffix = int(m[2])
        if suffix == 0 or total == 0:
            raise _Unsatisfiable
        return max(total - suffix, 0), total - 1
    start = int(m[1])
    if m[2] and int(m[2]) < start:
        return None  # syntactically invalid: RFC 9110 says ignore
    end = int(m[2]) if m[2] else total - 1
    if start >= total:
        raise _Unsatisfiable
    return start, min(end, total - 1)


def _if_range_matches(value: str, etag: str | None, last_modified: str | None) -> bool:
    """Strong comparison: weak ETags never match, dates must equal Last-Modified exactly."""
    value = value.strip()
    if value.startswith(('"', 'W/"')):
        return etag is not None and value == etag and not etag.startswith("W/")
    return last_modified is not None and value == last_modified


# ------------------------------------------------------------------------------------------------- server


class _Handler(TrackedHandler["FileServer"]):
    server_version = "flowmas-test-files"
    _path: str  # request path without the query string
    _query: str

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    # -- request dispatch

    def _handle(self, *, head: bool) -> None:
        owner = self.server.owner
        self._path, _, self._query = self.path.partition("?")
        behaviour = owner._next_behaviour(self._path)
        with owner._in_flight(self._path):
            if isinstance(behaviour, Status):
                self._reply(behaviour.code, behaviour.body, dict(behaviour.headers), head=head)
            elif isinstance(behaviour, Redirect):
                self._reply(behaviour.code, b"", {"Location": behaviour.location}, head=head)
            else:
                self._serve(owner._entry(self._path), behaviour, head=head)

    def _serve(self, entry: _Entry | None, behaviour: Ok | DropAfter | Slow, *, head: bool) -> None:
        if entry is None:
            self._reply(404, b"not found\n", head=head)
            return
        if any(self.headers.get(k) != v for k, v in entry.require_headers.items()):
            self._reply(401, b"unauthorized\n", head=head)
            return
        if isinstance(entry.data, bytes):
            self._send_entity(entry, entry.data, len(entry.data), entry.etag, behaviour, head=head)
            return
        try:
            fd = os.open(entry.data, os.O_RDONLY)
        except FileNotFoundError:
            self._reply(404, b"not found\n", head=head)
            return
        try:
            st = os.fstat(fd)
            etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"' if entry.etag == _AUTO else entry.etag
            self._send_entity(entry, fd, st.st_size, etag, behaviour, head=head)
        finally:
            os.close(fd)

    def _send_entity(
        self,
        entry: _Entry,
        source: bytes | int,  # in-memory body or an open file descriptor
        total: int,
        etag: str | None,
        behaviour: Ok | DropAfter | Slow,
        *,
        head: bool,
    ) -> None:
        headers: dict[str, str] = {}
        if entry.ranges:
            headers["Accept-Ranges"] = "bytes"
        if etag is not None:
            headers["ETag"] = etag
        if entry.last_modified is not None:
            headers["Last-Modified"] = entry.last_modified

        code, start, length = 200, 0, total
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if (
            entry.ranges
            and not head  # RFC 9110: Range is only defined for GET
            and range_header is not None
            and (if_range is None or not entry.if_range or _if_range_matches(if_range, etag, entry.last_modified))
        ):
            try:
                span = _parse_range(range_header, total)
            except _Unsatisfiable:
                self._reply(416, b"", {**headers, "Content-Range": f"bytes */{total}"}, head=head)
                return
            if span is not None:
                code, start, length = 206, span[0], span[1] - span[0] + 1
                headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{total}"

        self._start(code, length, headers)
        if head:
            return
        limit = min(behaviour.n, length) if isinstance(behaviour, DropAfter) else length
        if isinstance(behaviour, Slow):
            self._send_paced(source, start, limit, behaviour)
        elif isinstance(source, int):
            self._sendfile(source, start, limit)
        else:
            self._send_memory(memoryview(source)[start : start + limit])
        if isinstance(behaviour, DropAfter):
            self._abort()

    # -- response primitives

    def _start(self, code: int, length: int, headers: dict[str, str]) -> None:
        """Send the status line and headers, recording the request first so that a client which has
        seen the response can always find its record."""
        self.server.owner._record(
            RequestRecord(
                method=self.command,
                path=self._path,
                headers={k.lower(): v for k, v in self.headers.items()},
                range=self.headers.get("Range"),
                status=code,
                query=self._query,
            )
        )
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _reply(self, code: int, body: bytes, headers: dict[str, str] | None = None, *, head: bool) -> None:
        self._start(code, len(body), headers or {})
        if not head and body:
            self._send_memory(memoryview(body))

    def _write(self, data: bytes | memoryview) -> bool:
        """sendall one piece and count it; False once the client is gone."""
        try:
            self.connection.sendall(data)
        except OSError:
            self.close_connection = True
            return False
        self.server.owner._count(self._path, len(data))
        return True

    def _send_memory(self, view: memoryview) -> None:
        for offset in range(0, len(view), _CHUNK):
            if not self._write(view[offset : offset + _CHUNK]):
                return

    def _sendfile(self, fd: int, offset: int, count: int) -> None:
        """Zero-copy send (bodies can be GiB-sized); counted per syscall so aborts stay exact."""
        out = self.connection.fileno()
        while count > 0:
            try:
                sent = os.sendfile(out, fd, offset, count)
            except OSError:
                self.close_connection = True
                return
            if sent == 0:  # file shrank underneath us; the client will see a short body
                self._abort()
                return
            self.server.owner._count(self._path, sent)
            offset += sent
            count -= sent

    def _send_paced(self, source: bytes | int, start: int, limit: int, pace: Slow) -> None:
        """Write chunks no faster than the rate; stop at once when the server stops or the client leaves."""
        stopping = self.server.owner._stopping
        began, sent = time.monotonic(), 0
        while sent < limit:
            delay = began + sent / pace.bytes_per_second - time.monotonic()
            if delay > 0 and stopping.wait(delay):
                self._abort()
                return
            n = min(pace.chunk, limit - sent)
            pos = start + sent
            piece = os.pread(source, n, pos) if isinstance(source, int) else source[pos : pos + n]
            if not self._write(piece):
                return
            sent += n


class FileServer(ThreadedServer[RequestRecord]):
    """Serves registered paths from 127.0.0.1 on an ephemeral port, with scriptable per-request faults."""

    handler = _Handler

    def __init__(self) -> None:
        super().__init__()
        self._settled = threading.Condition(self._lock)
        self._files: dict[str, _Entry] = {}
        self._scripts: dict[str, collections.deque[Behaviour]] = {}
        self._sent: collections.Counter[str] = collections.Counter()
        self._active: collections.Counter[str] = collections.Counter()

    def url_for(self, path: str) -> str:
        return self.url + path

    # -- content

    def add(
        self,
        path: str,
        data: bytes | os.PathLike[str],
        *,
        etag: str | None = _AUTO,
        last_modified: str | None = None,
        ranges: bool = True,
        require_headers: dict[str, str] | None = None,
        if_range: bool = True,
    ) -> None:
        """Register ``data`` at ``path``. Files are served from disk on each request (never loaded), and
        their auto ETag follows size+mtime_ns so rewriting a file mid-test invalidates resumes.

        ``if_range=False`` makes a server that ignores ``If-Range`` (a broken cache or proxy): it answers
        any ``Range`` with a ``206`` of the current file, even when the client's validator is stale."""
        body: bytes | Path = Path(data) if isinstance(data, os.PathLike) else bytes(data)
        if etag == _AUTO and isinstance(body, bytes):
            etag = f'"{hashlib.sha1(body).hexdigest()}"'
        entry = _Entry(body, etag, last_modified, ranges, dict(require_headers or {}), if_range)
        with self._lock:
            self._files[path] = entry

    def script(self, path: str, *behaviours: Behaviour) -> None:
        """Queue one behaviour per upcoming GET/HEAD to ``path``; afterwards requests are served normally."""
        with self._lock:
            self._scripts[path] = collections.deque(behaviours)

    def _reset_locked(self) -> None:
        self._files.clear()
        self._scripts.clear()
        self._sent.clear()

    # -- observations

    def requests_for(self, path: str, method: str | None = "GET") -> list[RequestRecord]:
        """Requests to ``path`` (query ignored); ``method=None`` matches every method."""
        with self._lock:
            return [r for r in self.requests if r.path == path and method in (None, r.method)]

    def bytes_sent(self, path: str, *, settle: float = 1.0) -> int:
        """Body bytes written for ``path`` across all requests.

        Waits up to ``settle`` seconds for responses still in progress on ``path``: a client can finish
        reading before the server thread has counted its last write, and an aborted client is only
        noticed at the server's next write.
        """
        with self._settled:
            self._settled.wait_for(lambda: not self._active[path], timeout=settle)
            return self._sent[path]

    # -- handler callbacks

    def _entry(self, path: str) -> _Entry | None:
        with self._lock:
            return self._files.get(path)

    def _next_behaviour(self, path: str) -> Behaviour:
        with self._lock:
            queue = self._scripts.get(path)
            return queue.popleft() if queue else Ok()

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self._sent[path] += n

    @contextlib.contextmanager
    def _in_flight(self, path: str) -> Iterator[None]:
        with self._lock:
            self._active[path] += 1
        try:
            yield
        finally:
            with self._settled:
                self._active[path] -= 1
                self._settled.notify_all()
