"""``amfs://`` URLs: build, parse, find them in text, and sign share URLs.

Grammar (what ``build_url``/``with_params`` emit; ``parse_url`` accepts it and a little more, see below)::

    url        = "amfs://" signature "_" name [ "?" [ param *( "&" param ) ] ]
    signature  = 32 lowercase hex digits            ; secrets.token_hex(16): 128 random bits
    name       = 1*( unreserved / pct-encoded )     ; the UTF-8 file name, quote(name, safe="")
    param      = key [ "=" value ]                   ; key and value encoded like the name
    unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"

Why it is safe:

- The **signature is the key**. It runs up to the first ``_`` and is hex, so nothing in a name can change
  it, and a name can never address another file: the service refuses a URL whose name differs from the
  stored one (as not found).
- **Every reserved character of a name is percent-encoded** (``#``, ``?``, ``&``, ``%``, ``/``, ``[``,
  spaces, quotes, any non-ASCII), so any valid name round-trips exactly:
  ``parse_url(build_url(sig, name)) == (sig, name, {})``. ``urlparse`` and its netloc rules are never used
  (SAM's ``a#b.txt`` and ``data[1].csv`` bugs).
- **An emitted URL never ends with ``.``**: a name or value ending in ``.`` has that dot written ``%2E``. So
  in prose the end of a URL is unambiguous: it is the first character outside the grammar, and a
  sentence's full stop after it is not part of it (``get_urls_from_text``).

File names: any Unicode text of 1 to ``MAX_NAME_LENGTH`` (1024) characters without control characters
(Unicode category Cc: NUL, newlines, tabs, DEL, C1) or lone surrogates. Everything printable is allowed,
``/``, ``\\``, ``..``, ``#``, quotes and bidi overrides included: a name is data, never a path or a storage
key, and ``render.py`` escapes it for prompts. Control characters are refused rather than rewritten: no
person types them into a file name, they forge log lines and terminal output, and silently changing a
name would break the exact round trip.

``parse_url`` is strict about structure and lenient about spelling: it refuses a missing or wrong
signature, an empty or invalid name, whitespace, a raw ``#``, a ``%`` that does not start a ``%HH``
escape, bytes that are not UTF-8, an empty key and a repeated key, each with a message naming what is
wrong; it accepts other raw printable characters that an LLM may have decoded (``columns=a,b``,
``jsonpath=$.a[0]``) and, as ``parse_qsl`` does, ``+`` for a space in params.

Share URLs: ``amfs://<sig>_<name>?share=<exp>.<mac>``, ``mac = HMAC-SHA256(secret, "<sig>|<exp>")`` in
urlsafe base64 without padding, ``exp`` whole epoch seconds (rounded down). Anyone holding one may read the
file until ``exp``; a token that does not verify is ``SessionMismatchError`` (checked first, in constant
time), a genuine but expired one ``FileExpiredError``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import NamedTuple
from urllib.parse import quote, unquote_to_bytes

from flowmas.errors import ConfigurationError, FileExpiredError, InvalidFileURLError, SessionMismatchError
from flowmas.text import shorten

SCHEME = "amfs"
PREFIX = f"{SCHEME}://"
SIGNATURE_LENGTH = 32
MAX_NAME_LENGTH = 1024
SHARE_PARAM = "share"
MIN_SECRET_BYTES = 16

_SIGNATURE = re.compile(r"[0-9a-f]{32}")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_WHITESPACE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_SHARE_TOKEN = re.compile(r"(\d{1,12})\.([A-Za-z0-9_-]{43})")

# In prose: the name is strictly the emitted alphabet; a value may also hold raw characters an LLM writes
# by hand (``$.a[0]``, ``a,b``), the punctuation among them only between other value characters, so
# "head=5, then" stops before the comma.
_C = r"(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})"
_VC = r"(?:[A-Za-z0-9._~+$\[\]@/-]|%[0-9A-Fa-f]{2})"
_VALUE = rf"{_VC}*(?:[,:;!]+{_VC}+)*"
_PARAM = rf"{_C}+={_VALUE}"
_URL_IN_TEXT = re.compile(rf"{SCHEME}://[0-9a-f]{{32}}_{_C}+(?:\?{_PARAM}(?:&{_PARAM})*)?")


class ParsedURL(NamedTuple):
    """An ``amfs://`` URL taken apart: the storage key, the decoded file name and the decoded params."""

    signature: str
    filename: str
    params: dict[str, str]


