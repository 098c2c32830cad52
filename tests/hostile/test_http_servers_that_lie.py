"""Servers that lie, and links that crawl: no declared checksum, so the downloader alone must catch them.

Every test asserts the error (type and the words a user needs) and the state afterwards: nothing wrong is
ever published, and what is kept (a ``.part``) is exactly what the next call can use.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import pytest

from flowmas.assets.http import PartState, sidecar_of
from flowmas.errors import DownloadError, DownloadTimeoutError, TransientDownloadError
from tests.servers.http_files import drop_after, redirect, slow, status

V1 = os.urandom(2 * 2**20 + 17)
V2 = os.urandom(len(V1))
REPO = Path(__file__).resolve().parents[2]


def asset(url: str, **extra: object) -> dict:
    """No checksum on purpose: nothing but the downloader stands between a lying server and the cache."""
    return {"name": "model", "source": {"type": "http", "url": url}, "retry_delay_seconds": 0,
            "progress_report": False, **extra}


def published(manager) -> bool:
    return manager.cache.entry_dir(manager.asset("model")).exists()


def part_of(manager) -> Path:
    return manager.cache.part_path(manager.asset("model"))


def interrupted(http_server, manager, data: bytes, at: int) -> Path:
    """A first call cut at byte ``at``: leaves a resumable .part of ``data[:at]``."""
    http_server.add("/m.bin", data)
    http_server.script("/m.bin", drop_after(at))
    with pytest.raises(TransientDownloadError):
        manager.download("model")
    part = part_of(manager)
    assert part.read_bytes() == data[:at]
    return part


# --- answers to a request for the whole file --------------------------------------------------------


@pytest.mark.parametrize("answer", [
    status(206, headers={"Content-Range": f"bytes 1000-{len(V1) - 1}/{len(V1)}"}, body=V1[1000:]),
    status(206, body=V1[1000:]),
    status(416, headers={"Content-Range": f"bytes */{len(V1)}"}, body=b"<html>416 Range Not Satisfiable</html>"),
])
def test_a_206_or_416_to_a_request_without_range_is_not_the_body(http_server, make_manager, answer):
    http_server.add("/m.bin", V1)
    http_server.script("/m.bin", answer)
    manager = make_manager([asset(http_server.url_for("/m.bin"), retries=3)])

    with pytest.raises(DownloadError) as info:
        manager.download("model")

    assert f"answered {answer.code}" in str(info.value) and "no Range was sent" in str(info.value)
    assert not isinstance(info.value, TransientDownloadError)  # the same server would lie again
    assert len(http_server.requests_for("/m.bin")) == 1
    assert not published(manager) and not part_of(manager).exists()
    assert manager.download("model").path.read_bytes() == V1  # an honest answer later is taken


# --- answers to a resumed request -------------------------------------------------------------------


def test_a_server_ignoring_if_range_never_splices_two_versions(http_server, make_manager, caplog):
    manager = make_manager([asset(http_server.url_for("/m.bin"))])
    interrupted(http_server, manager, V1, len(V1) // 2)
    http_server.add("/m.bin", V2, if_range=False)  # new version, new ETag; answers the stale If-Range anyway
    caplog.set_level(logging.WARNING, logger="flowmas")

    path = manager.download("model").path

    assert path.read_bytes() == V2
    resumed, fresh = http_server.requests_for("/m.bin")[-2:]
    assert resumed.status == 206 and resumed.range == f"bytes={len(V1) // 2}-"  # refused: its ETag is new
    assert fresh.status == 200 and fresh.range is None
    assert "changed since the partial download began" in caplog.text


@pytest.mark.parametrize("lie, reason", [
    ({}, "without a usable Content-Range"),
    ({"Content-Range": "bytes 0-99/{n}"}, "resumed at byte 0 instead of"),
    ({"Content-Range": "bytes {half}-{last}/{bigger}"}, "size changed"),
    ({"Content-Range": "bytes {half}-{last}/{n}", "Content-Encoding": "gzip"}, "encoded the remaining bytes"),
])
def test_a_206_that_does_not_continue_the_part_restarts_from_zero(http_server, make_manager, caplog, lie, reason):
    half, n = len(V1) // 2, len(V1)
    manager = make_manager([asset(http_server.url_for("/m.bin"))])
    interrupted(http_server, manager, V1, half)
    etag = http_server.requests_for("/m.bin")[0]  # the server's ETag for V1 is what the .part recorded
    state = PartState.load(sidecar_of(part_of(manager)))
    assert state is not None and etag.status == 200
    headers = {k: v.format(half=half, last=n - 1, n=n, bigger=n + 1) for k, v in lie.items()}
    headers["ETag"] = state.etag or ""
    http_server.script("/m.bin", status(206, headers=headers, body=V1[half:]))
    caplog.set_level(logging.WARNING, logger="flowmas")

    path = manager.download("model").path

    assert path.read_bytes() == V1
    assert [r.status for r in http_server.requests_for("/m.bin")][-2:] == [206, 200]
    assert reason in caplog.text


def test_a_416_for_a_part_that_is_not_whole_restarts(http_server, make_manager):
    manager = make_manager([asset(http_server.url_for("/m.bin"))])
    interrupted(http_server, manager, V1, 1000)
    http_server.script("/m.bin", status(416, headers={"Content-Range": "bytes */500"}))

    assert manager.download("model").path.read_bytes() == V1
    assert [r.status for r in http_server.requests_for("/m.bin")][-2:] == [416, 200]


def test_a_server_that_keeps_answering_resumes_inconsistently_gives_up_clearly(http_server, make_manager):
    manager = make_manager([asset(http_server.url_for("/m.bin"))])
    interrupted(http_server, manager, V1, 1000)
    http_server.script("/m.bin", status(206, body=V1[1000:]), status(206, body=V1))

    with pytest.raises(DownloadError, match="206 Partial Content"):
        manager.download("model")
    assert not published(manager)


# --- content coding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding, encode", [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),
])
def test_an_encoded_body_is_decoded_never_stored_encoded(http_server, make_manager, encoding, encode):
    data = b"weights " * 300_000  # compresses well: a mix-up would show
    http_server.add("/m.bin", data)
    http_server.script("/m.bin", status(200, headers={"Content-Encoding": encoding}, body=encode(data)))
    manager = make_manager([asset(http_server.url_for("/m.bin"))])

    path = manager.download("model").path

    assert path.read_bytes() == data
    record = json.loads((manager.cache.entry_dir(manager.asset("model")) / "record.json").read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)
    assert http_server.requests_for("/m.bin")[0].headers["accept-encoding"] == "identity"


def test_an_unknown_encoding_is_refused_by_name(http_server, make_manager):
    http_server.add("/m.bin", V1)
    http_server.script("/m.bin", status(200, headers={"Content-Encoding": "br"}, body=b"\x1b\x00brotli"))
    manager = make_manager([asset(http_server.url_for("/m.bin"))])

    with pytest.raises(DownloadError, match="Content-Encoding: br, which flowmas cannot decode"):
        manager.download("model")
    assert not published(manager)


def test_a_body_that_is_not_the_encoding_it_claims_is_refused(http_server, make_manager):
    http_server.add("/m.bin", V1)
    http_server.script("/m.bin", status(200, headers={"Content-Encoding": "gzip"}, body=V1[:5000]))
    manager = make_manager([asset(http_server.url_for("/m.bin"))])

    with pytest.raises(DownloadError, match="not valid gzip"):
        manager.download("model")
    assert not published(manager)


def test_a_truncated_encoded_body_is_transient_and_restarts(http_server, make_manager):
    data = os.urandom(300_000)
    body = gzip.compress(data)
    http_server.add("/m.bin", data)
    http_server.script("/m.bin", status(200, headers={"Content-Encoding": "gzip"}, body=body[: len(body) // 2]))
    manager = make_manager([asset(http_server.url_for("/m.bin"), retries=1)])

    assert manager.download("model").path.read_bytes() == data
    assert [r.range for r in http_server.requests_for("/m.bin")] == [None, None]  # never a range of encoded bytes


# --- redirects --------------------------------------------------------------------------------------


@pytest.mark.parametrize("location, words", [
    ("file:///etc/passwd", "redirected to a file: URL"),
    ("ftp://127.0.0.1/m.bin", "redirected to a ftp: URL"),
])
def test_a_redirect_off_http_is_a_permanent_error(http_server, make_manager, location, words):
    http_server.script("/m.bin", redirect(location))
    manager = make_manager([asset(http_server.url_for("/m.bin"), retries=3)])

    with pytest.raises(DownloadError, match=words) as info:
        manager.download("model")
    assert not isinstance(info.value, TransientDownloadError)
    assert len(http_server.requests_for("/m.bin")) == 1 and not published(manager)


def test_a_redirect_without_location_says_so(http_server, make_manager):
    http_server.script("/m.bin", status(302))
    manager = make_manager([asset(http_server.url_for("/m.bin"), retries=3)])

    with pytest.raises(DownloadError, match="302 Found without a Location header"):
        manager.download("model")
    assert len(http_server.requests_for("/m.bin")) == 1 and not published(manager)


def test_a_redirect_loop_ends(http_server, make_manager):
    http_server.script("/m.bin", *[redirect("/m.bin")] * 12)
    manager = make_manager([asset(http_server.url_for("/m.bin"))])

    with pytest.raises(DownloadError, match="redirected more than 10 times"):
        manager.download("model")
    assert len(http_server.requests_for("/m.bin")) == 11


def test_no_retry_is_announced_when_none_is_left(http_server, make_manager, caplog):
    http_server.script("/m.bin", status(503), status(503))
    manager = make_manager([asset(http_server.url_for("/m.bin"), retries=1)])
    caplog.set_level(logging.INFO, logger="flowmas")

    with pytest.raises(TransientDownloadError) as info:
        manager.download("model")

    retries = [r.getMessage() for r in caplog.records if "Retrying" in r.getMessage()]
    assert len(retries) == 1 and "(attempt 1 of 2)" in retries[0]
    assert "will retry" not in str(info.value) and str(info.value).endswith("Gave up after 2 attempts.")


# --- links that crawl -------------------------------------------------------------------------------


def test_a_trickle_ends_at_the_deadline_and_what_arrived_is_on_disk(http_server, make_manager):
    http_server.add("/m.bin", V1)
    http_server.script("/m.bin", slow(40, chunk=8))  # 40 B/s: every read returns, no read timeout fires
    manager = make_manager([asset(http_server.url_for("/m.bin"))], download_deadline_seconds=1.5)
    started = time.monotonic()

    with pytest.raises(DownloadTimeoutError) as info:
        manager.download("model")

    assert time.monotonic() - started < 5
    assert "did not finish within 1.5 s" in str(info.value) and "FLOWMAS_DOWNLOAD_DEADLINE_SECONDS" in str(info.value)
    kept = part_of(manager).read_bytes()
    assert len(kept) > 0 and kept == V1[: len(kept)]  # written as it arrived: nothing held back in a buffer
    assert not published(manager)


def test_a_transfer_below_the_speed_floor_ends_and_resumes_later(http_server, make_manager):
    http_server.add("/m.bin", V1)
    http_server.script("/m.bin", slow(500, chunk=100))
    manager = make_manager([asset(http_server.url_for("/m.bin"))], http_min_speed=2000,
                           http_min_speed_window_seconds=1)

    with pytest.raises(DownloadTimeoutError, match=r"averaged \d+ B/s .* below FLOWMAS_HTTP_MIN_SPEED=2000 B/s"):
        manager.download("model")

    kept = part_of(manager).stat().st_size
    assert kept > 0 and not published(manager)
    assert manager.download("model").path.read_bytes() == V1
    assert http_server.requests_for("/m.bin")[-1].range == f"bytes={kept}-"


KILLED_WHEN_COMPLETE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from flowmas import AssetManager, load_project

    def die_when_complete(asset, done, total):
        if total and done >= total:
            os.kill(os.getpid(), signal.SIGKILL)  # every byte is in the .part; nothing is published yet

    manager = AssetManager(load_project(sys.argv[1]), cache_dir=Path(sys.argv[2]),
                           progress_listeners=[die_when_complete])
    manager.download("model")
""")


