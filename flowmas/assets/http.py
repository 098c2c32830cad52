"""Fetch an asset over HTTP(S) into a resumable ``.part`` file, hashing while it streams.

A ``.part`` keeps a sidecar (``.part.json``: URL, ETag/Last-Modified, total size) so that the next attempt,
in this process or another one, asks only for the missing bytes with ``Range`` + ``If-Range``; a server
that ignores the range or whose file changed answers 200 and the download restarts from zero.

Redirects are followed here, not by httpx, because httpx strips only ``Authorization`` on a cross-origin
redirect: every configured auth header is dropped once the origin changes.
"""

from __future__ import annotations

import email.utils
import json
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from flowmas.assets.manifest import AssetConfig, HttpSourceConfig, redact_url
from flowmas.assets.progress import Progress
from flowmas.assets.record import Fetched
from flowmas.assets.streaming import HashingWriter, Prefix, hash_prefix
from flowmas.assets.transport import ReadintoStream, ReadintoTransport
from flowmas.errors import (
    AuthenticationError,
    DownloadError,
    SourceNotFoundError,
    TransientDownloadError,
)

MAX_REDIRECTS = 10
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class HttpSource:
    """Downloads through ``client``; bodies come through ``ReadintoTransport`` unless a proxy is configured.

    Requests are built by the client (timeouts, headers) and handed to the transport directly, because the
    client wraps response streams and would hide ``readinto``.
    """

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self.transport = None if urllib.request.getproxies() else ReadintoTransport()
        # Given our transport, the client builds no default one (its import and CA loading cost ~0.2 s).
        self.client = httpx.Client(timeout=timeout, follow_redirects=False, transport=self.transport,
                                   trust_env=self.transport is None)

    def close(self) -> None:
        self.client.close()
        if self.transport is not None:
            self.transport.close()

    def _send(self, request: httpx.Request) -> httpx.Response:
        if self.transport is not None:
            return self.transport.handle_request(request)
        return self.client.send(request, stream=True)

    def fetch(self, asset: AssetConfig, part: Path, headers: dict[str, str], progress: Progress) -> Fetched:
        source = asset.source
        assert isinstance(source, HttpSourceConfig)
        sidecar = part.with_name(part.name + ".json")
        offset, validator = _resume_point(part, sidecar, source.url)
        prefix = hash_prefix(part) if offset else None
        if prefix is not None:
            offset = prefix.size
        response = self._open(asset, source.url, headers, offset, validator)
        try:
            if response.status_code == 416 and offset:
                total = _content_range_total(response.headers.get("content-range"))
                if total == offset:  # the .part is already complete
                    response.close()
                    return self._finish(part, sidecar, offset, resume=prefix, progress=progress, stream=None)
                part.unlink(missing_ok=True)
                raise TransientDownloadError(
                    f"Server refused to resume {redact_url(source.url)} at byte {offset}; restarting.",
                    asset=asset.name,
                    status_code=416,
                )
            resume = response.status_code == 206
            if resume and _content_range_start(response.headers.get("content-range")) != offset:
                resume = False
            if not resume:
                offset = 0
            total = _expected_total(response, offset)
            _write_sidecar(sidecar, source.url, response, total)
            progress.start(total, offset)
            return self._finish(part, sidecar, total, resume=prefix if resume else None, progress=progress,
                                stream=response)
        finally:
            response.close()

    def _finish(
        self,
        part: Path,
        sidecar: Path,
        total: int | None,
        *,
        resume: Prefix | None,
        progress: Progress,
        stream: httpx.Response | None,
    ) -> Fetched:
        with HashingWriter(part, resume=resume) as writer:
            if stream is not None:
                try:
                    body = stream.stream
                    if isinstance(body, ReadintoStream):
                        writer.fill_from(body, progress.advance)
                    else:
                        for chunk in stream.iter_raw():
                            writer.write(chunk)
                            progress.advance(len(chunk))
                except httpx.TransportError as exc:
                    raise TransientDownloadError(
                        f"Connection lost after {writer.size} bytes ({exc}); the partial file is kept and the "
                        "next attempt resumes from it."
                    ) from None
            digest = writer.close()
            size = writer.size
        if total is not None and size != total:
            raise TransientDownloadError(
                f"Download ended at {size} of {total} bytes; the next attempt resumes from the partial file."
            )
        details = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        sidecar.unlink(missing_ok=True)
        return Fetched(sha256=digest, size=size, details={"etag": details.get("etag"),
                                                         "last_modified": details.get("last_modified")})

    def _open(
        self, asset: AssetConfig, url: str, auth: dict[str, str], offset: int, validator: str | None
    ) -> httpx.Response:
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Accept-Encoding": "identity"}
            if _origin(url) == origin:
                headers.update(auth)
            if offset and validator:
                headers["Range"] = f"bytes={offset}-"
                headers["If-Range"] = validator
            try:
                response = self._send(self.client.build_request("GET", url, headers=headers))
            except httpx.TransportError as exc:
                raise TransientDownloadError(
                    f"Could not reach {redact_url(url)}: {type(exc).__name__}: {exc}", asset=asset.name
                ) from None
            if response.is_redirect and "location" in response.headers:
                response.close()
                url = str(response.url.join(response.headers["location"]))
                continue
            if response.status_code in (200, 206, 416):
                return response
            response.close()
            raise _status_error(asset, url, response)
        raise DownloadError(f"More than {MAX_REDIRECTS} redirects for {redact_url(url)}.", asset=asset.name)


