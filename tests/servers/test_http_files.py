"""Behaviour tests of the test file server: downloader tests are only as trustworthy as this fixture."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import http_files
from tests.servers.http_files import FileServer, drop_after, ok, redirect, slow, status

DATA = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable
ETAG = f'"{hashlib.sha1(DATA).hexdigest()}"'
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        srv.add("/blob", DATA, last_modified=LAST_MODIFIED)
        yield srv


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def test_full_get(server: FileServer, client: httpx.Client) -> None:
    r = client.get(server.url_for("/blob?sig=abc"))
    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["content-length"] == str(len(DATA))
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == ETAG
    assert r.headers["last-modified"] == LAST_MODIFIED
    (rec,) = server.requests_for("/blob")
    assert (rec.method, rec.status, rec.range, rec.query) == ("GET", 200, None, "sig=abc")
    assert rec.headers["host"] == server.url.removeprefix("http://")
    assert server.bytes_sent("/blob") == len(DATA)


def test_keep_alive_reuses_connection(server: FileServer, client: httpx.Client) -> None:
    first = client.get(server.url_for("/blob"))
    second = client.get(server.url_for("/blob"))
    assert first.extensions["network_stream"] is second.extensions["network_stream"]


def test_head_sends_headers_only(server: FileServer, client: httpx.Client) -> None:
    r = client.head(server.url_for("/blob"), headers={"Range": "bytes=0-9"})
    assert r.status_code == 200  # Range is ignored on HEAD
    assert r.content == b""
    assert r.headers["content-length"] == str(len(DATA))
    assert r.headers["etag"] == ETAG
    assert r.headers["last-modified"] == LAST_MODIFIED
    assert len(server.requests_for("/blob", "HEAD")) == 1
    assert server.requests_for("/blob") == []
    assert server.bytes_sent("/blob") == 0


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=1000-", 1000, 1023),
        ("bytes=-24", 1000, 1023),  # suffix
        ("bytes=1020-5000", 1020, 1023),  # end clamped
    ],
)
def test_range_returns_206(
    server: FileServer, client: httpx.Client, header: str, first: int, last: int
) -> None:
    r = client.get(server.url_for("/blob"), headers={"Range": header})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.headers["etag"] == ETAG
    assert r.content == DATA[first : last + 1]
    assert server.requests_for("/blob")[0].range == header
    assert server.bytes_sent("/blob") == last - first + 1


@pytest.mark.parametrize(
    ("if_range", "expected"),
    [
        (ETAG, 206),
        ('"stale"', 200),
        (f"W/{ETAG}", 200),  # weak validators never match If-Range
        (LAST_MODIFIED, 206),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 200),
    ],
)
def test_if_range(server: FileServer, client: httpx.Client, if_range: str, expected: int) -> None:
    r = client.get(server.url_for("/blob"), headers={"Range": "bytes=100-", "If-Range": if_range})
    assert r.status_code == expected
    assert r.content == (DATA[100:] if expected == 206 else DATA)


@pytest.mark.parametrize("header", ["bytes=1024-", "bytes=5000-6000"])
def test_unsatisfiable_range_is_416(server: FileServer, client: httpx.Client, header: str) -> None:
    r = client.get(server.url_for("/blob"), headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(DATA)}"
    assert r.headers["content-length"] == "0"
    # The connection stays usable after the error.
    assert client.get(server.url_for("/blob")).content == DATA


@pytest.mark.parametrize("header", ["bytes=20-10", "bytes=0-1,5-6", "items=0-1", "bytes=-"])
def test_malformed_or_multi_range_is_ignored(server: FileServer, client: httpx.Client, header: str) -> None:
    r = client.get(server.url_for("/blob"), headers={"Range": header})
    assert r.status_code == 200
    assert r.content == DATA


def test_ranges_disabled_ignores_range(server: FileServer, client: httpx.Client) -> None:
    server.add("/plain", DATA, ranges=False)
    r = client.get(server.url_for("/plain"), headers={"Range": "bytes=10-19"})
    assert r.status_code == 200
    assert r.content == DATA
    assert "accept-ranges" not in r.headers
    assert "content-range" not in r.headers


def test_etag_none_and_unknown_path(server: FileServer, client: httpx.Client) -> None:
    server.add("/bare", b"x", etag=None)
    assert "etag" not in client.get(server.url_for("/bare")).headers
    r = client.get(server.url_for("/missing"))
    assert r.status_code == 404
    assert server.requests_for("/missing")[0].status == 404


def test_require_headers(server: FileServer, client: httpx.Client) -> None:
    server.add("/private", DATA, require_headers={"Authorization": "Bearer s3cret", "X-API-Key": "k"})
    url = server.url_for("/private")
    denied = client.get(url)
    assert denied.status_code == 401
    assert denied.content
    assert client.get(url, headers={"Authorization": "Bearer wrong", "X-API-Key": "k"}).status_code == 401
    allowed = client.get(url, headers={"authorization": "Bearer s3cret", "x-api-key": "k"})
    assert allowed.status_code == 200
    assert allowed.content == DATA
    assert [r.status for r in server.requests_for("/private")] == [401, 401, 200]


def test_script_status_then_ok(server: FileServer, client: httpx.Client) -> None:
    server.script("/blob", status(503), ok())
    codes = [client.get(server.url_for("/blob")).status_code for _ in range(3)]
    assert codes == [503, 200, 200]
    assert [r.status for r in server.requests_for("/blob")] == codes
    assert server.bytes_sent("/blob") == 2 * len(DATA)


def test_script_applies_to_head_and_is_replaced(server: FileServer, client: httpx.Client) -> None:
    server.script("/blob", status(500), status(500))
    server.script("/blob", status(404))
    assert client.head(server.url_for("/blob")).status_code == 404
    assert client.get(server.url_for("/blob")).status_code == 200


def test_status_429_with_retry_after(server: FileServer, client: httpx.Client) -> None:
    server.script("/blob", status(429, headers={"Retry-After": "1"}, body=b"slow down"))
    r = client.get(server.url_for("/blob"))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.content == b"slow down"


def _read_until_error(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> bytes:
    got = bytearray()
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)), client.stream("GET", url, headers=headers) as r:
        for chunk in r.iter_raw():
            got += chunk
    return bytes(got)


def test_drop_after_truncates(server: FileServer, client: httpx.Client) -> None:
    server.script("/blob", drop_after(300))
    assert _read_until_error(client, server.url_for("/blob")) == DATA[:300]
    assert server.bytes_sent("/blob") == 300
    assert server.requests_for("/blob")[0].status == 200
    # The next request is served normally on a fresh connection.
    assert client.get(server.url_for("/blob")).content == DATA


def test_drop_after_within_range(server: FileServer, client: httpx.Client) -> None:
    server.script("/blob", drop_after(50))
    got = _read_until_error(client, server.url_for("/blob"), {"Range": "bytes=500-"})
    assert got == DATA[500:550]
    assert server.requests_for("/blob")[0].status == 206
    assert server.bytes_sent("/blob") == 50


def test_slow_respects_rate(server: FileServer, client: httpx.Client) -> None:
    payload = os.urandom(20_000)
    server.add("/slow", payload)
    server.script("/slow", slow(100_000, chunk=2_000))
    began = time.monotonic()
    r = client.get(server.url_for("/slow"))
    elapsed = time.monotonic() - began
    assert r.content == payload
    assert 0.15 <= elapsed < 2


def test_redirect_to_second_server(server: FileServer) -> None:
    with FileServer() as other, httpx.Client(timeout=5, follow_redirects=True) as client:
        other.add("/target", DATA)
        server.script("/moved", redirect(other.url_for("/target"), code=307))
        r = client.get(server.url_for("/moved"))
        assert r.status_code == 200
        assert r.content == DATA
        assert [h.status_code for h in r.history] == [307]
        assert r.history[0].headers["location"] == other.url_for("/target")
        assert server.requests_for("/moved")[0].status == 307
        assert len(other.requests_for("/target")) == 1


def test_file_backed_body_uses_sendfile(
    server: FileServer, client: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 64 * 1024 * 1024
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(size))
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    calls: list[int] = []

    def spy(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(count)
        return real_sendfile(out_fd, in_fd, offset, count)

    real_sendfile = os.sendfile
    monkeypatch.setattr(http_files.os, "sendfile", spy)
    server.add("/big", path)

    digest = hashlib.sha256()
    with client.stream("GET", server.url_for("/big")) as r:
        assert r.status_code == 200
        assert r.headers["content-length"] == str(size)
        st = path.stat()
        assert r.headers["etag"] == f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        for chunk in r.iter_raw(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == expected
    assert calls
    assert server.bytes_sent("/big") == size

    tail = client.get(server.url_for("/big"), headers={"Range": f"bytes={size - 10}-"})
    assert tail.status_code == 206
    assert tail.content == path.read_bytes()[-10:]


def test_stop_during_slow_transfer_is_prompt(server: FileServer, client: httpx.Client) -> None:
    server.add("/slow", os.urandom(1_000_000))
    server.script("/slow", slow(10_000, chunk=1_000))
    url = server.url
    fails = pytest.raises((httpx.RemoteProtocolError, httpx.ReadError))
    with fails, client.stream("GET", server.url_for("/slow")) as r:
        chunks = r.iter_raw()
        next(chunks)
        began = time.monotonic()
        server.stop()
        assert time.monotonic() - began < 1
        for _ in chunks:
            pass
    assert server.bytes_sent("/slow", settle=0) < 1_000_000
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/slow", timeout=2)


def test_reset_forgets_everything(server: FileServer, client: httpx.Client) -> None:
    server.script("/blob", status(500))
    client.get(server.url_for("/blob"))
    server.reset()
    assert server.requests == []
    assert server.bytes_sent("/blob") == 0
    assert client.get(server.url_for("/blob")).status_code == 404
