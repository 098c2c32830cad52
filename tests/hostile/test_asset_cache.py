"""The cache is never fooled: names that collide, sources that change underneath, debris of killed runs,
races between hits and clears, full disks, secrets with odd bytes. Each test asserts the error a user
sees and the state the cache is left in.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from flowmas.assets.cache import FILES, RECORD, TOUCH_INTERVAL
from flowmas.errors import (
    AssetCacheError,
    AuthenticationError,
    ConfigurationError,
    DiskSpaceError,
    SourceChangedError,
)
from tests.servers.http_files import status

DATA = os.urandom(300_000)


def local(name: str, path: str, **extra: object) -> dict:
    return {"name": name, "source": {"type": "local", "path": path}, "progress_report": False, **extra}


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if ".locks" not in p.parts)


# --- debris of killed runs --------------------------------------------------------------------------


def debris(work: Path) -> list[Path]:
    """What a kill during unpack, replace or clear leaves in an entry's .work."""
    made = [work / "staging-0123456789ab" / "data" / "big.bin",
            work / "staging-0123456789ab" / ".data.unpack-0123456789abcdef0123456789abcdef" / "x.bin",
            work / "trash-ba9876543210" / "data" / "old.bin",
            work / "0badc0ffee00.part", work / "0badc0ffee00.part.json"]  # an older declaration's download
    for path in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
    return made


def test_the_next_operation_on_an_entry_sweeps_what_killed_runs_left(tmp_path, make_manager, cache_dir):
    (tmp_path / "w.bin").write_bytes(DATA)
    manager = make_manager([local("w", "w.bin")])
    work = manager.cache.work_dir(manager.asset("w"))
    debris(work)

    manager.download("w")

    assert not work.exists()
    assert files_under(cache_dir / "model/w") == ["latest", "latest/data", "latest/data/w.bin", "latest/record.json"]


def test_clear_cache_asset_removes_the_entry_and_all_its_leftovers(tmp_path, make_manager, cache_dir):
    (tmp_path / "w.bin").write_bytes(DATA)
    manager = make_manager([local("w", "w.bin")])
    manager.download("w")
    work = manager.cache.work_dir(manager.asset("w"))
    debris(work)
    (work / f"{manager.asset('w').identity_hash()[:12]}.part").write_bytes(b"current partial")

    assert manager.clear("w") is True
    assert files_under(cache_dir / "model/w") == []


def test_a_forced_download_starts_again_from_zero(http_server, make_manager):
    http_server.add("/m.bin", DATA)
    manager = make_manager([{"name": "m", "source": {"type": "http", "url": http_server.url_for("/m.bin")}}])
    part = manager.cache.part_path(manager.asset("m"))
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not be resumed")

    assert manager.download("m", force=True).path.read_bytes() == DATA
    assert http_server.requests_for("/m.bin")[0].range is None


# --- hits racing clears -----------------------------------------------------------------------------


