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
    """The body of one response: iterate it like any httpx stream, or ``readinto`` a buffer (fast path)."""

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

    def readinto(self, buffer: memoryview) -> int:
        try:
            n = self._response.readinto(buffer)
        except BaseException as exc:
            raise _translate(exc, self._request) from exc
        if n == 0 and len(buffer):
            # http.client reports a body cut short as a plain EOF; only a fully read body frees the connection.
            self._complete = not self._response.length
        return n

    def __iter__(self) -> Iterator[bytes]:
        buffer = bytearray(2**20)
        view = memoryview(buffer)
        while n := self.readinto(view):
            yield bytes(view[:n])

    def close(self) -> None:
        response, self._response = self._response, None  # type: ignore[assignment]
        if response is None:
            return
        if self._complete and not response.will_close:
            self._reuse()  # type: ignore[operator]
        else:
            response.close()
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
