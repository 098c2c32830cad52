"""The one table from flowmas errors to HTTP status codes, and the ``ErrorResponse`` body every error answer has.

The platform parses a container's error body as ``ErrorResponse {statusCode, message, cause}`` and nests it as
the cause of its own 502; FastAPI's ``{"detail": …}`` does not parse, and a traceback leaks file paths. So no
answer of this face carries anything else: flowmas errors go through ``STATUS``; routing's 404/405, FastAPI's
validation errors and anything unexpected are turned into an ``ErrorResponse`` as well.

    error                                     status  message shown
    UnknownAgentError/Action/Stream             404   the core's message
    InvalidArgumentsError, MalformedRequestError 400  the core's / the face's message
    NotAuthenticatedError                       403   what the request lacked (never the token)
    PayloadTooLargeError                        413   the limit and the variable that sets it
    LoginFailedError                            401   the core's message
    LoginNotSupportedError                      501   the core's message
    ActionFailedError                           500   or the ``status_code`` of the HTTPException the action raised
    ActionTimeoutError                          504   the core's message (run id when a flow run goes on)
    FileServiceNotFoundError, FileExpiredError  404   one sentence for missing, expired and another session's
    InvalidFileURLError                         400   what is wrong with the amfs:// URL or its params
    SessionMismatchError                        403   an invalid session id, a forged or foreign share URL
    FileTooLargeError                           413   the limit that was passed
    FileStorageError                            503   which store failed and what to check
    anything else                               500   "Internal error (error id …; see the container log)"

Invariants: a 500 is logged once, with its traceback, under a correlation id that its message names; any
other error status is an answer someone meant (a client's mistake, a login refused or unsupported, an
action's own ``HTTPException(503)``, a timeout) and is logged at DEBUG only here (a flood of bad requests must
not flood the log; the core logs timeouts and failing actions itself); no message is longer than
``MAX_MESSAGE`` characters, so an absurd path segment echoed by the core cannot bloat an answer.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowmas.errors import (
    ActionFailedError,
    ActionTimeoutError,
    FileExpiredError,
    FileServiceNotFoundError,
    FileStorageError,
    FileTooLargeError,
    InvalidArgumentsError,
    InvalidFileURLError,
    LoginFailedError,
    LoginNotSupportedError,
    OpacaError,
    SessionMismatchError,
    UnknownActionError,
    UnknownAgentError,
    UnknownStreamError,
)
from flowmas.text import one_line, shorten

__all__ = [
    "MAX_MESSAGE",
    "STATUS",
    "CatchAll",
    "MalformedRequestError",
    "NotAuthenticatedError",
    "PayloadTooLargeError",
    "ResponseAbortedError",
    "error_body",
    "error_response",
    "response_for",
    "status_for",
]

logger = logging.getLogger("agents_api")

MAX_MESSAGE = 1000
"""Longest message an error answer carries (user-supplied names inside it are cut, never the whole answer)."""


class MalformedRequestError(OpacaError, ValueError):
    """The request itself is unusable: a body that is not JSON, not an object, a bad ``timeout`` (HTTP 400)."""


class PayloadTooLargeError(OpacaError, ValueError):
    """The request body is larger than ``FLOWMAS_API_MAX_BODY_BYTES`` (HTTP 413)."""


class NotAuthenticatedError(OpacaError, PermissionError):
    """The request lacks the container's ``Authorization: Bearer <TOKEN>`` (HTTP 403, as the reference does)."""


class ResponseAbortedError(OpacaError):
    """A streamed answer failed after it had started: already logged with its error id; the connection breaks."""


STATUS: Mapping[type[BaseException], int] = {
    UnknownAgentError: 404,
    UnknownActionError: 404,
    UnknownStreamError: 404,
    InvalidArgumentsError: 400,
    MalformedRequestError: 400,
    NotAuthenticatedError: 403,
    PayloadTooLargeError: 413,
    LoginFailedError: 401,
    LoginNotSupportedError: 501,
    ActionFailedError: 500,
    ActionTimeoutError: 504,
    FileServiceNotFoundError: 404,
    FileExpiredError: 404,
    InvalidFileURLError: 400,
    SessionMismatchError: 403,
    FileTooLargeError: 413,
    FileStorageError: 503,
}
"""The one table: an exception class (or its nearest listed base) → HTTP status. Anything unlisted is a 500."""

_by_type: dict[type[BaseException], int | None] = {}


