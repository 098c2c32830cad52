"""Hugging Face sources through the real huggingface_hub client against the local Hub (``tests/servers/hub.py``).

The session's Hub treats files of 64 KiB and more as LFS (302 to a CDN on another origin, ``X-Linked-Etag`` =
sha256); smaller ones are kept in git (``ETag`` = git blob sha1). Every error test checks the state afterwards
too: nothing published, no ``.part`` left.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download

from flowmas.assets.manager import AssetManager
from flowmas.errors import (
    AuthenticationError,
    ChecksumMismatchError,
    SourceNotFoundError,
    TransientDownloadError,
)
from tests.servers.hub import HubServer, git_blob_sha1

SMALL = b'{"hidden_size": 8}'
LARGE = os.urandom(200 * 1024)  # above the fixture's LFS threshold: served through the CDN redirect
TOKENIZER = b'{"vocab": ["a", "b"]}'


def hf_asset(filename: str | None = "config.json", **source: object) -> dict[str, object]:
    spec: dict[str, object] = {"type": "hf", "repo_id": "acme/tiny", **source}
    if filename is not None:
        spec["filename"] = filename
    return {"name": "bert", "source": spec}


def assert_nothing_left(manager: AssetManager, name: str = "bert") -> None:
    """Nothing published and no partial download (nor its sidecar) left behind."""
    asset = manager.asset(name)
    part = manager.cache.part_path(asset)
    assert manager.status(name).status == "not cached"
    assert not part.exists() and not part.with_name(part.name + ".json").exists()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resolve_gets(hub: HubServer) -> list[str]:
    return [r.raw_path for r in hub.requests if r.method == "GET" and "/resolve/" in r.raw_path]


# --- one file ------------------------------------------------------------------------------------------


def test_small_git_file_is_pinned_to_its_commit_and_checked_against_the_blob_sha1(hub, make_manager, cache_dir):
    repo = hub.add_repo("acme/tiny", {"config.json": SMALL})
    manager = make_manager([hf_asset()])

    path = manager.download("bert").path

    assert path.read_bytes() == SMALL and path.name == "config.json"
    record = manager.cache.read_record(manager.cache.entry_dir(manager.asset("bert")))
    assert record is not None
    assert record.source["commit"] == repo.head and record.source["revision"] == "main"
    assert record.sha256 == hashlib.sha256(SMALL).hexdigest()
    head, get = hub.requests
    assert (head.method, head.raw_path) == ("HEAD", "/acme/tiny/resolve/main/config.json")
    assert (get.method, get.raw_path) == ("GET", f"/acme/tiny/resolve/{repo.head}/config.json")  # pinned
    assert manager.verify("bert").ok


def test_lfs_file_in_a_subfolder_with_checksum_and_pinned_revision(hub, make_manager):
    repo = hub.add_repo("acme/tiny", {"onnx/model.onnx": LARGE})
    first = repo.head
    repo.commit({"onnx/model.onnx": b"newer"})
    checksum = "sha256:" + hashlib.sha256(LARGE).hexdigest()
    manager = make_manager([{**hf_asset("onnx/model.onnx", revision=first), "checksum": checksum}])

    path = manager.download("bert").path

    assert path.name == "model.onnx" and path.read_bytes() == LARGE
    record = manager.cache.read_record(manager.cache.entry_dir(manager.asset("bert")))
    assert record is not None and record.source["commit"] == first
    cdn = [r for r in hub.requests if "/_cdn/" in r.raw_path]
    assert [r.method for r in cdn] == ["GET"] and cdn[0].status == 200


def test_token_goes_to_the_hub_and_never_to_the_cdn(hub, make_manager, monkeypatch):
    hub.add_repo("acme/tiny", {"model.bin": LARGE}, gated=True, tokens={"hf_good"})
    monkeypatch.setenv("MY_HF_TOKEN", "hf_good")
    manager = make_manager([{**hf_asset("model.bin"), "authentication": {"hf": {"token_env_var": "MY_HF_TOKEN"}}}])

    assert manager.download("bert").path.read_bytes() == LARGE

    hub_side = [r for r in hub.requests if "/_cdn/" not in r.raw_path]
    cdn_side = [r for r in hub.requests if "/_cdn/" in r.raw_path]
    assert hub_side and all(r.authorization == "Bearer hf_good" for r in hub_side)
    assert cdn_side and all(r.authorization is None for r in cdn_side)


def test_default_hf_token_variables(hub, make_manager, monkeypatch):
    hub.add_repo("acme/tiny", {"config.json": SMALL}, gated=True, tokens={"hf_default"})
    monkeypatch.setenv("HF_TOKEN", "hf_default")
    manager = make_manager([{**hf_asset(), "authentication": {"strategy": "env_token"}}])
    assert manager.download("bert").path.read_bytes() == SMALL


def test_token_from_hf_token_without_authentication_block(hub, make_manager, monkeypatch):
    hub.add_repo("acme/tiny", {"config.json": SMALL}, gated=True, tokens={"hf_env"})
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    manager = make_manager([hf_asset()])
    assert manager.download("bert").path.read_bytes() == SMALL
    assert {r.authorization for r in hub.requests} == {"Bearer hf_env"}


@pytest.mark.parametrize("filename, data", [("config.json", SMALL), ("onnx/model.onnx", LARGE)])
def test_bytes_that_do_not_match_the_hubs_own_hash_are_refused(hub, make_manager, filename, data):
    hub.add_repo("acme/tiny", {filename: data})
    hub.serve_corrupted("acme/tiny", filename)
    manager = make_manager([hf_asset(filename)])

    with pytest.raises(ChecksumMismatchError, match=r"do not match the Hub's own hash") as caught:
        manager.download("bert")

    kind = "sha256" if data is LARGE else "git-sha1"
    expected = hashlib.sha256(data).hexdigest() if data is LARGE else git_blob_sha1(data)
    assert f"{kind} {expected}" in str(caught.value)
    assert_nothing_left(manager)


def test_an_lfs_download_cut_mid_body_resumes_with_a_range_and_ends_verified(hub, make_manager):
    repo = hub.add_repo("acme/tiny", {"onnx/model.onnx": LARGE})
    hub.truncate_next_body(100_000)
    manager = make_manager([{**hf_asset("onnx/model.onnx"), "retries": 1, "retry_delay_seconds": 0}])

    path = manager.download("bert").path

    assert path.read_bytes() == LARGE
    cdn = [(r.range, r.status) for r in hub.requests if "/_cdn/" in r.raw_path]
    assert cdn == [(None, 200), ("bytes=100000-", 206)]
    assert resolve_gets(hub) == [f"/acme/tiny/resolve/{repo.head}/onnx/model.onnx"] * 2
    assert manager.verify("bert").ok


def test_a_cut_download_without_retries_is_resumed_by_the_next_call(hub, make_manager):
    hub.add_repo("acme/tiny", {"model.bin": LARGE})
    hub.truncate_next_body(150_000)
    manager = make_manager([hf_asset("model.bin")])

    with pytest.raises(TransientDownloadError, match="resumes it"):
        manager.download("bert")
    assert manager.cache.part_path(manager.asset("bert")).stat().st_size == 150_000
    assert manager.download("bert").path.read_bytes() == LARGE
    assert [r.range for r in hub.requests if "/_cdn/" in r.raw_path] == [None, "bytes=150000-"]


def test_a_file_in_the_hf_cache_is_linked_from_there_without_a_download(hub, make_manager, tmp_path):
    repo = hub.add_repo("acme/tiny", {"onnx/model.onnx": LARGE})
    cached = Path(hf_hub_download("acme/tiny", "onnx/model.onnx", endpoint=hub.url, token=False,
                                  cache_dir=os.environ["HF_HUB_CACHE"]))
    hub.requests.clear()
    manager = make_manager([hf_asset("onnx/model.onnx")])

    path = manager.download("bert").path

    assert path.read_bytes() == LARGE
    assert [r.method for r in hub.requests] == ["HEAD"]  # the metadata only
    assert path.stat().st_ino == cached.resolve().stat().st_ino  # hardlinked, same file system
    record = manager.cache.read_record(manager.cache.entry_dir(manager.asset("bert")))
    assert record is not None and record.source["commit"] == repo.head


def test_checksum_mismatch_on_hub_file(hub, make_manager, cache_dir):
    hub.add_repo("acme/tiny", {"config.json": SMALL})
    manager = make_manager([{**hf_asset(), "checksum": "sha256:" + "0" * 64}])
    with pytest.raises(ChecksumMismatchError):
        manager.download("bert")
    assert not (cache_dir / "model" / "bert" / "latest").exists()
    assert_nothing_left(manager)


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["config.json", None], ids=["file", "snapshot"])
def test_an_unreachable_hub_is_transient_names_the_endpoint_and_is_retried(hub, make_manager, monkeypatch, caplog,
                                                                          filename):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    manager = make_manager([{**hf_asset(filename), "retries": 2, "retry_delay_seconds": 0}])
    caplog.set_level(logging.WARNING, logger="flowmas")

    with pytest.raises(TransientDownloadError) as caught:
        manager.download("bert")

    message = str(caught.value)
    assert f"the Hugging Face Hub at {endpoint} could not be reached" in message
    assert "Gave up after 3 attempts" in message
    assert "not in" not in message
    retries = [r for r in caplog.records if r.name == "flowmas.assets" and "Retrying in" in r.getMessage()]
    assert [r.getMessage().rsplit("(", 1)[1] for r in retries] == ["attempt 1 of 3).", "attempt 2 of 3)."]
    assert_nothing_left(manager)


def test_a_5xx_on_the_metadata_request_is_transient_and_retried_by_flowmas(hub, make_manager):
    hub.add_repo("acme/tiny", {"config.json": SMALL})
    hub.fail_next(1, 503, method="HEAD")
    manager = make_manager([{**hf_asset(), "retries": 1, "retry_delay_seconds": 0}])

    assert manager.download("bert").path.read_bytes() == SMALL
    assert [(r.method, r.status) for r in hub.requests] == [("HEAD", 503), ("HEAD", 200), ("GET", 200)]


def test_gated_repo_without_access_is_an_authentication_error(hub, make_manager, monkeypatch):
    hub.add_repo("acme/tiny", {"config.json": SMALL}, gated=True, tokens={"hf_good"})
    monkeypatch.setenv("MY_HF_TOKEN", "hf_wrong")
    manager = make_manager([{**hf_asset(), "authentication": {"hf": {"token_env_var": "MY_HF_TOKEN"}}}])
    with pytest.raises(AuthenticationError, match=r"gated.*accept its terms"):
        manager.download("bert")
    assert_nothing_left(manager)


def test_gated_snapshot_without_a_token_is_an_authentication_error(hub, make_manager):
    hub.add_repo("acme/tiny", {"config.json": SMALL}, gated=True, tokens={"hf_good"})
    manager = make_manager([hf_asset(None)])
    with pytest.raises(AuthenticationError, match=r"gated.*accept its terms.*No token was sent"):
        manager.download("bert")
    assert_nothing_left(manager)


def test_missing_configured_token_fails_before_any_request(hub, make_manager, monkeypatch):
    monkeypatch.delenv("MY_HF_TOKEN", raising=False)
    manager = make_manager([{**hf_asset(), "authentication": {"hf": {"token_env_var": "MY_HF_TOKEN"}}}])
    with pytest.raises(AuthenticationError, match=r"\$MY_HF_TOKEN"):
        manager.download("bert")
    assert hub.requests == []


@pytest.mark.parametrize(
    "asset, message",
    [
        (hf_asset(repo_id="acme/missing"), r"repository 'acme/missing' \(model\) was not found.*check 'repo_id'"),
        (hf_asset(revision="v9"), r"revision 'v9' does not exist in acme/tiny; check 'revision'"),
        (hf_asset("nope.json"), r"'nope.json' is not in acme/tiny@main; check 'filename'"),
        (hf_asset(None, repo_id="acme/missing"), r"repository 'acme/missing' \(model\) was not found"),
        (hf_asset(None, revision="v9"), r"revision 'v9' does not exist in acme/tiny"),
        (hf_asset(None, allow_patterns=["*.bin"]), r"allow_patterns=\['\*.bin'\] select none of the 2 files"),
        (hf_asset(None, ignore_patterns=["*"]), r"ignore_patterns=\['\*'\] select none of the 2 files"),
    ],
    ids=["repo", "revision", "file", "snapshot-repo", "snapshot-revision", "allow-nothing", "ignore-everything"],
)
def test_hub_errors_become_flowmas_errors_with_a_hint(hub, make_manager, asset, message):
    hub.add_repo("acme/tiny", {"config.json": SMALL, "tokenizer.json": TOKENIZER})
    manager = make_manager([asset])
    with pytest.raises(SourceNotFoundError, match=message):
        manager.download("bert")
    assert_nothing_left(manager)


# --- snapshots ---------------------------------------------------------------------------------------


def snapshot_repo(hub: HubServer):
    return hub.add_repo("acme/tiny", {
        ".gitattributes": b"*.onnx filter=lfs diff=lfs merge=lfs -text\n",
        "config.json": SMALL,
        "tokenizer.json": TOKENIZER,
        "onnx/model.onnx": LARGE,
        "onnx/model_fp16.onnx": LARGE[:70_000],
        "README.md": b"# tiny\n",
    })


def test_snapshot_with_patterns_holds_exactly_the_selected_files_and_verifies(hub, make_manager):
    repo = snapshot_repo(hub)
    asset = hf_asset(None, allow_patterns=["*.json", "onnx/*"], ignore_patterns=["*fp16*"])
    manager = make_manager([asset])

    result = manager.download("bert")

    data = result.path
    assert data.is_dir()
    found = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if not p.is_dir())
    assert found == ["config.json", "onnx/model.onnx", "tokenizer.json"]
    assert not any(p.is_symlink() for p in data.rglob("*"))
    assert (data / "onnx" / "model.onnx").read_bytes() == LARGE
    assert result.size == len(SMALL) + len(TOKENIZER) + len(LARGE)
    entry = manager.cache.entry_dir(manager.asset("bert"))
    record, files = manager.cache.read_record(entry), manager.cache.read_files(entry)
    assert record is not None and record.source["commit"] == repo.head and record.file_count == 3
    assert files is not None and [f.path for f in files] == found
    assert files[1].sha256 == hashlib.sha256(LARGE).hexdigest()
    assert manager.verify("bert").ok


def test_snapshot_of_everything_includes_what_the_repo_holds(hub, make_manager):
    snapshot_repo(hub)
    manager = make_manager([hf_asset(None)])
    data = manager.download("bert").path
    found = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    assert found == [".gitattributes", "README.md", "config.json", "onnx/model.onnx", "onnx/model_fp16.onnx",
                     "tokenizer.json"]


def test_a_tampered_snapshot_file_fails_verify(hub, make_manager):
    snapshot_repo(hub)
    manager = make_manager([hf_asset(None, allow_patterns=["*.json"])])
    data = manager.download("bert").path

    (data / "tokenizer.json").write_bytes(b'{"vocab": ["a", "c"]}')  # same size

    result = manager.verify("bert")
    assert result.status == "failed" and "tokenizer.json: content changed" in result.detail


def test_snapshot_files_not_matching_the_hubs_hash_are_refused(hub, make_manager):
    snapshot_repo(hub)
    hub.serve_corrupted("acme/tiny", "onnx/model.onnx")
    manager = make_manager([hf_asset(None, allow_patterns=["*.json", "onnx/model.onnx"])])

    with pytest.raises(ChecksumMismatchError, match=r"'onnx/model.onnx'.*do not match the Hub's own hash"):
        manager.download("bert")

    assert_nothing_left(manager)


def test_a_snapshot_already_in_the_hf_cache_downloads_no_file(hub, make_manager):
    snapshot_repo(hub)
    manager = make_manager([hf_asset(None, allow_patterns=["*.json"])])
    manager.download("bert")
    manager.clear("bert")
    hub.requests.clear()
    seen: list[tuple[int, int | None]] = []
    manager.progress_listeners.append(lambda asset, done, total: seen.append((done, total)))

    manager.download("bert")

    assert not [r for r in hub.requests if r.method == "GET" and ("/resolve/" in r.raw_path or "/_cdn/" in r.raw_path)]
    assert seen[0] == (len(SMALL) + len(TOKENIZER),) * 2  # progress starts where the cache already is
    assert manager.verify("bert").ok


def test_snapshot_progress_reaches_listeners_and_hf_draws_nothing(hub, make_manager, capfd):
    snapshot_repo(hub)
    seen: list[tuple[int, int | None]] = []
    manager = make_manager([{**hf_asset(None), "progress_report": False}])
    manager.progress_listeners.append(lambda asset, done, total: seen.append((done, total)))

    manager.download("bert")

    total = sum(len(b) for b in (b"*.onnx filter=lfs diff=lfs merge=lfs -text\n", SMALL, TOKENIZER, LARGE,
                                 LARGE[:70_000], b"# tiny\n"))
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    err = capfd.readouterr().err
    assert "Fetching" not in err and "it/s" not in err  # no huggingface_hub bar


# --- huggingface_hub's log lines ---------------------------------------------------------------------


def test_huggingface_hub_retry_warnings_come_out_of_the_flowmas_logger(hub, make_manager, caplog, capfd):
    snapshot_repo(hub)
    hub.fail_next(1, 503, path="/tree/")  # snapshot_download's listing, which huggingface_hub retries itself
    manager = make_manager([hf_asset(None, allow_patterns=["config.json"])])
    hf_logger = logging.getLogger("huggingface_hub")
    before = (list(hf_logger.handlers), hf_logger.propagate)
    caplog.set_level(logging.WARNING)

    manager.download("bert")  # ~1 s: huggingface_hub's own backoff

    routed = [r.getMessage() for r in caplog.records if r.name == "flowmas.assets.hub"]
    assert "bert: huggingface_hub: Retrying in 1s [Retry 1/5]." in routed
    assert any(m.startswith("bert: huggingface_hub: HTTP Error 503") for m in routed)
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert "Retrying in" not in capfd.readouterr().err  # huggingface_hub's own handler stayed silent
    assert (list(hf_logger.handlers), hf_logger.propagate) == before
