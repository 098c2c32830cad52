"""The one rule that turns a provider's HTTP error into a flowmas error (adapters extract the fields).

- 429, 408, 409 (Anthropic's "conflict, retry"), every 5xx and 529 → ``TransientLLMHTTPError`` (retried);
- a context-window overflow (by code or wording, any status) → ``ContextLengthExceededError``;
- anything else (400, 401, 403, 404, 413, 422 …) → ``LLMHTTPError``: never retried, never swallowed.

The message names the provider, status, code, the provider's own message (trimmed) and the request id; it is
built from the response body only, never from request headers, so it cannot carry a credential.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from flowmas.errors import ContextLengthExceededError, LLMHTTPError, TransientLLMHTTPError

_CONTEXT_WORDS = re.compile(
    r"prompt is too long|exceeds? (the )?(model'?s? )?context|context (window|length|limit)|maximum context length|"
    r"context_length_exceeded|input is too long|too many (input )?tokens|input length and `?max_tokens`? exceed",
    re.IGNORECASE,
)
_CONTEXT_CODES = {"context_length_exceeded", "string_above_max_length", "model_context_window_exceeded"}
_TRANSIENT = {408, 409, 425, 429}
MAX_MESSAGE = 500


def parse_retry_after(headers: Mapping[str, str] | Any) -> float | None:
    """Seconds from ``retry-after-ms``, or ``retry-after`` (seconds or an HTTP date); None when absent or odd."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(float(ms) / 1000.0, 0.0)
        value = headers.get("retry-after")
    except (TypeError, ValueError, AttributeError):
        return None
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def is_context_overflow(code: str | None, message: str | None) -> bool:
    return (code or "") in _CONTEXT_CODES or bool(message and _CONTEXT_WORDS.search(message))


def status_error(
    *,
    provider: str,
    model: str,
    status: int | None,
    message: str | None,
    code: str | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
    scrub: Callable[[str], str] | None = None,
) -> LLMHTTPError:
    """The flowmas error for one provider error answer; ``scrub`` removes credentials from the provider's text."""
    if scrub is not None and message:
        message = scrub(message)
    text = (message or "").strip() or "no message"
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    label = f"{provider} {status}" if status is not None else provider
    if code:
        label += f" {code}"
    rid = f" (request id {request_id})" if request_id else ""
    fields: dict[str, Any] = dict(provider=provider, model=model, status=status, request_id=request_id, code=code,
                                  provider_message=message)
    if is_context_overflow(code, message):
        return ContextLengthExceededError(
            f"{label}: {text}{rid}. The prompt does not fit {model}'s context window: shorten the messages "
            "or lower max_tokens.", **fields)
    if status is not None and (status in _TRANSIENT or status >= 500):
        return TransientLLMHTTPError(f"{label}: {text}{rid}.", retry_after=retry_after, **fields)
    hint = {
        401: " Check the API key or credentials.",
        403: " The credentials may not use this model or endpoint.",
        404: f" Check the model name ({model!r}) and the base URL.",
        413: " The request is too large: send fewer or smaller attachments.",
    }.get(status or 0, "")
    return LLMHTTPError(f"{label}: {text}{rid}.{hint}", **fields)
