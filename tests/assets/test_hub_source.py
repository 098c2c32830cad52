"""Hugging Face sources through the real huggingface_hub client against the local Hub server."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from flowmas.errors import AuthenticationError, ChecksumMismatchError, SourceNotFoundError

SMALL = b'{"hidden_size": 8}'
LARGE = os.urandom(200 * 1024)  # above the fixture's LFS threshold: served through the CDN redirect


def hf_asset(filename: str = "config.json", **source: object) -> dict:
    return {"name": "bert", "source": {"type": "hf", "repo_id": "acme/tiny", "filename": filename, **source}}


def test_download_records_the_resolved_commit(hub, make_manager, cache_dir):
    repo = hub.add_repo("acme/tiny", {"config.json": SMALL})
    manager = make_manager([hf_asset()])

    path = manager.download("bert").path

    assert path.read_bytes() == SMALL and path.name == "config.json"
    record = json.loads((path.parent / ".asset_info.json").read_text())
    assert record["source"]["commit"] == repo.head
    assert record["source"]["revision"] == "main"


def test_lfs_file_in_a_subfolder_with_checksum_and_pinned_revision(hub, make_manager):
    repo = hub.add_repo("acme/tiny", {"onnx/model.onnx": LARGE})
    first = repo.head
    repo.commit({"onnx/model.onnx": b"newer"})
    checksum = "sha256:" + hashlib.sha256(LARGE).hexdigest()
    manager = make_manager([{**hf_asset("onnx/model.onnx", revision=first), "checksum": checksum}])

    path = manager.download("bert").path

    assert path.name == "model.onnx" and path.read_bytes() == LARGE
    cdn = [r for r in hub.requests if "/_cdn/" in r.raw_path]
    assert cdn and all(r.authorization is None for r in cdn)


def test_token_from_configured_env_var_reaches_a_gated_repo(hub, make_manager, monkeypatch):
    hub.add_repo("acme/tiny", {"config.json": SMALL}, gated=True, tokens={"hf_good"})
    monkeypatch.setenv("MY_HF_TOKEN", "hf_good")
    manager = make_manager([{**hf_asset(), "authentication": {"hf": {"token_env_var": "MY_HF_TOKEN"}}}])
    assert manager.download("bert").path.read_bytes() == SMALL
    assert hub.requests[0].authorization == "Bearer hf_good"


def test_default_hf_token_variables(hub, make_manager, monkeypatch):
    hub.add_repo("acme/tiny", {"config.json": SMALL}, gated=True, tokens={"hf_default"})
    monkeypatch.setenv("HF_TOKEN", "hf_default")
    manager = make_manager([{**hf_asset(), "authentication": {"strategy": "env_token"}}])
    assert manager.download("bert").path.read_bytes() == SMALL


def test_gated_repo_without_access_is_an_authentication_error(hub, make_manager, monkeypatch, cache_dir):
    hub.add_repo("acme/tiny", {"config.json": SMALL}, gated=True, tokens={"hf_good"})
    monkeypatch.setenv("MY_HF_TOKEN", "hf_wrong")
    manager = make_manager([{**hf_asset(), "authentication": {"hf": {"token_env_var": "MY_HF_TOKEN"}}}])
    with pytest.raises(AuthenticationError, match=r"gated.*accept its terms"):
        manager.download("bert")
    assert manager.status("bert").status == "not_cached"
    assert not manager.cache.part_path(manager.asset("bert")).exists()


def test_missing_configured_token_fails_before_any_request(hub, make_manager, monkeypatch):
    monkeypatch.delenv("MY_HF_TOKEN", raising=False)
    manager = make_manager([{**hf_asset(), "authentication": {"hf": {"token_env_var": "MY_HF_TOKEN"}}}])
    with pytest.raises(AuthenticationError, match=r"\$MY_HF_TOKEN"):
        manager.download("bert")
    assert hub.requests == []


@pytest.mark.parametrize(
    "asset, message",
    [
        (hf_asset(repo_id="acme/missing"), "repository 'acme/missing'"),
        (hf_asset(revision="v9"), "revision 'v9' does not exist"),
        (hf_asset("nope.json"), "'nope.json' is not in acme/tiny"),
    ],
)
def test_hub_errors_become_flowmas_errors_with_a_hint(hub, make_manager, asset, message):
    hub.add_repo("acme/tiny", {"config.json": SMALL})
    manager = make_manager([asset])
    with pytest.raises(SourceNotFoundError, match=message):
        manager.download("bert")
    assert manager.status("bert").status == "not_cached"


def test_checksum_mismatch_on_hub_file(hub, make_manager, cache_dir):
    hub.add_repo("acme/tiny", {"config.json": SMALL})
    manager = make_manager([{**hf_asset(), "checksum": "sha256:" + "0" * 64}])
    with pytest.raises(ChecksumMismatchError):
        manager.download("bert")
    assert not (cache_dir / "model" / "bert" / "latest").exists()
    assert not manager.cache.part_path(manager.asset("bert")).exists()