def _status_error(asset: AssetConfig, url: str, response: httpx.Response) -> DownloadError:
    code = response.status_code
    where = f"{redact_url(url)} answered {code} {response.reason_phrase}"
    if code in (401, 403):
        return AuthenticationError(
            f"Asset {asset.name!r}: {where}; check the token configured under 'authentication' "
            "(not retried: the same credentials would be refused again).",
            asset=asset.name,
            status_code=code,
        )
    if code in (404, 410):
        return SourceNotFoundError(
            f"Asset {asset.name!r}: {where}; check the 'url' in flowmas.yaml.", asset=asset.name, status_code=code
        )
    if code in TRANSIENT_STATUS or code >= 500:
        return TransientDownloadError(
            f"Asset {asset.name!r}: {where}; will retry.",
            asset=asset.name,
            status_code=code,
            retry_after=_retry_after(response.headers.get("retry-after")),
        )
    return DownloadError(f"Asset {asset.name!r}: {where}.", asset=asset.name, status_code=code)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, f"{parts.hostname}:{port}"


def _resume_point(part: Path, sidecar: Path, url: str) -> tuple[int, str | None]:
    """How many bytes of ``part`` can be kept, and the validator that proves they are still current."""
    try:
        meta = json.loads(sidecar.read_text())
        size = part.stat().st_size
    except (OSError, ValueError):
        return 0, None
    validator = meta.get("etag") if not str(meta.get("etag", "")).startswith("W/") else None
    validator = validator or meta.get("last_modified")
    if meta.get("url") != url or not validator or not meta.get("accept_ranges"):
        return 0, None
    return size, validator


def _write_sidecar(sidecar: Path, url: str, response: httpx.Response, total: int | None) -> None:
    meta = {
        "url": url,
        "etag": response.headers.get("etag"),
        "last_modified": response.headers.get("last-modified"),
        "accept_ranges": response.headers.get("accept-ranges", "").lower() == "bytes"
        or response.status_code == 206,
        "total": total,
    }
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(meta))
    tmp.replace(sidecar)


def _expected_total(response: httpx.Response, offset: int) -> int | None:
    if response.status_code == 206:
        return _content_range_total(response.headers.get("content-range"))
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


def _content_range_start(value: str | None) -> int | None:
    try:
        return int(value.split()[1].split("-")[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return None


def _content_range_total(value: str | None) -> int | None:
    try:
        total = value.rsplit("/", 1)[1]  # type: ignore[union-attr]
        return int(total) if total != "*" else None
    except (AttributeError, IndexError, ValueError):
        return None


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
