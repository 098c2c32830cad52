"""An httpx transport for bulk downloads whose response stream can ``readinto`` caller buffers.

httpx's default transport hands the body over in 64 KiB ``bytes`` objects parsed by h11 in Python, which
caps a loopback download near 0.5 GiB/s on two cores. This transport sits behind the same
``httpx.Client`` (so headers, timeouts, status handling and the client's API are unchanged) and uses the
stdlib's ``http.client`` underneath, whose ``readinto`` copies socket data straight into the buffers the
hashing pipeline already owns. Measured on 1 GiB over loopback: ~1.2 s, the same as ``curl -o``,
against ~2.0 s through the default transport with the same pipeline.

It speaks HTTP/1.1 without proxies; ``HttpSource`` falls back to httpx's own transport when the
environment configures a proxy. Connection errors are raised as httpx's exception types, so callers see
one family of errors whichever transport is used.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from collections.abc import Iterator

import httpx

_Origin = tuple[str, str, int]


class ReadintoTransport(httpx.BaseTransport):
    """HTTP/1.1 over ``http.client`` with a small keep-alive pool, one idle connection per origin."""

    def __init__(self, *, verify: ssl.SSLContext | bool = True) -> None:
        self._verify = verify
        self._ssl: ssl.SSLContext | None = verify if isinstance(verify, ssl.SSLContext) else None
        self._idle: dict[_Origin, http.client.HTTPConnection] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        conn, pooled = self._checkout(origin, timeouts.get("connect"))
        try:
            response = self._exchange(conn, request, timeouts.get("read"))
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            if not pooled:
                raise _translate(exc, request) from exc
            # The server closed an idle keep-alive connection: one retry on a fresh one is always safe here.
            conn, _ = self._checkout(origin, timeouts.get("connect"), fresh=True)
            try:
                response = self._exchange(conn, request, timeouts.get("read"))
            except BaseException as exc:
                conn.close()
                raise _translate(exc, request) from exc
        except BaseException as exc:
            conn.close()
            raise _translate(exc, request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=[(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.getheaders()],
            stream=ReadintoStream(response, conn, lambda: self._checkin(origin, conn), request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason.encode("latin-1")},
            request=request,
        )

    @staticmethod
    def _exchange(
        conn: http.client.HTTPConnection, request: httpx.Request, read_timeout: float | None
    ) -> http.client.HTTPResponse:
        conn.putrequest(request.method, request.url.raw_path.decode("ascii"), skip_host=True,
                        skip_accept_encoding=True)
        for name, value in request.headers.raw:
            conn.putheader(name.decode("latin-1"), value.decode("latin-1"))
        body = request.read()
        conn.endheaders(body or None)
        if conn.sock is not None:
            conn.sock.settimeout(read_timeout)
        return conn.getresponse()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conn in idle.values():
            conn.close()

    def _checkout(
        self, origin: _Origin, connect_timeout: float | None, fresh: bool = False
    ) -> tuple[http.client.HTTPConnection, bool]:
        if not fresh:
            with self._lock:
                conn = self._idle.pop(origin, None)
            if conn is not None:
                return conn, True
        scheme, host, port = origin
        if scheme == "https":
            if self._ssl is None:  # loading the CA bundle costs tens of ms: only when https is used
                self._ssl = httpx.create_ssl_context(verify=self._verify)
            return http.client.HTTPSConnection(host, port, timeout=connect_timeout, context=self._ssl), False
        return http.client.HTTPConnection(host, port, timeout=connect_timeout), False

    def _checkin(self, origin: _Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            previous = self._idle.pop(origin, None)
            self._idle[origin] = conn
        if previous is not None:
            previous.close()


class ReadintoStream(httpx.SyncByteStream):
    """The body of one response: iterate it like any httpx stream, or ``readinto`` a buffer (fast path).

    ``readinto`` returns as soon as *some* bytes have arrived (one ``recv``), never waiting to fill the
    buffer: a slow server's bytes reach the caller, and the disk, as they arrive. A body with a
    ``Content-Length`` is read straight from the socket once the few bytes ``http.client`` buffered with
    the headers are drained; other bodies (chunked, close-delimited) go through ``http.client``.
    ``ready(timeout)`` tells whether a read would return at once, so a caller holding unwritten bytes can
    write them before it blocks. ``set_timeout`` bounds the next reads (a download's deadline).
    """

    def __init__(
        self,
        response: http.client.HTTPResponse,
        conn: http.client.HTTPConnection,
        reuse: object,
        request: httpx.Request,
    ) -> None:
        self._response = response
        self._conn = conn
        self._reuse = reuse
        self._request = request
        self._complete = False
        self._remaining: int | None = response.length if not response.chunked else None
        self._drained = False  # bytes http.client read past the headers are still in its buffer

    def readinto(self, buffer: memoryview) -> int:
        try:
            return self._readinto(buffer)
        except BaseException as exc:
            raise _translate(exc, self._request) from exc

    def _readinto(self, buffer: memoryview) -> int:
        response = self._response
        if response is None or response.fp is None or not len(buffer):
            return 0
        if self._remaining is None:  # chunked or close-delimited: http.client knows the framing
            data = response.read1(len(buffer))
            buffer[: len(data)] = data
            if not data:
                self._complete = response.chunked  # a chunked body ends with its last-chunk marker
            return len(data)
        if self._remaining == 0:
            self._complete = True
            return 0
        view = buffer[: min(len(buffer), self._remaining)]
        if not self._drained:
            data = response.fp.read1(len(view))  # only what is buffered, else one recv
            self._drained = True
            n = len(data)
            view[:n] = data
        else:
            n = response.fp.raw.readinto(view) or 0  # one recv, straight into the caller's buffer
        if not n:
            return 0  # cut short: the caller compares with Content-Length; the connection is not reused
        self._remaining -= n
        if self._remaining == 0:
            self._complete = True
        return n

    def ready(self, timeout: float) -> bool:
        """Whether bytes are waiting (or the end is known), waiting at most ``timeout`` seconds."""
        sock = self._conn.sock
        if sock is None or not self._drained or self._remaining is None or self._remaining == 0:
            return True
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        readable, _, _ = select.select([sock], [], [], timeout)
        return bool(readable)

    def set_timeout(self, seconds: float | None) -> None:
        if self._conn.sock is not None:
            self._conn.sock.settimeout(seconds)

    def __iter__(self) -> Iterator[bytes]:
        buffer = bytearray(2**20)
        view = memoryview(buffer)
        while n := self.readinto(view):
            yield bytes(view[:n])

    def close(self) -> None:
        response, self._response = self._response, None  # type: ignore[assignment]
        if response is None:
            return
        response.close()  # frees http.client's state; the socket belongs to the connection
        if self._complete and not response.will_close:
            self._reuse()  # type: ignore[operator]
        else:
            self._conn.close()


def _translate(exc: BaseException, request: httpx.Request) -> BaseException:
    """Map stdlib network errors onto httpx's exception tree (once, here)."""
    if isinstance(exc, httpx.HTTPError):
        return exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return httpx.ReadTimeout(f"timed out: {exc}", request=request)
    if isinstance(exc, http.client.IncompleteRead):
        got = len(exc.partial)
        return httpx.RemoteProtocolError(
            f"peer closed the connection mid-body ({got} bytes read, {exc.expected} more expected)", request=request
        )
    if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
        return httpx.RemoteProtocolError(f"connection closed by the server: {exc}", request=request)
    if isinstance(exc, ConnectionRefusedError):
        return httpx.ConnectError(f"connection refused: {exc}", request=request)
    if isinstance(exc, ssl.SSLError):
        return httpx.ConnectError(f"TLS error: {exc}", request=request)
    if isinstance(exc, (http.client.HTTPException, OSError)):
        return httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request)
    return exc