def test_a_complete_part_left_by_a_killed_process_is_published_without_a_request(
    http_server, make_manager, tmp_path, cache_dir
):
    http_server.add("/m.bin", V1)
    manager = make_manager([asset(http_server.url_for("/m.bin"))])
    done = subprocess.run([sys.executable, "-c", KILLED_WHEN_COMPLETE, str(tmp_path / "flowmas.yaml"),
                           str(cache_dir)], env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL
    assert part_of(manager).stat().st_size == len(V1) and not published(manager)
    requests = len(http_server.requests_for("/m.bin"))

    result = manager.download("model")

    assert result.fetched and result.path.read_bytes() == V1
    assert len(http_server.requests_for("/m.bin")) == requests  # verified from disk, not downloaded again
    assert not part_of(manager).exists()


def test_bytes_reach_the_disk_while_the_transfer_is_still_running(http_server, make_manager):
    http_server.add("/m.bin", V1)
    http_server.script("/m.bin", slow(200_000, chunk=20_000))  # ~10 s for the whole file
    manager = make_manager([asset(http_server.url_for("/m.bin"))], download_deadline_seconds=2)
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: errors.append(_raises(manager.download, "model")))
    thread.start()
    try:
        part, deadline = part_of(manager), time.monotonic() + 1.5
        while not (part.exists() and part.stat().st_size >= 100_000) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert part.stat().st_size >= 100_000  # far less than one 4 MiB buffer: written as it arrived
    finally:
        thread.join()
    assert isinstance(errors[0], DownloadTimeoutError)


def _raises(call, *args):  # type: ignore[no-untyped-def]
    try:
        call(*args)
    except BaseException as exc:
        return exc
    return None


# --- credentials in URLs ----------------------------------------------------------------------------


def test_userinfo_becomes_basic_auth_and_no_secret_is_kept(http_server, make_manager, caplog, cache_dir):
    http_server.add("/m.bin", V1, require_headers={"Authorization": "Basic dXNlcjpwQHNz"})  # user:p@ss
    host = http_server.url.removeprefix("http://")
    url = f"http://user:p%40ss@{host}/m.bin?X-Amz-Signature=deadbeefcafe&expires=1"
    http_server.script("/m.bin", status(503))
    manager = make_manager([asset(url, retries=1)])
    caplog.set_level(logging.DEBUG)

    path = manager.download("model").path

    assert path.read_bytes() == V1
    assert manager.status("model").source == f"http: http://{host}/m.bin?…"
    for text in (caplog.text, *(p.read_text() for p in cache_dir.rglob("*.json"))):
        assert "p%40ss" not in text and "deadbeefcafe" not in text and "user:" not in text
