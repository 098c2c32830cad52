"""``flowmas files``: every command, its output, its exit code and its error sentences, on a real volume store.

The store is ``$FLOWMAS_HOME/files`` (the default) under the test's directory; files that must have expired are
uploaded by a ``FileService`` on the same store whose clock runs two hours behind (the real service, told the
time differently), so a sweep with the real clock finds them expired without waiting.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flowmas.cli import app
from flowmas.files import FileService
from flowmas.settings import FlowmasSettings

BINARY = bytes(range(256)) * 64 + b"\r\n\x00tail\n\r"
CSV = b"city,population\nBerlin,3850809\nHamburg,1892122\n"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No project file (an empty directory as cwd), flowmas's home in the test's directory."""
    monkeypatch.setenv("FLOWMAS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLOWMAS_PROJECT", raising=False)
    for name in [name for name in os.environ if name.startswith("FLOWMAS_FILES_")]:
        monkeypatch.delenv(name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path / "home"


def run(*args: str, stdin: bytes | str | None = None) -> Any:
    return CliRunner().invoke(app, list(args), input=stdin)


def upload(path: Path, session: str = "s1", *extra: str) -> str:
    result = run("files", "upload", str(path), "--session", session, *extra)
    assert result.exit_code == 0, result.output
    return str(result.stdout.strip())


def past_upload(data: bytes, name: str, session: str, ttl: float = 60) -> str:
    """Upload through the same store with a clock two hours behind: the file expired long ago."""
    service = FileService.from_config(settings=FlowmasSettings(), clock=lambda: time.time() - 7200)
    with service:
        url: str = service.upload_from_buffer_sync(data, name, session, ttl=ttl)["url"]
    return url


def test_upload_info_ls_download_round_trip(home: Path, tmp_path: Path) -> None:
    (tmp_path / "cities.csv").write_bytes(CSV)
    url = upload(tmp_path / "cities.csv", "s1", "--ttl", "600")
    assert url.startswith("amfs://") and url.endswith("_cities.csv")
    assert (home / "files").is_dir()  # the default store: $FLOWMAS_HOME/files

    info = run("files", "info", url, "--session", "s1")
    assert info.exit_code == 0, info.output
    assert "name: cities.csv" in info.stdout and "mime_type: text/csv" in info.stdout
    assert "shape: 2 rows x 2 columns" in info.stdout and "schema-yaml:" in info.stdout

    metadata = json.loads(run("files", "info", url, "--session", "s1", "--json").stdout)
    assert metadata["url"] == url and metadata["size"] == len(CSV) and metadata["session_id"] == "s1"
    assert 590 < metadata["expiration_timestamp"] - metadata["upload_timestamp"] <= 600

    listed = json.loads(run("files", "ls", "--session", "s1", "--json").stdout)
    assert [md["url"] for md in listed] == [url]
    table = run("files", "ls", "--session", "s1")
    assert table.exit_code == 0 and "cities.csv" in table.stdout
    assert run("files", "ls", "--session", "other").stdout.strip() == "No files in this session."
    assert json.loads(run("files", "ls", "--session", "other", "--json").stdout) == []

    assert run("files", "download", url, "--session", "s1").stdout_bytes == CSV


def test_download_applies_the_urls_params(home: Path, tmp_path: Path) -> None:
    pytest.importorskip("flowmas.files.params")
    (tmp_path / "cities.csv").write_bytes(CSV)
    url = upload(tmp_path / "cities.csv")

    head = run("files", "download", f"{url}?head=1", "--session", "s1")

    assert head.exit_code == 0, head.output
    assert head.stdout_bytes.splitlines()[0] == b"city,population" and b"Hamburg" not in head.stdout_bytes


def test_download_to_stdout_is_byte_exact_and_to_a_file_with_o(home: Path, tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(BINARY)
    url = upload(tmp_path / "blob.bin")

    assert run("files", "download", url, "--session", "s1").stdout_bytes == BINARY

    result = run("files", "download", url, "--session", "s1", "-o", str(tmp_path / "copy.bin"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "copy.bin").read_bytes() == BINARY and "copy.bin" in result.stdout


def test_upload_from_stdin_with_a_name_and_json(home: Path) -> None:
    result = run("files", "upload", "-", "--session", "s1", "--name", "notes.txt", "--json",
                 "--data-source", "cli test", stdin=b"hello\n")
    assert result.exit_code == 0, result.output
    metadata = json.loads(result.stdout)
    assert metadata["filename"] == "notes.txt" and metadata["data_source"] == "cli test"
    assert run("files", "download", metadata["url"], "--session", "s1").stdout_bytes == b"hello\n"

    nameless = run("files", "upload", "-", "--session", "s1", stdin=b"x")
    assert nameless.exit_code == 2 and "needs --name" in nameless.stderr


def test_another_session_gets_the_not_found_sentence_exit_1(home: Path, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"secret")
    url = upload(tmp_path / "a.txt", "owner")
    missing = url.replace(url[7:15], "00000000")

    answers = [run("files", command, target, "--session", session)
               for command in ("info", "download", "rm") for target, session in ((url, "intruder"),
                                                                                 (missing, "owner"))]

    for result in answers:
        assert result.exit_code == 1, result.output
        assert "in this session: it does not exist, was deleted, or belongs to another session" in result.stderr
        assert "Traceback" not in result.output and result.stdout_bytes == b""
    assert run("files", "download", url, "--session", "owner").stdout_bytes == b"secret"  # nothing was deleted


def test_share_gives_a_url_another_session_may_read(home: Path, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"shared")
    url = upload(tmp_path / "a.txt", "owner")

    shared = run("files", "share", url, "--session", "owner", "--ttl", "60")

    assert shared.exit_code == 0, shared.output
    link = shared.stdout.strip()
    assert "?share=" in link
    assert run("files", "download", link, "--session", "someone-else").stdout_bytes == b"shared"
    assert run("files", "rm", link, "--session", "someone-else").exit_code == 1  # reading only
    forged = run("files", "download", link[:-3] + "AAA", "--session", "someone-else")
    assert forged.exit_code == 1 and forged.stderr.startswith("error: ") and "Traceback" not in forged.output
    assert run("files", "share", url, "--session", "owner").exit_code == 2  # --ttl is required


def test_rm_deletes_and_a_second_rm_is_not_found(home: Path, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"x")
    url = upload(tmp_path / "a.txt")

    removed = run("files", "rm", url, "--session", "s1")
    assert removed.exit_code == 0 and removed.stdout.startswith("deleted ")
    again = run("files", "rm", url, "--session", "s1")
    assert again.exit_code == 1 and "does not exist" in again.stderr
    assert json.loads(run("files", "ls", "--session", "s1", "--json").stdout) == []


def test_expire_sweeps_what_expired_and_keeps_the_rest(home: Path, tmp_path: Path) -> None:
    old = past_upload(b"old bytes", "old.txt", "s1")
    (tmp_path / "fresh.txt").write_bytes(b"fresh")
    fresh = upload(tmp_path / "fresh.txt")
    gone = run("files", "info", old, "--session", "s1")
    assert gone.exit_code == 1 and "expired at" in gone.stderr  # readers stop seeing it before any sweep

    result = run("files", "expire")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("expire: 1 expired file(s) deleted (9 B)")
    assert [md["url"] for md in json.loads(run("files", "ls", "--session", "s1", "--json").stdout)] == [fresh]
    assert run("files", "expire").stdout.startswith("expire: 0 expired file(s) deleted")
    assert run("files", "expire", "--limit", "0").exit_code == 2


@pytest.mark.parametrize(("args", "code", "words"), [
    (["files", "info", "not-a-url", "--session", "s1"], 2, "error: "),
    (["files", "download", "amfs://zz", "--session", "s1"], 2, "has no '_' after its signature"),
    (["files", "upload", "missing.txt", "--session", "s1"], 2, "missing.txt does not exist"),
    (["files", "upload", ".", "--session", "s1"], 2, "is a directory"),
    (["files", "upload", "x.txt"], 2, "--session"),
    (["files", "ls", "--session", "   "], 1, "Invalid session id: it is empty."),
    (["files", "upload", "x.txt", "--session", "s1", "--ttl", "-5"], 2, "0.001"),
])
def test_usage_errors_are_sentences_with_their_exit_codes(home: Path, args: list[str], code: int,
                                                          words: str) -> None:
    Path("x.txt").write_bytes(b"x")
    result = run(*args)
    assert result.exit_code == code, result.output
    assert words in result.stderr and "Traceback" not in result.output


def test_a_bad_storage_setting_exits_2_naming_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWMAS_FILES_STORAGE", "nosuch")
    result = run("files", "ls", "--session", "s1")
    assert result.exit_code == 2 and "nosuch" in result.stderr and "Traceback" not in result.output


def test_the_project_file_configures_the_store(home: Path, tmp_path: Path) -> None:
    project = tmp_path / "proj" / "flowmas.yaml"
    project.parent.mkdir()
    project.write_text("name: p\nservices:\n  file_service:\n    type: volume\n    max_time_to_live: 100\n"
                       "    config: {volume: {directory: store}}\n")
    (tmp_path / "a.txt").write_bytes(b"x")

    url = upload(tmp_path / "a.txt", "s1", "--project", str(project), "--ttl", "5000")

    metadata = json.loads(run("files", "info", url, "--session", "s1", "--json", "--project", str(project)).stdout)
    assert metadata["expiration_timestamp"] - metadata["upload_timestamp"] == pytest.approx(100)  # capped
    assert (tmp_path / "proj/store").is_dir() and not (home / "files").exists()
