"""The services runner of ``flowmas up``: start services in order, run the foreground, stop in reverse.

A ``Service`` starts (returning once it answers) and stops (bounded, idempotent). ``run_services`` starts
them in order, runs the foreground until it returns, then stops the started ones in reverse, also when a
later one fails to start and when SIGINT or SIGTERM arrives (both unwind the same way). ``sentence`` turns
whatever a library raises into one ``ServiceStartError`` sentence, so no traceback reaches the terminal.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import httpx

from flowmas.errors import ConfigurationError, ServiceStartError

logger = logging.getLogger("flowmas.up")


class Service(Protocol):
    name: str

    def start(self) -> None:
        """Return once the service answers; raise ServiceStartError otherwise."""

    def stop(self) -> None:
        """Stop it and wait (bounded); idempotent."""


_stop_requested = threading.Event()
"""Set by a SIGINT or SIGTERM: whatever fails afterwards failed because we were asked to stop."""


def _request_stop(signum: int, frame: object) -> None:
    _stop_requested.set()
    raise KeyboardInterrupt


def stop_requested() -> bool:
    """Whether a SIGINT or SIGTERM arrived since ``run_services`` began."""
    return _stop_requested.is_set()


def run_services(services: Sequence[Service], foreground: Callable[[], None]) -> None:
    """Start ``services`` in order, run ``foreground`` until it returns, stop the started ones in reverse."""
    started: list[Service] = []
    _stop_requested.clear()
    # Ctrl-C raises KeyboardInterrupt even if the parent ignored SIGINT (a shell's background job); until
    # prefect's runner installs its own graceful SIGTERM handler, SIGTERM unwinds the same way, so the
    # services already started are stopped rather than orphaned. The interrupt can land inside a library
    # that wraps it in its own error (pydantic's SchemaError, seen): sentence() then reads it as the stop.
    with signals({signal.SIGINT: _request_stop, signal.SIGTERM: _request_stop}):
        try:
            for service in services:
                service.start()
                started.append(service)
            foreground()
        finally:
            # A second Ctrl-C must not leave a half-stopped server behind.
            with signals({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}):
                for service in reversed(started):
                    service.stop()


@contextmanager
def signals(handlers: dict[signal.Signals, Any]) -> Iterator[None]:
    """Install signal handlers for the block (only the main thread can; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def sentence(what: str, hint: str) -> Iterator[None]:
    """Turn any ``Exception`` of the block into one ServiceStartError sentence; the traceback goes to debug."""
    try:
        yield
    except (ConfigurationError, ServiceStartError):
        raise
    except Exception as exc:
        logger.debug("%s", what, exc_info=True)
        if _stop_requested.is_set():  # an interrupt that a library wrapped in an error of its own
            raise KeyboardInterrupt from None
        raise ServiceStartError(f"{what} ({describe_error(exc)}). {hint}") from exc



def describe_error(exc: BaseException) -> str:
    """``exc`` in one line: the user's exception inside a ScriptError, an HTTP status with its request."""
    from prefect.exceptions import ScriptError

    if isinstance(exc, ScriptError):
        exc = exc.user_exc
    if isinstance(exc, httpx.HTTPStatusError):
        request = exc.request
        return f"{request.method} {request.url} answered HTTP {exc.response.status_code}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
