"""HTTP sources against a real local server: verification, resume, retries, auth hygiene."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pytest

from flowmas.errors import (
    AuthenticationError,
    ChecksumMismatchError,
    SourceNotFoundError,
    TransientDownloadError,
)
from tests.servers.http_files import drop_after, redirect, status

DATA = os.urandom(3 * 2**20 + 123)
DIGEST = hashlib.sha256(DATA).hexdigest()


def http_asset(url: str, **extra: object) -> dict:
    return {"name": "model", "source": {"type": "http", "url": url}, "checksum": f"sha256:{DIGEST}",
            "retry_delay_seconds": 0, **extra}


def cache_files(cache_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*") if ".locks" not in p.parts)


def test_download_verifies_and_publishes(http_server, make_manager, cache_dir):
    http_server.add("/model.bin", DATA)
    manager = make_manager([http_asset(http_server.url_for("/model.bin"))])

    result = manager.download("model")

    assert result.fetched and result.path == cache_dir / "model/model/latest/data/model.bin"
    assert result.path.read_bytes() == DATA
    record = json.loads((cache_dir / "model/model/latest/record.json").read_text())
    assert record["sha256"] == DIGEST and record["size"] == len(DATA) and record["path"] == "data/model.bin"
    assert record["source"] == {"type": "http", "url": http_server.url_for("/model.bin")}
    assert record["etag"] and record["downloaded_at"]
    assert record["project"]["name"] == "test" and record["project"]["file"].endswith("flowmas.yaml")
    assert cache_files(cache_dir) == ["model", "model/model", "model/model/latest",
                                      "model/model/latest/data", "model/model/latest/data/model.bin",
                                      "model/model/latest/record.json"]


async def test_cache_hit_makes_no_request_and_does_not_rehash(http_server, make_manager):
    http_server.add("/model.bin", DATA)
    manager = make_manager([http_asset(http_server.url_for("/model.bin"))])
    path = await manager.get_asset_path("model")
    started = time.perf_counter()
    for _ in range(200):
        assert await manager.get_asset_path("model") == path
    per_hit = (time.perf_counter() - started) / 200
    assert len(http_server.requests_for("/model.bin")) == 1
    assert per_hit < 0.005  # a stat and a small JSON read; hashing 3 MiB would be several ms


def test_query_string_is_not_part_of_the_filename(http_server, make_manager):
    http_server.add("/files/weights.bin", DATA)
    manager = make_manager([http_asset(http_server.url_for("/files/weights.bin") + "?sig=abc&x=1")])
    assert manager.download("model").path.name == "weights.bin"


def test_drop_at_half_resumes_with_only_the_rest(http_server, make_manager, cache_dir):
    http_server.add("/model.bin", DATA)
    http_server.script("/model.bin", drop_after(len(DATA) // 2))
    manager = make_manager([http_asset(http_server.url_for("/model.bin"), retries=1)])

    path = manager.download("model").path

    gets = http_server.requests_for("/model.bin")
    assert [(g.status, g.range) for g in gets] == [(200, None), (206, f"bytes={len(DATA) // 2}-")]
    assert http_server.bytes_sent("/model.bin") == len(DATA)  # nothing transferred twice
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DIGEST


def test_interrupted_download_without_retries_keeps_the_part_for_the_next_call(http_server, make_manager,
                                                                               cache_dir):
    http_server.add("/model.bin", DATA)
    http_server.script("/model.bin", drop_after(2**20))
    manager = make_manager([http_asset(http_server.url_for("/model.bin"))])

    with pytest.raises(TransientDownloadError, match="resumes"):
        manager.download("model")
    assert manager.status("model").status == "not cached"
    assert manager.cache.part_path(manager.asset("model")).stat().st_size == 2**20

    manager.download("model")
    assert http_server.requests_for("/model.bin")[-1].range == f"bytes={2**20}-"
    assert http_server.bytes_sent("/model.bin") == len(DATA)


def test_changed_file_between_attempts_restarts_from_zero(http_server, make_manager):
    http_server.add("/model.bin", b"x" * len(DATA))
    http_server.script("/model.bin", drop_after(2**20))
    manager = make_manager([http_asset(http_server.url_for("/model.bin"))])
    with pytest.raises(TransientDownloadError):
        manager.download("model")

    http_server.add("/model.bin", DATA)  # new content, new ETag: If-Range fails, server sends 200
    path = manager.download("model").path

    assert http_server.requests_for("/model.bin")[-1].status == 200
    assert path.read_bytes() == DATA


def test_server_without_range_support_restarts_cleanly(http_server, make_manager):
    http_server.add("/model.bin", DATA, ranges=False)
    http_server.script("/model.bin", drop_after(2**20))
    manager = make_manager([http_asset(http_server.url_for("/model.bin"), retries=1)])
    path = manager.download("model").path
    assert [g.range for g in http_server.requests_for("/model.bin")] == [None, None]
    assert path.read_bytes() == DATA


def test_503_then_success_is_retried(http_server, make_manager):
    http_server.add("/model.bin", DATA)
    http_server.script("/model.bin", status(503), status(500))
    manager = make_manager([http_asset(http_server.url_for("/model.bin"), retries=2)])
    assert manager.download("model").path.read_bytes() == DATA
    assert [g.status for g in http_server.requests_for("/model.bin")] == [503, 500, 200]


def test_429_retry_after_is_honoured(http_server, make_manager):
    http_server.add("/model.bin", DATA)
    http_server.script("/model.bin", status(429, headers={"Retry-After": "1"}))
    manager = make_manager([http_asset(http_server.url_for("/model.bin"), retries=1)])
    started = time.monotonic()
    manager.download("model")
    assert time.monotonic() - started >= 1.0
    assert [g.status for g in http_server.requests_for("/model.bin")] == [429, 200]


def test_retries_exhausted_raise_transient_and_leave_no_entry(http_server, make_manager, cache_dir):
    http_server.script("/model.bin", status(503), status(503), status(503))
    manager = make_manager([http_asset(http_server.url_for("/model.bin"), retries=2)])
    with pytest.raises(TransientDownloadError) as info:
        manager.download("model")
    assert info.value.status_code == 503 and str(info.value).endswith("Gave up after 3 attempts.")
    assert "retry" not in str(info.value).lower().replace("gave up", "")
    assert len(http_server.requests_for("/model.bin")) == 3
    assert manager.status("model").status == "not cached"


@pytest.mark.parametrize("code, error", [(401, AuthenticationError), (403, AuthenticationError),
                                         (404, SourceNotFoundError)])
def test_client_errors_are_not_retried(http_server, make_manager, cache_dir, code, error):
    http_server.script("/model.bin", status(code))
    manager = make_manager([http_asset(http_server.url_for("/model.bin"), retries=3)])
    with pytest.raises(error) as info:
        manager.download("model")
    assert info.value.status_code == code and "model" in str(info.value)
    assert len(http_server.requests_for("/model.bin")) == 1
    assert not manager.cache.entry_dir(manager.asset("model")).exists()


def test_bearer_token_from_env(http_server, make_manager, monkeypatch):
    monkeypatch.setenv("MODEL_TOKEN", "s3cr3t")
    http_server.add("/model.bin", DATA, require_headers={"Authorization": "Bearer s3cr3t"})
    auth = {"strategy": "env_token", "http": {"token_env_var": "MODEL_TOKEN"}}
    manager = make_manager([http_asset(http_server.url_for("/model.bin"), authentication=auth)])
    assert manager.download("model").path.read_bytes() == DATA


def test_missing_token_fails_before_any_request(http_server, make_manager, monkeypatch):
    monkeypatch.delenv("MODEL_TOKEN", raising=False)
    auth = {"strategy": "env_token", "http": {"token_env_var": "MODEL_TOKEN"}}
    manager = make_manager([http_asset(http_server.url_for("/model.bin"), authentication=auth)])
    with pytest.raises(AuthenticationError, match=r"\$MODEL_TOKEN, which is not set"):
        manager.download("model")
    assert http_server.requests == []


@pytest.mark.parametrize("header, scheme", [("X-API-Key", ""), ("Authorization", "Bearer")])
def test_auth_headers_are_dropped_on_cross_origin_redirect(http_server, other_origin, make_manager,
                                                          monkeypatch, header, scheme):
    monkeypatch.setenv("MODEL_TOKEN", "s3cr3t")
    other_origin.add("/cdn/model.bin", DATA)
    http_server.script("/model.bin", redirect(other_origin.url_for("/cdn/model.bin")))
    auth = {"http": {"token_env_var": "MODEL_TOKEN", "header_name": header, "scheme": scheme}}
    manager = make_manager([http_asset(http_server.url_for("/model.bin"), authentication=auth)])

    assert manager.download("model").path.read_bytes() == DATA

    expected = f"{scheme} s3cr3t".strip()
    assert http_server.requests_for("/model.bin")[0].headers[header.lower()] == expected
    cdn = other_origin.requests_for("/cdn/model.bin")[0]
    assert header.lower() not in cdn.headers
    assert "s3cr3t" not in json.dumps(cdn.headers)


def test_same_origin_redirect_keeps_auth(http_server, make_manager, monkeypatch):
    monkeypatch.setenv("MODEL_TOKEN", "s3cr3t")
    http_server.add("/v2/model.bin", DATA, require_headers={"X-API-Key": "s3cr3t"})
    http_server.script("/model.bin", redirect("/v2/model.bin"))
    auth = {"http": {"token_env_var": "MODEL_TOKEN", "header_name": "X-API-Key", "scheme": ""}}
    manager = make_manager([http_asset(http_server.url_for("/model.bin"), authentication=auth)])
    assert manager.download("model").path.read_bytes() == DATA


def test_token_never_reaches_logs_errors_or_metadata(http_server, make_manager, monkeypatch, caplog, cache_dir):
    monkeypatch.setenv("MODEL_TOKEN", "s3cr3t-token-value")
    http_server.add("/model.bin", DATA, require_headers={"Authorization": "Bearer s3cr3t-token-value"})
    http_server.script("/model.bin", status(503), status(401))
    auth = {"http": {"token_env_var": "MODEL_TOKEN"}}
    manager = make_manager([http_asset(http_server.url_for("/model.bin"), authentication=auth, retries=2)])
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as info:
        manager.download("model")
    assert "s3cr3t" not in str(info.value)
    manager.download("model")
    assert "s3cr3t" not in caplog.text
    for file in cache_dir.rglob("*"):
        if file.is_file():
            assert b"s3cr3t" not in file.read_bytes()[:100_000] or file.suffix == ".bin"


def test_checksum_mismatch_removes_the_part_and_keeps_the_cache_as_it_was(http_server, make_manager, cache_dir):
    http_server.add("/model.bin", DATA)
    manager = make_manager([http_asset(http_server.url_for("/model.bin"))])
    manager.download("model")
    before = cache_files(cache_dir)
    old_record = (cache_dir / "model/model/latest/record.json").read_text()

    http_server.add("/model.bin", b"tampered" + DATA[8:])
    with pytest.raises(ChecksumMismatchError) as info:
        manager.download("model", force=True)

    assert info.value.expected == f"sha256:{DIGEST}"
    assert info.value.actual == "sha256:" + hashlib.sha256(b"tampered" + DATA[8:]).hexdigest()
    assert "cache is unchanged" in str(info.value)
    assert cache_files(cache_dir) == before
    assert (cache_dir / "model/model/latest/record.json").read_text() == old_record
    assert (cache_dir / "model/model/latest/data/model.bin").read_bytes() == DATA


def test_changed_url_under_same_version_is_detected_not_served_stale(http_server, make_manager):
    http_server.add("/a.bin", DATA)
    http_server.add("/b.bin", DATA[::-1])
    make_manager([http_asset(http_server.url_for("/a.bin"), checksum=None)]).download("model")

    moved = http_asset(http_server.url_for("/b.bin"), checksum=None)
    moved["source"]["filename"] = "a.bin"
    manager = make_manager([moved])
    assert manager.status("model").status == "stale"
    path = manager.get_asset_path_sync("model")
    assert path.read_bytes() == DATA[::-1]
    assert len(http_server.requests_for("/b.bin")) == 1


def test_changed_checksum_is_detected(http_server, make_manager):
    http_server.add("/a.bin", DATA)
    make_manager([http_asset(http_server.url_for("/a.bin"), checksum=None)]).download("model")
    manager = make_manager([http_asset(http_server.url_for("/a.bin"))])
    assert manager.status("model").status == "stale"
    assert manager.download("model").fetched


def test_tampered_file_is_not_a_hit(http_server, make_manager):
    http_server.add("/model.bin", DATA)
    manager = make_manager([http_asset(http_server.url_for("/model.bin"))])
    path = manager.download("model").path
    path.write_bytes(DATA[:100])
    assert manager.status("model").status == "damaged"
    assert manager.verify("model").status == "failed"
    assert manager.get_asset_path_sync("model").read_bytes() == DATA
    assert len(http_server.requests_for("/model.bin")) == 2


def test_unreachable_server_is_transient(make_manager):
    manager = make_manager([http_asset("http://127.0.0.1:9/model.bin")])
    with pytest.raises(TransientDownloadError, match=r"could not reach http://127\.0\.0\.1:9/model\.bin"):
        manager.download("model")


def test_with_a_proxy_configured_httpx_own_transport_is_used(http_server, make_manager, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there: it must be bypassed
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    http_server.add("/model.bin", DATA)
    http_server.script("/model.bin", drop_after(2**20))
    manager = make_manager([http_asset(http_server.url_for("/model.bin"), retries=1)])
    assert manager.download("model").path.read_bytes() == DATA
    assert http_server.bytes_sent("/model.bin") == len(DATA)