def test_hits_that_refresh_last_use_never_fail_while_the_entry_is_cleared(tmp_path, make_manager):
    (tmp_path / "w.bin").write_bytes(DATA)
    manager = make_manager([local("w", "w.bin")])
    asset = manager.asset("w")
    stop = threading.Event()
    failures: list[BaseException] = []

    def hit() -> None:
        while not stop.is_set():
            record = manager.cache.entry_dir(asset) / RECORD
            try:
                old = time.time() - 2 * TOUCH_INTERVAL.total_seconds()
                os.utime(record, (old, old))  # every hit refreshes last use
            except FileNotFoundError:
                pass
            try:
                manager.cache.lookup(asset)
            except BaseException as exc:
                failures.append(exc)
                return

    manager.download("w")
    threads = [threading.Thread(target=hit) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(40):
            manager.clear("w")
            manager.download("w")
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert failures == []
    assert manager.status("w").status == "cached"
    assert not manager.cache.work_dir(asset).exists()  # no tmp files stranded by a touch


# --- names that collide with the record -------------------------------------------------------------


@pytest.mark.parametrize("member", [".asset_info.json", RECORD, FILES, ".asset_info.json/x", "record.json/x"])
def test_an_archive_member_named_like_the_record_is_just_content(tmp_path, make_manager, member):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr(member, b'{"name": "forged"}')
        archive.writestr("real.txt", b"real")
    manager = make_manager([local("a", "a.zip", unpack=True)])

    path = manager.download("a").path

    assert (path / member).read_bytes() == b'{"name": "forged"}'
    assert manager.status("a").status == "cached" and manager.verify("a").ok
    record = json.loads((manager.cache.entry_dir(manager.asset("a")) / RECORD).read_text())
    assert record["name"] == "a"


@pytest.mark.parametrize("name", [RECORD, ".asset_info.json", FILES])
def test_a_file_named_like_the_record_is_just_content(tmp_path, make_manager, http_server, name):
    (tmp_path / name).write_bytes(b"local content")
    http_server.add(f"/dir/{name}", b"remote content")
    manager = make_manager([local("l", name),
                            {"name": "h", "source": {"type": "http", "url": http_server.url_for(f"/dir/{name}")}}])

    assert manager.download("l").path.read_bytes() == b"local content"
    assert manager.download("h").path.read_bytes() == b"remote content"
    for asset in ("l", "h"):
        assert manager.status(asset).status == "cached" and manager.verify(asset).ok


# --- local sources that change or are not files -----------------------------------------------------


def test_a_local_file_rewritten_while_copied_is_never_published_torn(tmp_path, make_manager):
    source = tmp_path / "growing.bin"
    source.write_bytes(os.urandom(8 * 2**20))
    manager = make_manager([local("g", "growing.bin")])
    stop = threading.Event()

    def rewrite() -> None:
        with open(source, "r+b") as file:
            while not stop.is_set():
                file.seek(0)
                file.write(os.urandom(4096))
                file.flush()
                time.sleep(0.001)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        with pytest.raises(SourceChangedError, match="kept changing while it was copied"):
            manager.download("g")
    finally:
        stop.set()
        writer.join()
    assert manager.status("g").status == "not cached"
    assert not manager.cache.part_path(manager.asset("g")).exists()
    assert manager.download("g").path.read_bytes() == source.read_bytes()  # once it is quiet, it is copied


def test_a_local_directory_that_contains_the_cache_is_refused(tmp_path, make_manager, cache_dir):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.bin").write_bytes(b"m")
    manager = make_manager([local("everything", ".")])  # the project directory, which holds cache/

    with pytest.raises(ConfigurationError) as info:
        manager.download("everything")

    assert f"contains the asset cache ({cache_dir})" in str(info.value)
    assert manager.status("everything").status == "not cached"
    assert files_under(cache_dir / "model/everything") == []


def test_a_fifo_says_what_it_is_and_never_blocks(tmp_path, make_manager):
    os.mkfifo(tmp_path / "pipe")
    manager = make_manager([local("p", "pipe")])

    with pytest.raises(ConfigurationError, match=r"is a FIFO \(named pipe\), not a file or a directory"):
        manager.download("p")
    assert manager.status("p").status == "not cached"


def test_a_device_says_what_it_is(make_manager):
    manager = make_manager([local("z", "/dev/zero")])
    with pytest.raises(ConfigurationError, match="is a character device"):
        manager.download("z")


def test_a_directory_with_special_files_copies_the_regular_ones(tmp_path, make_manager, caplog):
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "a.bin").write_bytes(b"a")
    os.mkfifo(tmp_path / "idx" / "pipe")
    (tmp_path / "idx" / "link").symlink_to("/etc/passwd")
    manager = make_manager([local("idx", "idx")])

    path = manager.download("idx").path

    assert files_under(path) == ["a.bin"]
    assert "skipped links and special files: link, pipe" in caplog.text


# --- large archives keep hits small -----------------------------------------------------------------