def status_for(exc: BaseException) -> int | None:
    """The status of ``exc`` from ``STATUS`` (nearest base class wins), an HTTP exception's own, else ``None``.

    An action that raised FastAPI's or Starlette's ``HTTPException`` keeps its code: the core carries it as
    ``ActionFailedError.status_code``. A code outside 400–599 (an action raising ``HTTPException(200)``) is
    not an error status and becomes 500.
    """
    if isinstance(exc, ActionFailedError | StarletteHTTPException):
        code = exc.status_code
        return code if isinstance(code, int) and 400 <= code <= 599 else 500
    kind = type(exc)
    if kind not in _by_type:
        _by_type[kind] = next((STATUS[base] for base in kind.__mro__ if base in STATUS), None)
    return _by_type[kind]


def error_body(status: int, message: str, cause: dict[str, Any] | None = None) -> bytes:
    """An ``ErrorResponse`` as JSON bytes: ``{"statusCode", "message"[, "cause"]}`` (no ``null`` fields)."""
    body: dict[str, Any] = {"statusCode": status, "message": _clip(message)}
    if cause is not None:
        body["cause"] = cause
    return orjson.dumps(body)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """The HTTP answer for an error: ``ErrorResponse`` JSON with ``status``."""
    return Response(error_body(status, message), status_code=status, headers=headers,
                    media_type="application/json")


def response_for(exc: BaseException, *, where: str = "") -> Response:
    """The answer for any exception raised while handling a request (``where`` names the route for the log).

    Expected errors (the table) answer with their own message; a 5xx, and anything unexpected, is logged with
    its traceback under a fresh error id that the answer names, and the answer never shows the exception text
    of something unexpected (it could carry a path, a header, a secret).
    """
    status = status_for(exc)
    headers: Mapping[str, str] | None = {"Connection": "close"} if status == 413 else None  # the rest is unread
    if isinstance(exc, StarletteHTTPException):
        headers = exc.headers
        message = _http_exception_message(exc, status or 500)
    elif isinstance(exc, ActionFailedError) and status != 500:
        detail = getattr(exc, "detail", None)
        message = _text(detail) if detail is not None else str(exc)
    elif status is None:
        error_id = new_error_id()
        logger.error("Unexpected error in %s (error id %s)", where or "a request", error_id, exc_info=exc)
        return error_response(500, f"Internal error in the container (error id {error_id}; see the container log).")
    else:
        message = str(exc) or type(exc).__name__
    run_id = getattr(exc, "run_id", None)
    if isinstance(exc, ActionTimeoutError | ActionFailedError) and run_id and str(run_id) not in message:
        going_on = " goes on" if isinstance(exc, ActionTimeoutError) else ""
        message = f"{message.rstrip('. ')} (flow run {run_id}{going_on})."
    if status == 500:  # something broke: the traceback goes to the log, under an id the answer names
        error_id = new_error_id()
        logger.error("%s (error id %s)", one_line(shorten(message, MAX_MESSAGE)), error_id, exc_info=exc)
        message = f"{message.rstrip('. ')} (error id {error_id}; see the container log)."
    else:  # an answer someone meant (404, 401, 501, an action's own 503, a timeout's 504): no traceback
        logger.debug("%s answered %s: %s", where or "request", status, one_line(shorten(message, 200)))
    return error_response(status or 500, message, headers)


def new_error_id() -> str:
    """A short correlation id: named in the answer, searchable in the container log."""
    return uuid.uuid4().hex[:12]


def _http_exception_message(exc: StarletteHTTPException, status: int) -> str:
    if status == 404 and exc.detail == "Not Found":
        return ("No such route: the container API serves /info, /agents, /invoke, /stream, /send, /broadcast, "
                "/login and /logout.")
    if status == 405 and exc.detail == "Method Not Allowed":
        allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
        return f"Method not allowed on this route{f'; use {allowed}' if allowed else ''}."
    return _text(exc.detail)


def _text(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    try:
        return orjson.dumps(detail, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):
        return str(detail)


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


class CatchAll:
    """Outermost ASGI middleware: whatever escapes the app still answers an ``ErrorResponse``, never a traceback.

    Starlette's own last-resort handler answers ``Internal Server Error`` in plain text and re-raises (so
    uvicorn logs the traceback a second time); this one answers the ``ErrorResponse`` of ``response_for``,
    logged once with an error id. If the response had already started (a stream failing halfway), nothing can
    be answered any more: the error is logged and the connection is left incomplete, which is how a client
    learns that a stream broke.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                if not isinstance(exc, ResponseAbortedError):
                    logger.error("A response failed after it had started (%s %s)", scope.get("method"),
                                 shorten(one_line(scope.get("path", "")), 200), exc_info=exc)
                return
            response = response_for(exc, where=f"{scope.get('method')} {shorten(one_line(scope.get('path', '')), 200)}")
            await response(scope, receive, send)
