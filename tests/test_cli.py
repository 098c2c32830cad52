"""The ``flowmas`` command: output on stdout, logs and errors on stderr, exit codes 0 / 1 / 2 / 3."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import flowmas
from flowmas.cli import app

REPO = Path(__file__).resolve().parents[1]


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


def run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, list(args), input=stdin)


def test_download_all_then_list_json(project):
    result = run("assets", "download")
    assert result.exit_code == 0, result.output
    assert "w: " in result.stdout and "(fetched 7 B in " in result.stdout  # small sizes in B, not "0.0 MiB"
    assert "Fetched w" in result.stderr  # logs go to stderr

    again = run("assets", "download", "w")
    assert again.exit_code == 0 and "(cached)" in again.stdout

    listed = json.loads(run("assets", "list", "--json").stdout)
    assert [(row["name"], row["status"]) for row in listed] == [("w", "cached"), ("t", "cached")]
    assert listed[0]["checksum"].startswith("sha256:")


def test_list_table_does_not_download(project, tmp_path):
    result = run("assets", "list")
    assert result.exit_code == 0 and "not cached" in result.stdout and "not_cached" not in result.stdout
    assert not (tmp_path / "cache" / "model").exists()


def test_verify_detects_tampering_with_exit_1(project, tmp_path):
    run("assets", "download")
    assert run("assets", "verify").exit_code == 0
    (tmp_path / "cache" / "model" / "w" / "latest" / "data" / "w.bin").write_bytes(b"evil")
    result = run("assets", "verify", "w")
    assert result.exit_code == 1 and "w: failed" in result.stdout


def test_verify_of_an_uncached_named_asset_fails(project):
    result = run("assets", "verify", "w")
    assert result.exit_code == 1 and "w: not cached" in result.stdout


def test_failed_download_exits_1_and_still_reports_the_others(project, tmp_path):
    (tmp_path / "w.bin").write_bytes(b"changed")  # no longer matches the checksum
    result = run("assets", "download")
    assert result.exit_code == 1
    assert "failed w: sha256 mismatch" in result.stderr
    assert "t: " in result.stdout and "(fetched 8 B" in result.stdout


def test_a_configuration_error_of_one_asset_exits_2_after_reporting_every_asset(project, tmp_path, monkeypatch):
    text = yaml.safe_load(project.read_text())
    text["assets"].append({"name": "secret", "source": {"type": "http", "url": "http://127.0.0.1:9/s.bin"},
                           "authentication": {"strategy": "prefect_secret", "block": "nope"}})
    project.write_text(yaml.safe_dump(text))
    monkeypatch.setattr("flowmas.assets.auth.installed_secret_resolver", lambda: None)  # no Prefect installed

    result = run("assets", "download")

    assert result.exit_code == 2
    assert "failed secret: Asset 'secret' uses strategy 'prefect_secret' but no secret resolver" in result.stderr
    assert "w: " in result.stdout and "t: " in result.stdout


def test_unknown_asset_and_bad_configuration_exit_2(project):
    result = run("assets", "download", "nope")
    assert result.exit_code == 2 and "Unknown asset 'nope'" in result.stderr
    typo = run("assets", "download", "ww")
    assert typo.exit_code == 2 and "Did you mean 'w'?" in typo.stderr
    project.write_text("name: cli\nassets: [{name: x, sorce: {}}]\n")
    result = run("assets", "list")
    assert result.exit_code == 2 and "unknown key 'sorce' (did you mean 'source'?)" in result.stderr


def test_clear_cache_needs_one_target_and_confirmation(project, tmp_path):
    run("assets", "download")
    assert run("assets", "clear-cache").exit_code == 2
    assert run("assets", "clear-cache", "--asset", "w", "--all").exit_code == 2
    refused = run("assets", "clear-cache", "--asset", "w")  # no terminal to ask on
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert (tmp_path / "cache" / "model" / "w" / "latest").exists()

    assert run("assets", "clear-cache", "--asset", "w", "--yes").stdout.strip() == "w: removed"
    assert not (tmp_path / "cache" / "model" / "w" / "latest").exists()
    again = run("assets", "clear-cache", "--asset", "w", "--yes")
    assert again.stdout.strip() == "w: not cached (nothing to remove)"
    result = run("assets", "clear-cache", "--all", "--yes")
    assert result.exit_code == 0 and "removed 1 cache entries" in result.stdout


def test_version_help_and_verbose_anywhere(project):
    assert run("--version").stdout.strip() == f"flowmas {flowmas.__version__}"
    assert run("-h").exit_code == 0 and "assets" in run("-h").stdout
    assert run("assets", "download", "-h").exit_code == 0
    verbose = run("assets", "download", "w", "-v")  # after the subcommand, as people type it
    assert verbose.exit_code == 0 and "Fetched w" in verbose.stderr


def test_verbose_shows_the_traceback_of_an_unexpected_error_only_on_request(project, tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache should be")
    quiet = run("assets", "download", "w")
    assert quiet.exit_code == 1 and "is a file. Move the file away" in quiet.stderr
    assert "Traceback" not in quiet.output


# --- real processes: what a user's terminal shows ---------------------------------------------------


def flowmas_cli(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowmas.cli", *args], cwd=REPO, input=stdin, text=True,
                          capture_output=True, timeout=120, env={**os.environ, **(env or {})}, check=False)


def test_a_declined_prompt_exits_3_and_changes_nothing(project, tmp_path):
    run("assets", "download")
    script = ("import pty, sys, os\n"
              "pid, fd = pty.fork()\n"
              "if pid == 0:\n"
              "    os.execv(sys.executable, [sys.executable, '-m', 'flowmas.cli', 'assets', 'clear-cache', '--all'])\n"
              "os.write(fd, b'n\\n')\n"
              "out = b''\n"
              "while True:\n"
              "    try:\n"
              "        chunk = os.read(fd, 1024)\n"
              "    except OSError:\n"
              "        break\n"
              "    if not chunk:\n"
              "        break\n"
              "    out += chunk\n"
              "_, status = os.waitpid(pid, 0)\n"
              "print(os.waitstatus_to_exitcode(status)); print(out.decode())\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    code, _, output = done.stdout.partition("\n")
    assert code == "3", done.stdout + done.stderr
    assert "Nothing removed." in output
    assert (tmp_path / "cache" / "model" / "w" / "latest").exists()


@pytest.mark.parametrize("args, env, words", [
    (["assets", "list"], {"FLOWMAS_UNPACK_MAX_BYTES": "lots"}, "FLOWMAS_UNPACK_MAX_BYTES (got 'lots')"),
    (["assets", "list"], {"FLOWMAS_HTTP_READ_TIMEOUT": "1e308"}, "FLOWMAS_HTTP_READ_TIMEOUT"),
    (["up", "--port", "99999"], {}, "less than or equal to 65535"),
])
def test_absurd_settings_exit_2_with_a_sentence(project, args, env, words):
    done = flowmas_cli(*args, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr + done.stdout
