"""A hostile or broken Hub, CDN, endpoint or Hugging Face cache, through the real huggingface_hub client.

Each test checks the error (type and words that say what to do) and the state afterwards: nothing published,
no ``.part`` left, nothing written outside the caches, and no poisoned file left in the Hugging Face cache
for the next attempt to trust.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download

from flowmas.assets.manager import AssetManager
from flowmas.errors import AuthenticationError, ChecksumMismatchError, DownloadError
from tests.assets.test_hub_source import LARGE, SMALL, assert_nothing_left, hf_asset
from tests.servers.hub import HubServer

TOKEN = "hf_s3cr3t_t0ken"


def hf_cache() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


def blobs(repo: str = "models--acme--tiny") -> set[str]:
    folder = hf_cache() / repo / "blobs"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.mark.parametrize("path", ["../evil.txt", "onnx/../../evil.txt", "/tmp/evil.txt", "a//b.txt"])
def test_a_listing_with_a_path_that_leaves_the_snapshot_is_refused(hub, make_manager, tmp_path, path):
    hub.add_repo("acme/tiny", {"config.json": SMALL, path: b"pwned"})
    manager = make_manager([hf_asset(None)])

    with pytest.raises(DownloadError, match=r"would leave the snapshot's directory; refused"):
        manager.download("bert")

    assert_nothing_left(manager)
    assert not hf_cache().exists()  # refused before snapshot_download wrote anything
    assert not [p for p in tmp_path.rglob("evil.txt")]


def test_an_unsafe_path_that_the_patterns_leave_out_does_not_matter(hub, make_manager):
    hub.add_repo("acme/tiny", {"config.json": SMALL, "../evil.txt": b"pwned"})
    manager = make_manager([hf_asset(None, allow_patterns=["*.json"])])
    data = manager.download("bert").path
    assert sorted(p.name for p in data.iterdir()) == ["config.json"]


def test_a_snapshot_file_that_fails_its_check_is_dropped_from_the_hf_cache(hub, make_manager):
    hub.add_repo("acme/tiny", {"config.json": SMALL, "model.bin": LARGE})
    hub.serve_corrupted("acme/tiny", "model.bin")
    manager = make_manager([hf_asset(None)])
    sha256 = hashlib.sha256(LARGE).hexdigest()

    with pytest.raises(ChecksumMismatchError, match=r"'model.bin'.*do not match the Hub's own hash \(sha256 "):
        manager.download("bert")

    assert_nothing_left(manager)
    assert sha256 not in blobs()  # huggingface_hub would otherwise link the bad blob again, forever
    # the Hub heals (same content, new commit): the next attempt downloads the file again and succeeds
    hub.reset()
    hub.add_repo("acme/tiny", {"config.json": SMALL, "model.bin": LARGE})
    assert (manager.download("bert").path / "model.bin").read_bytes() == LARGE
    assert manager.verify("bert").ok


def test_a_tampered_file_in_the_hf_cache_is_not_trusted(hub, make_manager, caplog):
    hub.add_repo("acme/tiny", {"model.bin": LARGE})
    cached = Path(hf_hub_download("acme/tiny", "model.bin", endpoint=hub.url, token=False, cache_dir=hf_cache()))
    blob = cached.resolve()
    blob.write_bytes(b"X" + LARGE[1:])  # same size: only a hash can tell
    hub.requests.clear()
    manager = make_manager([hf_asset("model.bin")])
    caplog.set_level(logging.WARNING, logger="flowmas.assets.hub")

    path = manager.download("bert").path

    assert path.read_bytes() == LARGE
    assert path.stat().st_ino != blob.stat().st_ino  # a fresh download, not a link to the bad copy
    assert [r.method for r in hub.requests if "/_cdn/" in r.raw_path] == ["GET"]
    assert any("does not match the Hub's sha256" in r.getMessage() for r in caplog.records)


def test_a_failing_file_request_inside_a_snapshot_is_judged_by_its_cause(hub, make_manager):
    """huggingface_hub wraps a refused HEAD in LocalEntryNotFoundError ("nothing cached"), an
    EntryNotFoundError: it must come out neither as "not in the repository" nor as "unreachable"."""
    hub.add_repo("acme/tiny", {"config.json": SMALL})
    hub.fail_next(1, 403, method="HEAD", path="/resolve/")
    manager = make_manager([hf_asset(None)])

    with pytest.raises(AuthenticationError, match=r"answered 403 for acme/tiny@main \(snapshot\); check the token"):
        manager.download("bert")

    assert_nothing_left(manager)


def test_an_endpoint_that_is_not_a_hub_is_refused_with_a_hint(hub, http_server, make_manager, monkeypatch):
    http_server.add("/acme/tiny/resolve/main/config.json", SMALL)  # a plain file server: no X-Repo-Commit
    monkeypatch.setenv("HF_ENDPOINT", http_server.url_for(""))
    manager = make_manager([hf_asset()])

    with pytest.raises(DownloadError, match=r"without the commit \(X-Repo-Commit\).*check HF_ENDPOINT"):
        manager.download("bert")

    assert_nothing_left(manager)


@pytest.mark.parametrize("snapshot", [False, True], ids=["file", "snapshot"])
def test_the_token_never_reaches_the_cdn_logs_errors_or_records(hub: HubServer, make_manager, monkeypatch, caplog,
                                                               snapshot):
    hub.add_repo("acme/tiny", {"model.bin": LARGE, "config.json": SMALL}, gated=True, tokens={TOKEN})
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    manager: AssetManager = make_manager([hf_asset(None if snapshot else "model.bin"),
                                          {**hf_asset("missing.bin"), "name": "missing"}])

    manager.download("bert")
    with pytest.raises(DownloadError) as caught:
        manager.download("missing")

    cdn = [r for r in hub.requests if "/_cdn/" in r.raw_path]
    assert cdn and all(r.authorization is None for r in cdn)
    assert TOKEN not in caplog.text and TOKEN not in str(caught.value)
    entry = manager.cache.entry_dir(manager.asset("bert"))
    assert all(TOKEN not in p.read_text() for p in entry.glob("*.json"))
