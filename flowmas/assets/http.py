"""Fetch a URL into a resumable ``.part`` file, hashing while it streams, trusting nothing the server says.

The server is not trusted, because without a declared checksum nothing else would catch its mistakes:

* A request for the whole file accepts only ``200``: a ``206`` or ``416`` answering it is not the body.
* A resumed request (``Range`` + ``If-Range``) accepts a ``206`` only if its ``Content-Range`` starts where
  the ``.part`` ends, its total is the one recorded, and its validator (strong ETag, else Last-Modified) is
  the one the ``.part`` was started with; a ``416`` only if it says the ``.part`` is already whole. Anything
  else discards the ``.part`` and restarts from zero, once, in the same attempt. A ``200`` is a fresh body.
* ``Content-Encoding`` is decoded (gzip, deflate) or refused naming the encoding; encoded bodies are never
  resumed (ranges count encoded bytes) and never stored encoded.
* Redirects are followed here (at most ``MAX_REDIRECTS``), only to http(s); every configured auth header
  is dropped once the origin changes (httpx would strip only ``Authorization``). A redirect without
  ``Location`` is a permanent error.
* A deadline bounds the download and a speed floor ends a trickle (``deadline.py``); bytes reach the disk
  as they arrive (``HashingWriter.fill_from``).

The sidecar ``<part>.json`` (``PartState``) holds what resuming needs: a hash of the URL (never the URL,
which may carry a signature), validators, the total, and ``complete`` once every byte is in. A complete
``.part`` whose process died before publishing is hashed and published by the next call, with no request.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import logging
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from flowmas.assets.deadline import Deadline, SpeedFloor
from flowmas.assets.manifest import redact_url
from flowmas.assets.progress import Progress
from flowmas.assets.record import Fetched
from flowmas.assets.streaming import HashingWriter, Prefix, ReadInto, hash_prefix, sha256_file
from flowmas.assets.transport import ReadintoStream, ReadintoTransport
from flowmas.errors import (
    AuthenticationError,
    ConfigurationError,
    DownloadError,
    SourceNotFoundError,
    TransientDownloadError,
)

log = logging.getLogger("flowmas.assets")

MAX_REDIRECTS = 10
REDIRECT_STATUS = {301, 302, 303, 307, 308}
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_RAW_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Limits:
    """Timeouts and floors of one source, from ``FlowmasSettings``."""

    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    min_speed: float = 1024.0
    speed_window: float = 60.0


class PartState(BaseModel):
    """The ``.part.json`` sidecar: what proves a ``.part`` can be resumed, or published as it is."""

    model_config = ConfigDict(extra="ignore")

    url_sha256: str
    etag: str | None = None
    last_modified: str | None = None
    total: int | None = None
    ranges: bool = False
    complete: bool = False

    @property
    def validator(self) -> str | None:
        """What ``If-Range`` sends: a strong ETag, else Last-Modified (a weak ETag never validates a range)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    @classmethod
    def load(cls, path: Path) -> PartState | None:
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.model_dump_json())
        tmp.replace(path)


