"""The file service against hostile callers and a hostile store.

* another session probing every operation gets exactly the answer a missing file gets;
* names and documents dropped into the store by hand (index, expiry buckets, metadata) never stop a sweep;
* absurd settings are one ``ConfigurationError`` naming the ``FLOWMAS_`` variable or the YAML path;
* odd session ids, non-text arguments and bad URLs are precise errors that leave the store unchanged.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from flowmas.errors import (
    ConfigurationError,
    FileServiceNotFoundError,
    InvalidFileURLError,
    SessionMismatchError,
)
from flowmas.files import FileService
from flowmas.files.storage import new_key, session_ref
from flowmas.files.storage.base import EXPIRY_BUCKET_SECONDS, bucket_of, marker_name
from tests.files.test_storage_contract import Backend, _local, _memory, _s3


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "local", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "local":
        made = _local(tmp_path)
    elif request.param == "memory":
        made = _memory()
    else:
        made = _s3(request.getfixturevalue("s3_server"))
    yield made
    await made.manager.close()


def operations(fs: FileService, url: str, session: str, tmp: Path) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def stream() -> None:
        async for _ in fs.open_stream(url, session):
            pass

    return {
        "download_to_buffer": lambda: fs.download_to_buffer(url, session),
        "download_to_file": lambda: fs.download_to_file(url, tmp / "out.bin", session),
        "open_stream": stream,
        "get_metadata": lambda: fs.get_metadata(url, session),
        "delete": lambda: fs.delete(url, session),
        "delete_by_url": lambda: fs.delete_by_url(url, session),
        "extend_expiry": lambda: fs.extend_expiry(url, session, 60),
        "update_file_expiration": lambda: fs.update_file_expiration(url, time.time() + 60, session),
        "share": lambda: fs.share(url, session, 60),
        "resolve_url": lambda: fs.resolve_url(url, session),
        "get_file_block_by_url": lambda: fs.get_file_block_by_url(url, session),
    }


async def test_another_session_gets_exactly_the_missing_file_answer(backend: Backend, tmp_path: Path) -> None:
    fs = FileService(backend.manager)
    md = await fs.upload_from_buffer(b"secret", "plans.txt", "alice")
    probed: dict[str, str] = {}
    for name, call in operations(fs, md["url"], "mallory", tmp_path).items():
        with pytest.raises(FileServiceNotFoundError) as info:
            await call()
        probed[name] = str(info.value)
    assert await fs.download_to_buffer(md["url"], "alice") == b"secret"  # nothing changed
    assert (await fs.get_metadata(md["url"], "alice"))["expiration_timestamp"] == md["expiration_timestamp"]
    assert not (tmp_path / "out.bin").exists()
    await fs.delete(md["url"], "alice")
    for name, call in operations(fs, md["url"], "alice", tmp_path).items():
        with pytest.raises(FileServiceNotFoundError) as info:
            await call()
        assert str(info.value) == probed[name], name  # the owner of a deleted file hears the same sentence
    assert await fs.list_files("mallory") == []


async def test_hostile_names_in_the_index_never_stop_a_sweep(backend: Backend) -> None:
    if backend.name == "memory":
        pytest.skip("a memory store holds nothing it did not make")
    clock = Clock()
    fs = FileService(backend.manager, clock=clock)
    doomed = [await fs.upload_from_buffer(b"x" * i, f"d{i}.txt", "s", ttl=10) for i in range(3)]
    alive = await fs.upload_from_buffer(b"keep", "k.txt", "s", ttl=7200)
    bucket = bucket_of(clock.now + 10)
    key = new_key()
    for name in ("../../etc/passwd", "x.metadata", "README", f"{key}.metadata", f"{key}.{'z' * 32}",
                 f"{key}.{session_ref('s')}.extra", "\u202eevil\u202c", "a" * 200, "-rf", "%2e%2e"):
        backend.stray(f"expiry/{bucket}/{name}", b'{"expiration_timestamp": "never"}')
    for name in ("notes.txt", "999999999999x", "209901010000"):  # not a bucket; a bucket far in the future
        backend.stray(f"expiry/{name}", b"junk")
    backend.stray(f"expiry/{bucket}/sub/dir/file", b"")  # a directory where a marker should be
    backend.stray(f"sessions/{session_ref('s')}/not-a-key", b"")
    backend.stray("meta/zz/whatever.json", b"{")
    clock.now += 10 + 3 * EXPIRY_BUCKET_SECONDS
    report = await fs.expire()
    assert report.expired == 3 and report.errors == [], report.errors
    assert report.problems  # every stray is reported, none stopped the sweep
    for md in doomed:
        with pytest.raises(FileServiceNotFoundError):
            await fs.get_metadata(md["url"], "s")
    assert await fs.download_to_buffer(alive["url"], "s") == b"keep"
    assert [md["url"] for md in await fs.list_files("s")] == [alive["url"]]
    assert (await fs.expire()).errors == []  # and again: nothing left that trips it


async def test_junk_metadata_documents_are_not_files_and_are_swept(backend: Backend) -> None:
    clock = Clock()
    fs = FileService(backend.manager, clock=clock)
    good = await fs.upload_from_buffer(b"good", "g.txt", "s", ttl=10)
    ref = session_ref("s")
    junk = [b"", b"{", b"null", b"[]", b'{"format": 1}', b'{"format": 2, "key": "x"}', b"\xff\xfe\x00",
            b'{"format": 1, "key": "' + b"0" * 32 + b'", "size": -1}', b"[" * 100_000, os.urandom(2000)]
    keys = []
    for data in junk:
        key = new_key()
        keys.append(key)
        await backend.manager.index_expiry(key, ref, clock.now + 10)
        await backend.manager.write(key, _one(b"payload"))
        await backend.manager.write_metadata(key, data)
        with pytest.raises(FileServiceNotFoundError):
            await fs.download_to_buffer(f"amfs://{key}_g.txt", "s")
    assert [md["url"] for md in await fs.list_files("s")] == [good["url"]]
    clock.now += 10 + 3 * EXPIRY_BUCKET_SECONDS
    report = await fs.expire()
    assert report.errors == [] and report.expired == 1 and report.debris == len(junk)
    assert backend.leftovers() == []


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.mark.parametrize(("variable", "value"), [
    ("FLOWMAS_FILES_MAX_TIME_TO_LIVE", "1e308"), ("FLOWMAS_FILES_MAX_TIME_TO_LIVE", "-1"),
    ("FLOWMAS_FILES_MAX_FILE_BYTES", "lots"), ("FLOWMAS_FILES_MAX_SESSION_BYTES", "0"),
    ("FLOWMAS_FILES_EXPIRATION_CHECK_INTERVAL", "nan"), ("FLOWMAS_FILES_S3_PART_BYTES", "1"),
    ("FLOWMAS_FILES_SHARE_SECRET", "short"), ("FLOWMAS_FILES_UPLOAD_GRACE_SECONDS", "inf"),
])
def test_absurd_settings_name_their_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        FileService.from_config({})


@pytest.mark.parametrize(("config", "path"), [
    ({"max_time_to_live": 10**12}, "services.file_service.max_time_to_live"),
    ({"max_file_bytes": -1}, "services.file_service.max_file_bytes"),
    ({"type": "nosuch"}, "unknown storage type"),
    ({"type": "bucket"}, "config: {bucket: {bucket_name"),
    ({"maxx_time_to_live": 5}, "unknown key 'maxx_time_to_live'"),
    ({"default_ttl": 7200, "max_time_to_live": 60}, "default_ttl"),
    ({"config": {"volume": {"directory": 5}}}, "config.volume.directory"),
])
def test_absurd_config_names_its_path(config: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        FileService.from_config(config)
    assert path in str(info.value)


@pytest.mark.parametrize("options", [
    {"max_time_to_live": 0}, {"max_time_to_live": float("inf")}, {"max_file_bytes": 0},
    {"max_session_bytes": 1.5}, {"read_max_bytes": True}, {"upload_grace_seconds": -1}, {"share_secret": b"short"},
])
def test_absurd_constructor_arguments_are_refused(options: dict[str, Any]) -> None:
    from flowmas.files.storage import MemoryStorageManager

    with pytest.raises(ConfigurationError):
        FileService(MemoryStorageManager(), **options)


ODD_SESSIONS = ["\x00", "é", "e\u0301", " s ", "\u202e", "🙂", "a" * 1024, "\n\t x",
                "../../etc", "s" * 7 + "\x00"]


async def test_odd_session_ids_are_sessions_of_their_own(backend: Backend) -> None:
    fs = FileService(backend.manager)
    uploaded = {}
    for session in ODD_SESSIONS:
        uploaded[session] = await fs.upload_from_buffer(session, "f.txt", session)
    for session, md in uploaded.items():
        assert md["session_id"] == session
        assert [f["url"] for f in await fs.list_files(session)] == [md["url"]]
        assert await fs.download_to_buffer(md["url"], session) == session.encode()
        for other in ODD_SESSIONS:
            if other != session:
                with pytest.raises(FileServiceNotFoundError):
                    await fs.get_metadata(md["url"], other)


INVALID_SESSIONS: list[Any] = ["", "   ", "\n", None, b"bytes", 123, ["s"], "a" * 1025, "\udcff", "a\ud800b"]


async def test_invalid_session_ids_are_refused_and_store_nothing(backend: Backend) -> None:
    fs = FileService(backend.manager)
    md = await fs.upload_from_buffer(b"x", "f.txt", "owner")
    before = backend.leftovers()
    for session in INVALID_SESSIONS:
        calls = [fs.upload_from_buffer(b"x", "f.txt", session), fs.list_files(session),
                 fs.download_to_buffer(md["url"], session), fs.delete(md["url"], session),
                 fs.extend_expiry(md["url"], session, 60), fs.share(md["url"], session, 60)]
        for call in calls:
            with pytest.raises(SessionMismatchError, match="Invalid session id"):
                await call
    assert backend.leftovers() == before


@pytest.mark.parametrize("url", [None, 123, b"amfs://x", "", "http://example.com/f", "amfs://", "amfs://abc_f.txt",
                                 f"amfs://{'0' * 32}", f"amfs://{'0' * 32}_", f"amfs://{'0' * 32}_a%zz",
                                 f"amfs://{'0' * 32}_a b", f"amfs://{'0' * 32}_a#b", f"amfs://{'G' * 32}_a",
                                 f"amfs://{'0' * 32}_a?x=1&x=2", f"amfs://{'0' * 32}_a%00"])
async def test_bad_urls_are_precise_errors(url: Any) -> None:
    from flowmas.files.storage import MemoryStorageManager

    fs = FileService(MemoryStorageManager())
    for call in (fs.download_to_buffer(url, "s"), fs.get_metadata(url, "s"), fs.delete(url, "s"),
                 fs.extend_expiry(url, "s", 60), fs.share(url, "s", 60)):
        with pytest.raises(InvalidFileURLError):
            await call


async def test_bad_file_names_and_buffers_store_nothing(backend: Backend) -> None:
    fs = FileService(backend.manager)
    for name in (None, 5, b"f.txt", "", "a\x00b", "line\nbreak", "x" * 1025, "\udcff"):
        with pytest.raises(InvalidFileURLError):
            await fs.upload_from_buffer(b"x", name, "s")
    for buffer in (None, 5, ["x"], {"a": 1}):
        with pytest.raises(ConfigurationError):
            await fs.upload_from_buffer(buffer, "f.txt", "s")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        await fs.upload_from_stream([b"ok", "text is not bytes"], "f.txt", "s")  # type: ignore[list-item]
    assert backend.leftovers() == [] and await fs.list_files("s") == []


def test_sync_twins_refuse_to_deadlock_their_own_loop() -> None:
    from flowmas.files.storage import MemoryStorageManager

    fs = FileService(MemoryStorageManager())

    async def inside() -> None:
        fs.list_files_sync("s")

    with pytest.raises(RuntimeError, match="inside the service's own loop"):
        fs._run(inside())
    fs.close_sync()


async def test_many_concurrent_sessions_and_sweeps_keep_every_file_consistent(backend: Backend) -> None:
    clock = Clock()
    fs = FileService(backend.manager, clock=clock)
    count = 6 if backend.name == "s3" else 40
    made = await asyncio.gather(*(fs.upload_from_buffer(os.urandom(1000 + i), f"{i}.bin", f"s{i % 4}",
                                                        ttl=5 if i % 2 else 9000) for i in range(count)))
    sweeper = FileService(backend.another(), clock=lambda: clock.now + 5 + 3 * EXPIRY_BUCKET_SECONDS)
    reports = await asyncio.gather(*(sweeper.expire() for _ in range(3)))
    assert sum(r.expired for r in reports) == count // 2 and all(r.errors == [] for r in reports)
    for i, md in enumerate(made):
        if i % 2:
            with pytest.raises(FileServiceNotFoundError):
                await fs.get_metadata(md["url"], f"s{i % 4}")
        else:
            assert (await fs.get_metadata(md["url"], f"s{i % 4}"))["sha256"] == md["sha256"]
    assert marker_name(new_key(), session_ref("x"))  # the index names stay what the store makes