def new_signature() -> str:
    """A fresh storage key: 32 lowercase hex characters, 128 bits from ``secrets``."""
    return secrets.token_hex(SIGNATURE_LENGTH // 2)


def validate_filename(name: str) -> str:
    """Return ``name`` if it may be a file name here (see the module docstring), else ``InvalidFileURLError``."""
    if not isinstance(name, str):
        raise InvalidFileURLError(f"A file name must be text, not {type(name).__name__}.")
    if not name:
        raise InvalidFileURLError("The file name is empty: give the file a name.")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidFileURLError(
            f"The file name {shorten(name, 40)!r} is {len(name)} characters long; at most {MAX_NAME_LENGTH} "
            "are allowed: shorten it."
        )
    for position, char in enumerate(name):
        category = unicodedata.category(char)
        if category == "Cc" or category == "Cs":
            what = "a lone surrogate" if category == "Cs" else "a control character"
            raise InvalidFileURLError(
                f"The file name {_show(name)} contains {what} ({_codepoint(char)}) at position {position}; "
                "file names may not contain control characters (NUL, newlines, tabs, DEL): rename the file."
            )
    return name


def build_url(signature: str, filename: str, params: Mapping[str, str] | None = None) -> str:
    """``amfs://<signature>_<encoded filename>[?params]``; refuses a bad signature or file name."""
    _check_signature(signature, signature)
    validate_filename(filename)
    url = f"{PREFIX}{signature}_{_encode(filename)}"
    if params:
        url += "?" + _encode_params(params)
    return url


def parse_url(url: str) -> ParsedURL:
    """Take an ``amfs://`` URL apart; anything malformed is ``InvalidFileURLError`` saying what and where.

    A ``<url>…</url>`` wrapper (SAM's LLM blocks) and surrounding whitespace are removed first.
    """
    if not isinstance(url, str):
        raise InvalidFileURLError(f"An amfs:// URL must be text, not {type(url).__name__}.")
    text = url.strip()
    if text.startswith("<url>") and text.endswith("</url>"):
        text = text[5:-6].strip()
    if not text.startswith(PREFIX):
        raise InvalidFileURLError(f"{_show(text)} is not an amfs:// URL: it must start with {PREFIX!r}.")
    body = text[len(PREFIX):]
    match = _WHITESPACE.search(body)
    if match:
        raise InvalidFileURLError(
            f"The amfs:// URL {_show(text)} contains whitespace or a control character "
            f"({_codepoint(match.group())}) at position {len(PREFIX) + match.start()}: percent-encode it (%20 for "
            "a space)."
        )
    if "#" in body:
        raise InvalidFileURLError(
            f"The amfs:// URL {_show(text)} contains a raw '#': amfs:// URLs have no fragment; a '#' in a "
            "file name or param is written %23."
        )
    head, question, query = body.partition("?")
    signature, underscore, encoded_name = head.partition("_")
    if not underscore:
        raise InvalidFileURLError(
            f"The amfs:// URL {_show(text)} has no '_' after its signature: the form is "
            "amfs://<32 hex signature>_<file name>."
        )
    _check_signature(signature, text)
    if not encoded_name:
        raise InvalidFileURLError(f"The amfs:// URL {_show(text)} has no file name after the signature.")
    filename = _decode(encoded_name, "the file name", text, plus_is_space=False)
    try:
        validate_filename(filename)
    except InvalidFileURLError as exc:
        raise InvalidFileURLError(f"In the amfs:// URL {_show(text)}: {exc}") from None
    params = _decode_query(query, text) if question else {}
    return ParsedURL(signature, filename, params)


def with_params(url: str, **params: object) -> str:
    """``url`` with ``params`` set (a value of None removes the key); existing order kept, new keys appended.

    Values are text; ``True``/``False`` become ``true``/``false`` and numbers their decimal form.
    """
    signature, filename, current = parse_url(url)
    merged = dict(current)
    for key, value in params.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _param_text(key, value)
    return build_url(signature, filename, merged)


def add_query_params_to_url(url: str, params: Mapping[str, object]) -> str:
    """SAM's name for ``with_params`` (SAM ``json.dumps``-ed non-text values; here they become text)."""
    return with_params(url, **{str(key): value for key, value in params.items()})


def get_query_params_from_url(url: str) -> dict[str, str]:
    """SAM's helper: the decoded params of ``url``."""
    return parse_url(url).params


def strip_params(url: str) -> str:
    """``url`` without its query."""
    signature, filename, _ = parse_url(url)
    return build_url(signature, filename)


def get_urls_from_text(text: str) -> list[str]:
    """Every ``amfs://`` URL in ``text`` (an LLM's answer), in order, as written.

    A URL ends at the first character outside the grammar, so quotes, ``<url>`` tags, brackets, markdown
    and a sentence's ``.``, ``,`` or ``?`` after it are never part of it; a query followed by more words on
    the same line stops at the space (SAM's regex ran to the end of the line). URLs are matched, not
    validated: resolve them with ``parse_url``.
    """
    urls = []
    for match in _URL_IN_TEXT.finditer(text):
        found = match.group().rstrip(".")  # emitted URLs never end with "." (the module docstring)
        if len(found) > len(PREFIX) + SIGNATURE_LENGTH + 1:  # something is left of the name
            urls.append(found)
    return urls


# --- share URLs -----------------------------------------------------------------------------------------


def sign_share(signature: str, expires_at: float, secret: bytes) -> str:
    """The share token ``<exp>.<mac>`` for the file ``signature``, valid until ``expires_at`` (epoch s)."""
    _check_signature(signature, signature)
    _check_secret(secret)
    if not math.isfinite(expires_at) or expires_at < 0 or expires_at >= 10**12:
        raise ValueError(f"A share's expiry must be epoch seconds, got {expires_at!r}.")
    expires = int(expires_at)
    return f"{expires}.{_mac(secret, signature, expires)}"


def share_url(url: str, expires_at: float, secret: bytes) -> str:
    """``url`` (its name and params kept, any old ``share`` replaced) with a share token until ``expires_at``."""
    signature = parse_url(url).signature
    return with_params(url, **{SHARE_PARAM: sign_share(signature, expires_at, secret)})


def verify_share(url_or_token: str, secret: bytes, now: float, *, signature: str | None = None) -> str:
    """Check a share URL (or a bare ``<exp>.<mac>`` token with ``signature=``); return the file's signature.

    Tampered, forged, malformed or for another file: ``SessionMismatchError``; genuine but past its
    expiry (``now >= exp``): ``FileExpiredError``. The MAC is compared in constant time, before the expiry,
    so an expiry message is only ever given for a token this service made.
    """
    _check_secret(secret)
    if url_or_token.strip().startswith(PREFIX):
        parsed = parse_url(url_or_token)
        if signature is not None and signature != parsed.signature:
            raise SessionMismatchError("This share URL is for another file.")
        signature = parsed.signature
        token = parsed.params.get(SHARE_PARAM)
        if token is None:
            raise SessionMismatchError(
                f"{_show(url_or_token)} is not a share URL (it has no '{SHARE_PARAM}' param): read it with the "
                "session that owns it, or ask that session for a share URL."
            )
    else:
        if signature is None:
            raise TypeError("verify_share needs signature= when given a bare token")
        token = url_or_token
    _check_signature(signature, signature)
    match = _SHARE_TOKEN.fullmatch(token)
    if match is None:
        raise SessionMismatchError(
            "This share URL is not valid: its share token is malformed (it was altered or cut). Ask the file's "
            "owner for a new share URL."
        )
    expires = int(match.group(1))
    if not hmac.compare_digest(match.group(2), _mac(secret, signature, expires)):
        raise SessionMismatchError(
            "This share URL is not valid: its signature does not match (it was altered, made for another "
            "file, or made by another file service). Ask the file's owner for a new share URL."
        )
    if now >= expires:
        when = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        raise FileExpiredError(f"This share URL expired at {when}; ask the file's owner for a new one.")
    return signature


# --- helpers --------------------------------------------------------------------------------------------


def _mac(secret: bytes, signature: str, expires: int) -> str:
    digest = hmac.new(secret, f"{signature}|{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes | bytearray) or len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"The file share secret must be at least {MIN_SECRET_BYTES} bytes (FLOWMAS_FILES_SHARE_SECRET, or the "
            "one the storage keeps)."
        )


def _check_signature(signature: str, url: str) -> None:
    if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
        shown = signature if isinstance(signature, str) else type(signature).__name__
        raise InvalidFileURLError(
            f"The amfs:// URL {_show(url)} has a malformed signature {shorten(str(shown), 40)!r}: it must be "
            f"{SIGNATURE_LENGTH} lowercase hex characters."
        )


def _encode(text: str) -> str:
    encoded = quote(text, safe="")
    return encoded[:-1] + "%2E" if encoded.endswith(".") else encoded


def _encode_params(params: Mapping[str, str]) -> str:
    pieces = []
    for key, value in params.items():
        if not key:
            raise InvalidFileURLError("A URL param needs a name (got an empty one).")
        pieces.append(f"{_encode(key)}={_encode(_param_text(key, value))}")
    return "&".join(pieces)


def _param_text(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise InvalidFileURLError(f"The URL param {key!r} must be text or a number, not {type(value).__name__}.")


def _decode(encoded: str, what: str, url: str, *, plus_is_space: bool) -> str:
    bad = _BAD_ESCAPE.search(encoded)
    if bad:
        raise InvalidFileURLError(
            f"In the amfs:// URL {_show(url)}, {what} has a '%' that does not start a %HH escape "
            f"({shorten(encoded[bad.start():bad.start() + 3], 10)!r}): a literal '%' is written %25."
        )
    if plus_is_space:
        encoded = encoded.replace("+", " ")
    try:
        return unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidFileURLError(
            f"In the amfs:// URL {_show(url)}, {what} is not percent-encoded UTF-8."
        ) from None


def _decode_query(query: str, url: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for piece in query.split("&"):
        if not piece:
            continue  # "a=1&&b=2" and a trailing "?" or "&", as parse_qsl does
        raw_key, _, raw_value = piece.partition("=")
        key = _decode(raw_key, "a param name", url, plus_is_space=True)
        if not key:
            raise InvalidFileURLError(f"The amfs:// URL {_show(url)} has a param without a name ({piece!r}).")
        value = _decode(raw_value, f"the value of param {key!r}", url, plus_is_space=True)
        if key in params:
            raise InvalidFileURLError(
                f"The amfs:// URL {_show(url)} gives the param {key!r} twice: give each param once."
            )
        params[key] = value
    return params


def _codepoint(char: str) -> str:
    return f"U+{ord(char):04X}"


_SHARE_VALUE = re.compile(rf"(?<=[?&]{SHARE_PARAM}=)[^&]*")


def _show(text: str) -> str:
    """``text`` for an error message: one line, at most 100 characters, quoted, a share token redacted.

    A share token is a bearer credential; messages end up in logs.
    """
    text = _SHARE_VALUE.sub("…", text)
    printable = "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in shorten(text, 100))
    return f"'{printable}'"