def test_a_many_member_archive_keeps_the_record_small(tmp_path, make_manager):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for index in range(3_000):
            info = tarfile.TarInfo(f"shard/{index:05d}.txt")
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "many.tar").write_bytes(buffer.getvalue())
    manager = make_manager([local("many", "many.tar", unpack=True)])

    manager.download("many")

    entry = manager.cache.entry_dir(manager.asset("many"))
    assert (entry / RECORD).stat().st_size < 2048  # what every hit reads, whatever the archive holds
    assert json.loads((entry / RECORD).read_text())["file_count"] == 3_000
    assert len(json.loads((entry / FILES).read_text())) == 3_000  # read by verify only
    assert manager.verify("many").ok


# --- the cache itself -------------------------------------------------------------------------------


def test_a_cache_directory_that_is_a_file_is_one_sentence(tmp_path, make_manager, cache_dir):
    (tmp_path / "w.bin").write_bytes(b"w")
    cache_dir.write_text("I am a file")
    manager = make_manager([local("w", "w.bin")])

    with pytest.raises(AssetCacheError, match=r"is a file\. Move the file away, or point FLOWMAS_ASSETS_DIR"):
        manager.download("w")
    assert cache_dir.read_text() == "I am a file"


def test_a_full_disk_is_a_disk_space_error_and_keeps_what_was_written(small_fs, http_server, make_manager,
                                                                      tmp_path):
    small = small_fs(1024 * 1024)
    http_server.add("/big.bin", os.urandom(3 * 1024 * 1024))
    project = tmp_path / "flowmas.yaml"
    make_manager([{"name": "big", "source": {"type": "http", "url": http_server.url_for("/big.bin")}}])
    from flowmas import AssetManager, FlowmasSettings, load_project

    manager = AssetManager(load_project(project), settings=FlowmasSettings(), cache_dir=small / "cache")
    try:
        with pytest.raises(DiskSpaceError) as info:
            manager.download("big")
    finally:
        manager.close()

    assert "no space left on the device of the asset cache" in str(info.value)
    assert "FLOWMAS_ASSETS_DIR" in str(info.value) and isinstance(info.value, OSError)
    assert manager.status("big").status == "not cached"


# --- secrets with odd bytes -------------------------------------------------------------------------


@pytest.mark.parametrize("token, problem", [
    ("s3cr3t-value\n", "a line break (CR or LF) at position 13 of 13"),
    ("s3cr3t-value\r\n", "a line break (CR or LF) at position 13 of 14"),
    ("s3cr3t\x1bvalue", "a control character at position 7"),
    ("s3cr3t-välue", "a non-ASCII character at position 9"),
    (" s3cr3t-value", "leading or trailing whitespace at position 1"),
])
def test_a_token_with_odd_bytes_is_refused_naming_the_variable_never_the_value(
    http_server, make_manager, monkeypatch, caplog, token, problem
):
    monkeypatch.setenv("MODEL_TOKEN", token)
    http_server.add("/m.bin", DATA)
    manager = make_manager([{"name": "m", "source": {"type": "http", "url": http_server.url_for("/m.bin")},
                             "authentication": {"http": {"token_env_var": "MODEL_TOKEN"}}}])

    with pytest.raises(AuthenticationError) as info:
        manager.download("m")

    assert f"the token in $MODEL_TOKEN has {problem}" in str(info.value)
    assert "s3cr3t" not in str(info.value) and "s3cr3t" not in caplog.text
    assert http_server.requests_for("/m.bin") == []  # nothing was sent


def test_a_hub_token_with_a_line_break_is_refused_before_any_request(make_manager, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abc\r\n")
    manager = make_manager([{"name": "m", "source": {"type": "hf", "repo_id": "a/b", "filename": "m.onnx"},
                             "authentication": {"strategy": "env_token"}}])
    with pytest.raises(AuthenticationError, match=r"\$HUGGING_FACE_HUB_TOKEN|\$HF_TOKEN"):
        manager.download("m")


def test_an_error_page_never_becomes_the_asset(http_server, make_manager):
    http_server.script("/m.bin", status(500, body=b"<html>Internal Server Error</html>"))
    manager = make_manager([{"name": "m", "source": {"type": "http", "url": http_server.url_for("/m.bin")}}])
    with pytest.raises(Exception, match="500"):
        manager.download("m")
    assert manager.status("m").status == "not cached"
