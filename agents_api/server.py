"""Serving the container API with uvicorn: ``run`` (the process's main job) and ``BackgroundServer`` (a thread).

Choices:

* **Host.** The platform reaches a container from outside it (Docker, Kubernetes), so a container started by a
  platform (``CONTAINER_ID`` or ``PLATFORM_URL`` set) listens on ``0.0.0.0``; anything else (a developer's
  machine) on ``127.0.0.1``. ``host=`` or ``FLOWMAS_API_HOST`` decide otherwise.
* **Port.** The image's ``apiPort`` (8082 unless container.json says otherwise), as the platform maps it.
* **No access log by default**: one INFO line per request costs throughput and fills the log of a container the
  platform probes every second; ``access_log=True`` (or uvicorn's own options) brings it back.
* uvicorn's standard extras (uvloop, httptools) are used when installed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

import uvicorn

from agents_api.app import create_app

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from flowmas.opaca.container import Container

__all__ = ["BackgroundServer", "default_host", "run"]


def default_host() -> str:
    """``FLOWMAS_API_HOST``, else ``0.0.0.0`` inside a platform-started container, else ``127.0.0.1``."""
    if host := os.environ.get("FLOWMAS_API_HOST"):
        return host
    return "0.0.0.0" if os.environ.get("CONTAINER_ID") or os.environ.get("PLATFORM_URL") else "127.0.0.1"


@overload
def run(container: Container, app: ASGIApp | None = None, *, host: str | None = None, port: int | None = None,
        access_log: bool = False, log_level: str = "info", **uvicorn_options: Any) -> None: ...


@overload
def run(title: str, container: Container, app: ASGIApp | None = None, *, host: str | None = None,
        port: int | None = None, access_log: bool = False, log_level: str = "info",
        **uvicorn_options: Any) -> None: ...


def run(*args: Any, host: str | None = None, port: int | None = None, access_log: bool = False,
        log_level: str = "info", **uvicorn_options: Any) -> None:
    """Serve the container until Ctrl-C or SIGTERM: ``run(container, app=None)`` or the SDK's
    ``run(title, container, app=None)``.

    Without ``app``, ``create_app(container)`` is served. Blocks; uvicorn handles the signals.
    """
    title: str | None = None
    if args and isinstance(args[0], str):
        title, args = args[0], args[1:]
    container: Container = args[0] if args else uvicorn_options.pop("container")
    app: ASGIApp | None = args[1] if len(args) > 1 else uvicorn_options.pop("app", None)
    if app is None:
        app = create_app(container, title=title)
    uvicorn.run(app, host=host or default_host(), port=port if port is not None else container.image.api_port,
                access_log=access_log, log_level=log_level, server_header=False, **uvicorn_options)


class BackgroundServer:
    """uvicorn serving ``app`` in a thread of its own (its own event loop): for tests and supervisors.

    ``port=0`` binds a free port; ``url`` says which once started. The socket is bound before the thread starts,
    so the port is known and taken at once. ``stop()`` asks uvicorn to finish (lifespan shutdown included).
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, access_log: bool = False,
                 log_level: str = "warning", **uvicorn_options: Any) -> None:
        self.config = uvicorn.Config(app, host=host, port=port, access_log=access_log, log_level=log_level,
                                     server_header=False, **uvicorn_options)
        self.server = uvicorn.Server(self.config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.set_inheritable(True)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {self.url}; see its log above.")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start on {self.url} within {timeout:g} s.")
            time.sleep(0.01)
        return self

    def _serve(self) -> None:
        assert self._socket is not None
        self.server.run(sockets=[self._socket])  # uvloop when installed; no signal handlers off the main thread

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