def sidecar_of(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


class HttpSource:
    """Downloads through ``client``; bodies come through ``ReadintoTransport`` unless a proxy is configured.

    Requests are built by the client (timeouts, headers) and handed to the transport directly, because the
    client wraps response streams and would hide ``readinto``.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        timeout = httpx.Timeout(self.limits.read_timeout, connect=self.limits.connect_timeout)
        self.transport = None if urllib.request.getproxies() else ReadintoTransport()
        # Given our transport, the client builds no default one (its import and CA loading cost ~0.2 s).
        self.client = httpx.Client(timeout=timeout, follow_redirects=False, transport=self.transport,
                                   trust_env=self.transport is None)

    def close(self) -> None:
        self.client.close()
        if self.transport is not None:
            self.transport.close()

    def fetch(
        self,
        url: str,
        part: Path,
        *,
        asset: str,
        headers: dict[str, str] | None = None,
        progress: Progress,
        deadline: Deadline,
    ) -> Fetched:
        """Make ``part`` hold every byte of ``url``, resuming a valid ``.part``; returns its digest and size.

        ``headers`` (credentials) are sent to ``url``'s origin only. The sidecar stays until the caller
        publishes the ``.part`` (``discard``-ing or renaming it), so a crash after this returns loses nothing.
        """
        target, auth = with_userinfo_auth(url, headers or {}, asset=asset)
        return _Download(self, target, part, asset=asset, label=redact_url(url), auth=auth, progress=progress,
                         deadline=deadline).run()

    def send(self, request: httpx.Request) -> httpx.Response:
        if self.transport is not None:
            return self.transport.handle_request(request)
        return self.client.send(request, stream=True)


_Verdict = Literal["body", "complete", "restart"]


class _Download:
    """One call of ``HttpSource.fetch``: decide what the ``.part`` is worth, ask, judge the answer, stream."""

    def __init__(self, source: HttpSource, url: str, part: Path, *, asset: str, label: str,
                 auth: dict[str, str], progress: Progress, deadline: Deadline) -> None:
        self.source, self.url, self.part, self.sidecar = source, url, part, sidecar_of(part)
        self.asset, self.label, self.auth = asset, label, auth
        self.progress, self.deadline = progress, deadline
        self.key = url_key(url)

    def run(self) -> Fetched:
        state = PartState.load(self.sidecar)
        if state is None or state.url_sha256 != self.key or not self.part.is_file():
            self.discard()
            state = None
        elif state.complete and state.total == self.part.stat().st_size:
            log.info("%s: the partial download of %s is complete; verifying it", self.asset, self.label)
            self.progress.start(state.total, 0)
            return self.fetched(sha256_file(self.part, self.progress.advance), state.total, state)
        for restart in (False, True):
            resumable = state is not None and state.ranges and state.validator is not None
            prefix = hash_prefix(self.part) if resumable and self.part.stat().st_size else None
            response = self.open(prefix.size if prefix else 0, state.validator if prefix and state else None)
            try:
                verdict, reason = self.judge(response, prefix, state)
                if verdict == "restart":
                    if restart:
                        raise DownloadError(
                            f"Asset {self.asset!r}: {self.label} answers the resumed request inconsistently twice "
                            f"({reason}); nothing was kept. Try again later, or report it to the server's owner.",
                            asset=self.asset)
                    log.warning("%s: %s; discarding the partial file and starting again from zero", self.asset, reason)
                    self.discard()
                    state = None
                    continue
                if verdict == "complete" and prefix is not None and state is not None:
                    state = state.model_copy(update={"complete": True})
                    state.save(self.sidecar)
                    return self.fetched(prefix.digest.hexdigest(), prefix.size, state)
                return self.stream(response, prefix if response.status_code == 206 else None)
            finally:
                response.close()
        raise AssertionError("unreachable")

    # --- asking ---------------------------------------------------------------------------------------

    def open(self, offset: int, validator: str | None) -> httpx.Response:
        url, origin = self.url, _origin(self.url)
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Accept-Encoding": "identity"}
            if _origin(url) == origin:
                headers.update(self.auth)
            if offset:
                headers["Range"] = f"bytes={offset}-"
                if validator:
                    headers["If-Range"] = validator
            response = self._send(url, headers)
            if response.status_code in REDIRECT_STATUS:
                response.close()
                url = self._follow(url, response)
                continue
            if response.status_code in (200, 206, 416):
                return response
            response.close()
            raise _status_error(self.asset, url, response)
        raise DownloadError(
            f"Asset {self.asset!r}: {self.label} redirected more than {MAX_REDIRECTS} times; check the 'url'.",
            asset=self.asset)

    def _send(self, url: str, headers: dict[str, str]) -> httpx.Response:
        limits = self.source.limits
        if self.deadline.expired:
            raise self.deadline.error(self.asset, self.label)
        timeout = httpx.Timeout(self.deadline.bound(limits.read_timeout),
                                connect=self.deadline.bound(limits.connect_timeout))
        try:
            request = self.source.client.build_request("GET", url, headers=headers, timeout=timeout)
        except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeError, ValueError) as exc:
            # Never echo the exception: it may quote a header value, i.e. a token.
            raise ConfigurationError(
                f"Asset {self.asset!r}: cannot build a request for {redact_url(url)} ({type(exc).__name__}); "
                "check the 'url' and the token's characters.") from None
        try:
            return self.source.send(request)
        except httpx.TransportError as exc:
            if self.deadline.expired:
                raise self.deadline.error(self.asset, self.label) from None
            raise TransientDownloadError(
                f"Asset {self.asset!r}: could not reach {redact_url(url)}: {type(exc).__name__}: {exc}",
                asset=self.asset) from None

    def _follow(self, url: str, response: httpx.Response) -> str:
        code = response.status_code
        location = response.headers.get("location", "").strip()
        if not location:
            raise DownloadError(
                f"Asset {self.asset!r}: {redact_url(url)} answered {code} {response.reason_phrase} without a "
                "Location header, so there is nowhere to go; check the 'url' or the server.", asset=self.asset,
                status_code=code)
        target: str = urljoin(url, location)
        scheme = urlsplit(target).scheme.lower()
        if scheme not in ("http", "https"):
            raise DownloadError(
                f"Asset {self.asset!r}: {redact_url(url)} redirected to a {scheme or 'relative'}: URL, which flowmas "
                "never follows (only http and https); check the 'url' or the server.", asset=self.asset,
                status_code=code)
        return target

    # --- judging --------------------------------------------------------------------------------------

    def judge(self, response: httpx.Response, prefix: Prefix | None,
              state: PartState | None) -> tuple[_Verdict, str]:
        code = response.status_code
        if prefix is None:  # asked for the whole file: only a 200 is the body
            if code != 200:
                raise DownloadError(
                    f"Asset {self.asset!r}: {self.label} answered {code} {response.reason_phrase} to a request for "
                    "the whole file (no Range was sent), so what it sent is not the file; nothing was kept. The "
                    "server or a proxy in front of it is misbehaving.", asset=self.asset, status_code=code)
            return "body", ""
        assert state is not None
        if code == 200:
            return "restart", "the server sent the whole file instead of the rest"
        start, end, total = _content_range(response.headers.get("content-range"))
        theirs = _validator_like(state, response)
        if code == 416:  # a 416 need not carry validators; one that does must agree
            if theirs is not None and theirs != state.validator:
                return "restart", "the file on the server changed since the partial download began"
            if total == prefix.size:
                return "complete", ""
            return "restart", f"the server cannot resume at byte {prefix.size} (it has {total} bytes)"
        if theirs != state.validator:
            return "restart", "the file on the server changed since the partial download began"
        if start is None or total is None:
            return "restart", "the server answered 206 without a usable Content-Range"
        if start != prefix.size:
            return "restart", f"the server resumed at byte {start} instead of {prefix.size}"
        if state.total is not None and total != state.total:
            return "restart", f"the file's size changed from {state.total} to {total} bytes"
        if _encoding(response) != "identity":
            return "restart", "the server encoded the remaining bytes"
        if end is not None and end + 1 != total:
            return "restart", f"the server sent bytes {start}-{end} of {total} instead of the rest"
        return "body", ""

    # --- streaming ------------------------------------------------------------------------------------

    def stream(self, response: httpx.Response, prefix: Prefix | None) -> Fetched:
        encoding = _encoding(response)
        if encoding != "identity" and encoding not in _DECODERS:
            raise DownloadError(
                f"Asset {self.asset!r}: {self.label} sent the file with Content-Encoding: {encoding}, which flowmas "
                f"cannot decode (it decodes {', '.join(sorted(_DECODERS))}); nothing was kept. Configure the server "
                "to send the file as it is.", asset=self.asset)
        length = _int_header(response.headers.get("content-length"))
        if response.status_code == 206:
            total = _content_range(response.headers.get("content-range"))[2]
        else:
            total = length if encoding == "identity" else None
        state = PartState(
            url_sha256=self.key,
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
            total=total,
            ranges=encoding == "identity" and (
                response.headers.get("accept-ranges", "").lower() == "bytes" or response.status_code == 206),
        )
        state.save(self.sidecar)
        self.progress.start(total, prefix.size if prefix else 0)
        raw = _SocketBody(response, self) if isinstance(response.stream, ReadintoStream) else _IterBody(response, self)
        body: ReadInto = raw if encoding == "identity" else _DecodedBody(raw, encoding, self)
        with HashingWriter(self.part, resume=prefix) as writer:
            try:
                writer.fill_from(body, self.progress.advance)
            except httpx.TransportError as exc:
                if self.deadline.expired:
                    raise self.deadline.error(self.asset, self.label, writer.size) from None
                raise TransientDownloadError(
                    f"Asset {self.asset!r}: the connection to {self.label} broke after {writer.size} bytes "
                    f"({type(exc).__name__}: {exc}); {self._next_time(state)}", asset=self.asset) from None
            digest = writer.close()
            size = writer.size
        if length is not None and raw.received != length:
            raise TransientDownloadError(
                f"Asset {self.asset!r}: {self.label} ended the body after {raw.received} of {length} bytes; "
                f"{self._next_time(state)}", asset=self.asset)
        if total is not None and size != total:
            raise TransientDownloadError(
                f"Asset {self.asset!r}: the download from {self.label} ended at {size} of {total} bytes; "
                f"{self._next_time(state)}", asset=self.asset)
        state = state.model_copy(update={"complete": True, "total": size})
        state.save(self.sidecar)
        return self.fetched(digest, size, state)

    @staticmethod
    def _next_time(state: PartState) -> str:
        if state.ranges and state.validator:
            return "the partial file is kept and the next attempt resumes it."
        return "the next attempt starts again from zero (the server offers no way to resume)."

    def fetched(self, digest: str, size: int, state: PartState) -> Fetched:
        return Fetched(sha256=digest, size=size,
                       details={"etag": state.etag, "last_modified": state.last_modified})

    def discard(self) -> None:
        for path in (self.part, self.sidecar):
            path.unlink(missing_ok=True)


# --- bodies: what HashingWriter.fill_from reads ------------------------------------------------------


class _SocketBody:
    """The transport's stream, read one ``recv`` at a time under the deadline and the speed floor."""

    def __init__(self, response: httpx.Response, download: _Download) -> None:
        assert isinstance(response.stream, ReadintoStream)
        self.stream: ReadintoStream = response.stream
        self.download = download
        self.floor = SpeedFloor(download.source.limits.min_speed, download.source.limits.speed_window)
        self.received = 0
        self._timeout: float | None = None

    def readinto(self, buffer: memoryview) -> int:
        download = self.download
        if download.deadline.expired:
            raise download.deadline.error(download.asset, download.label, self.received)
        timeout = download.deadline.bound(download.source.limits.read_timeout)
        if self._timeout is None or timeout < self._timeout - 0.5:  # settimeout costs syscalls: only when it shrinks
            self.stream.set_timeout(timeout)
            self._timeout = timeout
        n = self.stream.readinto(buffer)
        self.received += n
        self.floor.observe(n, download.asset, download.label)
        return n

    def ready(self, timeout: float) -> bool:
        return self.stream.ready(timeout)


class _IterBody:
    """httpx's own stream (behind a proxy): chunks as they come, under the same deadline and floor."""

    def __init__(self, response: httpx.Response, download: _Download) -> None:
        self.chunks = response.iter_raw()
        self.download = download
        self.floor = SpeedFloor(download.source.limits.min_speed, download.source.limits.speed_window)
        self.pending = memoryview(b"")
        self.received = 0

    def readinto(self, buffer: memoryview) -> int:
        download = self.download
        if not self.pending:
            if download.deadline.expired:
                raise download.deadline.error(download.asset, download.label, self.received)
            chunk = next(self.chunks, b"")
            self.received += len(chunk)
            self.floor.observe(len(chunk), download.asset, download.label)
            self.pending = memoryview(chunk)
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def ready(self, timeout: float) -> bool:
        return bool(self.pending)


class _DecodedBody:
    """A gzip/deflate body decoded as it streams, in bounded memory (output is capped per read)."""

    def __init__(self, raw: _SocketBody | _IterBody, encoding: str, download: _Download) -> None:
        self.raw = raw
        self.encoding = encoding
        self.download = download
        self.decoder = zlib.decompressobj(_DECODERS[encoding])
        self.scratch = bytearray(_RAW_CHUNK)
        self.tail = b""  # compressed input not yet consumed (the output cap was reached)

    def readinto(self, buffer: memoryview) -> int:
        while True:
            if self.tail:
                data = self._decode(self.tail, len(buffer))
            else:
                if self.decoder.eof:
                    return 0
                n = self.raw.readinto(memoryview(self.scratch))
                if not n:
                    if not self.decoder.eof:
                        raise TransientDownloadError(
                            f"Asset {self.download.asset!r}: the {self.encoding} body from {self.download.label} "
                            "ended before its end marker; the next attempt starts again.", asset=self.download.asset)
                    return 0
                data = self._decode(bytes(self.scratch[:n]), len(buffer))
            if data:
                buffer[: len(data)] = data
                return len(data)

    def _decode(self, compressed: bytes, limit: int) -> bytes:
        try:
            data = self.decoder.decompress(compressed, limit)
        except zlib.error as exc:
            raise DownloadError(
                f"Asset {self.download.asset!r}: {self.download.label} sent a body that is not valid {self.encoding} "
                f"although its Content-Encoding says so ({exc}); nothing was kept.", asset=self.download.asset,
            ) from None
        self.tail = self.decoder.unconsumed_tail
        return data

    def ready(self, timeout: float) -> bool:
        return bool(self.tail) or self.raw.ready(timeout)

    @property
    def received(self) -> int:
        return self.raw.received


# --- helpers ------------------------------------------------------------------------------------------


def with_userinfo_auth(url: str, headers: dict[str, str], *, asset: str) -> tuple[str, dict[str, str]]:
    """``https://user:pass@host/…`` becomes Basic auth (unless a token is configured) and leaves the URL."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, headers
    netloc = parts.netloc.rsplit("@", 1)[-1]
    stripped = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    if any(name.lower() == "authorization" for name in headers):
        return stripped, headers
    credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in credentials):
        raise ConfigurationError(
            f"Asset {asset!r}: the user name or password in the URL of {redact_url(url)} holds a control character; "
            "percent-encode it or use 'authentication' instead.")
    encoded = base64.b64encode(credentials.encode()).decode()
    return stripped, {**headers, "Authorization": f"Basic {encoded}"}


def _status_error(asset: str, url: str, response: httpx.Response) -> DownloadError:
    code = response.status_code
    where = f"{redact_url(url)} answered {code} {response.reason_phrase}"
    if code in (401, 403):
        return AuthenticationError(
            f"Asset {asset!r}: {where}; check the token configured under 'authentication' "
            "(not retried: the same credentials would be refused again).",
            asset=asset,
            status_code=code,
        )
    if code in (404, 410):
        return SourceNotFoundError(f"Asset {asset!r}: {where}; check the 'url' in flowmas.yaml.", asset=asset,
                                   status_code=code)
    if code in TRANSIENT_STATUS or code >= 500:
        return TransientDownloadError(
            f"Asset {asset!r}: {where}.",
            asset=asset,
            status_code=code,
            retry_after=_retry_after(response.headers.get("retry-after")),
        )
    return DownloadError(f"Asset {asset!r}: {where}.", asset=asset, status_code=code)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port out of range: httpx refuses the URL with a clear error later
        port = -1
    return parts.scheme, f"{parts.hostname}:{port}"


def _encoding(response: httpx.Response) -> str:
    value = response.headers.get("content-encoding", "").strip().lower()
    return value or "identity"


def _validator_like(state: PartState, response: httpx.Response) -> str | None:
    """The response's validator of the same kind as the one ``state`` resumes with."""
    name = "etag" if state.validator is not None and state.validator == state.etag else "last-modified"
    value: str | None = response.headers.get(name)
    return value


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes 10-99/100`` -> (10, 99, 100); ``bytes */100`` -> (None, None, 100); junk -> Nones."""
    if not value:
        return None, None, None
    unit, _, rest = value.strip().partition(" ")
    span, _, total_text = rest.partition("/")
    total = _int_header(total_text)
    if unit.lower() != "bytes":
        return None, None, None
    first, _, last = span.partition("-")
    start, end = _int_header(first), _int_header(last)
    if start is None or end is None or end < start:
        return None, None, total
    return start, end, total


def _int_header(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() and len(value) < 20 else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - time.time())
