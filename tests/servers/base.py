"""The plumbing every local test server shares: a stdlib HTTP/1.1 server on 127.0.0.1 in a thread.

A server class derives from :class:`ThreadedServer` and names its request handler (a :class:`TrackedHandler`
subclass). The base gives it:

* ``start()`` / ``stop()`` and a context manager: bind ``127.0.0.1:0`` (a free port), serve from a daemon
  thread (``poll_interval`` 0.05 s keeps ``stop()`` well under a second), and on stop cut every open
  connection, idle keep-alives and transfers alike, so the port is free at once;
* ``url`` (``http://127.0.0.1:PORT``);
* a request log, ``requests`` (records of the subclass's own type, appended by ``_record``), and ``reset()``,
  which empties it plus whatever the subclass clears in ``_reset_locked``;
* ``_lock`` (guarding the log and subclass state) and ``_stopping`` (an Event long-running handlers can wait
  on, to give up at once when the server stops).

Handlers get HTTP/1.1 keep-alive, no Nagle delay, no access log, and connection tracking for ``stop()``.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

__all__ = ["BoundServer", "ThreadedServer", "TrackedHandler"]

RecordT = TypeVar("RecordT")
OwnerT = TypeVar("OwnerT", bound="ThreadedServer[Any]")


class BoundServer(ThreadingHTTPServer, Generic[OwnerT]):
    """The socket server: daemon handler threads, no reverse DNS at bind, a back-reference to its owner."""

    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once
    owner: OwnerT

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which can stall on a reverse DNS lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """With ``quiet_disconnects``, clients resetting connections are routine, not worth a traceback on
        stderr; handler bugs always are."""
        if self.owner.quiet_disconnects and isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class TrackedHandler(BaseHTTPRequestHandler, Generic[OwnerT]):
    """Base request handler: keep-alive HTTP/1.1, silent, and known to its server's ``stop()``."""

    protocol_version = "HTTP/1.1"
    sys_version = ""
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: BoundServer[OwnerT]

    @property
    def owner(self) -> OwnerT:
        return self.server.owner

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._untrack(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        """Silenced: test output must not be polluted by access logs."""

    def _abort(self) -> None:
        """Cut the connection mid-response so the client sees a body shorter than announced."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


class ThreadedServer(Generic[RecordT]):
    """Lifecycle, URL, connection tracking and request log of a local test server."""

    handler: ClassVar[type[TrackedHandler[Any]]]
    quiet_disconnects: ClassVar[bool] = False  # True: no stderr traceback when a client resets a connection

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: BoundServer[Any] | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[RecordT] = []

    # -- lifecycle

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping = threading.Event()
        server: BoundServer[Any] = BoundServer(("127.0.0.1", 0), self.handler)
        server.owner = self
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop accepting, cut every open connection (idle keep-alives and transfers alike) and free the
        port; handler threads are daemons and exit as their sockets fail."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        with self._lock:
            self._stopping.set()
            conns = list(self._conns)
        server.shutdown()
        server.server_close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._server.server_port}"

    # -- state

    def reset(self) -> None:
        """Empty the request log and the subclass's state (``_reset_locked``), keeping the port."""
        with self._lock:
            self._reset_locked()
            self.requests.clear()

    def _reset_locked(self) -> None:
        """Clear subclass state; called with ``_lock`` held."""

    def _record(self, record: RecordT) -> None:
        with self._lock:
            self.requests.append(record)

    # -- connection tracking (handler callbacks)

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            if self._stopping.is_set():  # accepted while stop() was sweeping
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._conns.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)
