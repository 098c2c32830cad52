"""Hostile input to the file service's faces: the Files agent over real HTTP, and ``flowmas files`` with odd names.

The container (the core's ``Container``, the Files agent over a real volume store, the face's app with a 64 KiB
body limit) is served by uvicorn on 127.0.0.1. Every hostile answer must be an ErrorResponse with a 4xx status
and a short sentence, never a 5xx; after each test nothing may have been written outside the store, and a
refused upload must leave nothing in it.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from agents_api import ApiSettings, BackgroundServer, create_app
from agents_api.errors import MAX_MESSAGE
from agents_api.files import FilesAgent
from flowmas.cli import app
from flowmas.files import FileService
from flowmas.files.storage import LocalStorageManager
from flowmas.opaca import Container
from tests.agents_api import assert_error

LIMIT = 64 * 1024


class Target:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = FileService(LocalStorageManager(root / "store"), max_file_bytes=8 * 1024, read_max_bytes=4096)
        self.container = Container({"imageName": "flowmas/files-hostile", "name": "files-hostile"},
                                   environ={"CONTAINER_ID": "files-hostile"})
        FilesAgent(files=self.files, container=self.container)
        self.server = BackgroundServer(create_app(self.container, settings=ApiSettings(max_body_bytes=LIMIT),
                                                  platform=False))

    def stored(self) -> list[Path]:
        """Every file of the store but its secret and its lock files: data, metadata, index markers, temporaries."""
        store = self.root / "store"
        return sorted(p for p in store.rglob("*") if p.is_file() and p.name != "secret"
                      and not p.is_relative_to(store / "locks"))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    target = Target(tmp_path_factory.mktemp("files-hostile"))
    with target.server:
        yield target
    target.container.close()


@pytest.fixture
def http(target: Target) -> Iterator[httpx.Client]:
    before = sorted(p for p in target.root.rglob("*") if not p.is_relative_to(target.root / "store"))
    with httpx.Client(base_url=target.server.url, timeout=30) as client:
        yield client
    after = sorted(p for p in target.root.rglob("*") if not p.is_relative_to(target.root / "store"))
    assert after == before, "something was written outside the store"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_an_upload_over_the_body_limit_is_413_and_stores_nothing(target: Target, http: httpx.Client) -> None:
    before = target.stored()
    body = {"content": b64(os.urandom(LIMIT)), "fileName": "huge.bin", "sessionId": "s"}

    answer = http.post("/invoke/UploadFile", json=body)

    assert_error(answer, 413, contains="FLOWMAS_API_MAX_BODY_BYTES")
    assert target.stored() == before
    assert http.post("/invoke/ListFiles", json={"sessionId": "s"}).json() == []


def test_an_upload_over_the_files_limit_is_413_and_stores_nothing(target: Target, http: httpx.Client) -> None:
    before = target.stored()
    answer = http.post("/invoke/UploadFile", json={"content": b64(b"x" * (9 * 1024)), "fileName": "big.bin",
                                                   "sessionId": "limit"})
    assert_error(answer, 413)
    assert target.stored() == before
    assert http.post("/invoke/ListFiles", json={"sessionId": "limit"}).json() == []


@pytest.mark.parametrize("body", [
    {"content": 12, "fileName": "x", "sessionId": "s"},
    {"content": ["QUJD"], "fileName": "x", "sessionId": "s"},
    {"content": None, "fileName": "x", "sessionId": "s"},
    {"content": "QUJD", "fileName": {"a": 1}, "sessionId": "s"},
    {"content": "QUJD", "fileName": "x", "sessionId": ["s"]},
    {"content": "QUJD", "fileName": "x", "sessionId": "s", "ttl": "forever"},
    {"content": "QUJD", "fileName": "x", "sessionId": "s", "ttl": True},
    {"content": "QUJD", "fileName": "x", "sessionId": "s", "ttl": 0},
    {"content": "QUJD", "fileName": "x", "sessionId": "s", "extra": 1},
    {"content": "QU\u00e9JD", "fileName": "x", "sessionId": "s"},
    {"content": "QUJD\x00", "fileName": "x", "sessionId": "s"},
    {"content": "QUJD", "fileName": "x" * 5000, "sessionId": "s"},
    {"content": "QUJD", "fileName": "a\u0000b", "sessionId": "s"},
    {"content": "QUJD", "fileName": "x", "sessionId": "s" * 2000},
    {"content": "QUJD", "fileName": "x", "sessionId": "   "},
])
def test_hostile_upload_arguments_are_4xx_and_store_nothing(target: Target, http: httpx.Client,
                                                            body: dict[str, Any]) -> None:
    before = target.stored()
    answer = http.post("/invoke/UploadFile", json=body)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    assert len(assert_error(answer, answer.status_code)["message"]) <= MAX_MESSAGE
    assert target.stored() == before


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", "/abs/path.txt", "a#b.txt", "data[1].csv",
                                  "evil\" injected=\"1.txt", "résumé 📄.pdf", "%2e%2e%2f.txt", "x?share=1.2",
                                  "\u202egnp.exe", "CON", "-rf"])
def test_hostile_names_round_trip_and_never_become_paths(target: Target, http: httpx.Client, name: str) -> None:
    data = name.encode() + b"\x00\xff"
    answer = http.post("/invoke/UploadFile", json={"content": b64(data), "fileName": name, "sessionId": "names"})
    assert answer.status_code == 200, answer.text
    metadata = answer.json()
    assert metadata["filename"] == name
    read = http.post("/invoke/ReadFile", json={"url": metadata["url"], "sessionId": "names"}).json()
    assert read["encoding"] == "base64" and base64.b64decode(read["content"]) == data
    assert all(name not in p.name for p in target.stored() if name not in ("CON", "-rf"))


@pytest.mark.parametrize("body", [
    {"url": "amfs://" + "z" * 100_000, "sessionId": "s"},
    {"url": "amfs://" + "a" * 32 + "_x?head=1&head=2", "sessionId": "s"},
    {"url": "amfs://" + "a" * 32 + "_x?jsonpath=" + "[" * 5000, "sessionId": "s"},
    {"url": "file:///etc/passwd", "sessionId": "s"},
    {"url": "amfs://../../etc/passwd_x", "sessionId": "s"},
    {"url": "amfs://" + "a" * 32 + "_x", "sessionId": "s", "maxBytes": -1},
    {"url": "amfs://" + "a" * 32 + "_x", "sessionId": "s", "maxBytes": 1.5},
    {"url": "amfs://" + "a" * 32 + "_x", "sessionId": "s", "maxBytes": True},
    {"url": 7, "sessionId": "s"},
])
def test_hostile_read_arguments_are_short_4xx_sentences(http: httpx.Client, body: dict[str, Any]) -> None:
    answer = http.post("/invoke/ReadFile", json=body)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    assert len(assert_error(answer, answer.status_code)["message"]) <= MAX_MESSAGE


def test_a_share_url_does_not_open_another_file_or_allow_changes(http: httpx.Client) -> None:
    first = http.post("/invoke/UploadFile", json={"content": b64(b"one"), "fileName": "one.txt",
                                                  "sessionId": "owner"}).json()["url"]
    second = http.post("/invoke/UploadFile", json={"content": b64(b"two"), "fileName": "two.txt",
                                                   "sessionId": "owner"}).json()["url"]
    shared = http.post("/invoke/ShareFile", json={"url": first, "sessionId": "owner", "ttl": 60}).json()
    token = shared.split("?", 1)[1]

    grafted = http.post("/invoke/ReadFile", json={"url": f"{second}?{token}", "sessionId": "thief"})
    assert grafted.status_code in (403, 404), grafted.text
    assert_error(http.post("/invoke/DeleteFile", json={"url": shared, "sessionId": "thief"}), 404)
    assert_error(http.post("/invoke/ShareFile", json={"url": shared, "sessionId": "thief", "ttl": 60}), 404)
    assert http.post("/invoke/ReadFile", json={"url": first, "sessionId": "owner"}).json()["content"] == "one"


# --- the CLI with odd names -----------------------------------------------------------------------------


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLOWMAS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLOWMAS_PROJECT", raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "work"


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("name", ["with space.txt", "hash#tag.txt", "q?x=1.txt", "pct%41.txt", "[1].csv",
                                  "quote\"'.txt", "ünï ©ødé 📄.txt", "-leading-dash.txt", "--json",
                                  "x" * 250, "\u202ertl.txt", "[bold]markup[not a tag.txt"])
def test_odd_names_upload_and_download_byte_exact(cli_home: Path, name: str) -> None:
    data = b"odd\r\n\x00" + name.encode()
    (cli_home / name).write_bytes(data)

    uploaded = run("files", "upload", "--session", "s", "--json", "--", name)

    assert uploaded.exit_code == 0, uploaded.output
    metadata = json.loads(uploaded.stdout)
    assert metadata["filename"] == name
    assert run("files", "download", metadata["url"], "--session", "s").stdout_bytes == data
    info = run("files", "info", metadata["url"], "--session", "s")
    assert info.exit_code == 0 and "Traceback" not in info.output
    listed = run("files", "ls", "--session", "s")
    assert listed.exit_code == 0 and "\u202e" not in listed.stdout  # control-like characters are escaped


@pytest.mark.parametrize("name", ["new\nline.txt", "tab\there.txt", "esc\x1b[31m.txt", "bell\x07.txt"])
def test_names_with_control_characters_are_refused_with_a_sentence(cli_home: Path, name: str) -> None:
    (cli_home / name).write_bytes(b"x")
    result = run("files", "upload", "--session", "s", "--", name)
    assert result.exit_code == 2, result.output
    assert "control character" in result.stderr and "Traceback" not in result.output
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr  # never echoed raw to a terminal
