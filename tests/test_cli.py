"""The ``flowmas assets`` commands: output on stdout, logs on stderr, exit codes 0 / 1 / 2."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flowmas.cli import app


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "w.bin").write_bytes(b"weights")
    (tmp_path / "t.txt").write_bytes(b"template")
    assets = [
        {"name": "w", "source": {"type": "local", "path": "w.bin"},
         "checksum": "sha256:" + hashlib.sha256(b"weights").hexdigest()},
        {"name": "t", "asset_type": "template", "source": {"type": "local", "path": "t.txt"}},
    ]
    path = tmp_path / "flowmas.yaml"
    path.write_text(yaml.safe_dump({"name": "cli", "assets": assets}))
    monkeypatch.setenv("FLOWMAS_ASSETS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FLOWMAS_PROJECT", str(path))
    return path


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_download_all_then_list_json(project):
    result = run("assets", "download")
    assert result.exit_code == 0, result.output
    assert "w: " in result.stdout and "fetched" in result.stdout
    assert "Fetched w" in result.stderr  # logs go to stderr

    again = run("assets", "download", "w")
    assert again.exit_code == 0 and "(cached)" in again.stdout

    listed = json.loads(run("assets", "list", "--json").stdout)
    assert [(row["name"], row["status"]) for row in listed] == [("w", "cached"), ("t", "cached")]
    assert listed[0]["checksum"].startswith("sha256:")


def test_list_table_does_not_download(project, tmp_path):
    result = run("assets", "list")
    assert result.exit_code == 0 and "not_cached" in result.stdout
    assert not (tmp_path / "cache" / "model").exists()


def test_verify_detects_tampering_with_exit_1(project, tmp_path):
    run("assets", "download")
    assert run("assets", "verify").exit_code == 0
    (tmp_path / "cache" / "model" / "w" / "latest" / "w.bin").write_bytes(b"evil")
    result = run("assets", "verify", "w")
    assert result.exit_code == 1 and "w: failed" in result.stdout


def test_verify_of_an_uncached_named_asset_fails(project):
    result = run("assets", "verify", "w")
    assert result.exit_code == 1 and "not cached" in result.stdout


def test_failed_download_exits_1(project, tmp_path):
    (tmp_path / "w.bin").write_bytes(b"changed")  # no longer matches the checksum
    result = run("assets", "download", "w")
    assert result.exit_code == 1 and "sha256 mismatch" in result.stderr


def test_unknown_asset_and_bad_configuration_exit_2(project):
    result = run("assets", "download", "nope")
    assert result.exit_code == 2 and "Unknown asset 'nope'" in result.stderr
    project.write_text("name: cli\nassets: [{name: x, sorce: {}}]\n")
    result = run("assets", "list")
    assert result.exit_code == 2 and "unknown key 'sorce'" in result.stderr


def test_clear_cache_needs_one_target_and_confirmation(project, tmp_path):
    run("assets", "download")
    assert run("assets", "clear-cache").exit_code == 2
    assert run("assets", "clear-cache", "--asset", "w", "--all").exit_code == 2
    refused = run("assets", "clear-cache", "--asset", "w")  # no terminal to ask on
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert (tmp_path / "cache" / "model" / "w" / "latest").exists()

    assert run("assets", "clear-cache", "--asset", "w", "--yes").stdout.strip() == "w: removed"
    assert not (tmp_path / "cache" / "model" / "w" / "latest").exists()
    result = run("assets", "clear-cache", "--all", "--yes")
    assert result.exit_code == 0 and "removed 1 cache entries" in result.stdout
