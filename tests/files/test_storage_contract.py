"""The one contract every ``StorageManager`` keeps, run against each: local, memory, and S3 (moto's server on
127.0.0.1 behind real boto3).

Each test names the promise it checks; ``leftovers()`` is everything a backend holds besides its secret
and lock stripes (for S3: every object and every pending multipart upload), so "nothing left behind" is
checked against the backend itself, not against the manager's own view.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flowmas.errors import FileServiceNotFoundError, FileStorageError, FileTooLargeError, InvalidFileURLError
from flowmas.files.storage import (
    LocalStorageManager,
    MemoryStorageManager,
    MemoryStore,
    S3StorageManager,
    StorageManager,
    new_key,
    session_ref,
)
from flowmas.files.storage.base import EXPIRY_BUCKET_SECONDS, bucket_of, marker_name
from tests.servers.s3 import S3Server

MiB = 2**20
BUCKET = "flowmas-files"
NOW = 1_900_000_000.0  # a fixed "now": expiry is tested with explicit instants, never the wall clock


@dataclass
class Backend:
    name: str
    manager: Any
    another: Callable[[], Any]
    """A second manager over the same store (another process's view)."""
    leftovers: Callable[[], list[str]]
    stray: Callable[[str, bytes], None]
    """Put a file the store did not make at a store-relative path (garbage for the sweep)."""
    extra: dict[str, Any] = field(default_factory=dict)


def _local(tmp_path: Path) -> Backend:
    root = tmp_path / "store"

    def leftovers() -> list[str]:
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and p.parts[len(root.parts)] not in ("locks",) and p.name != "secret")

    def stray(relative: str, data: bytes) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return Backend("local", LocalStorageManager(root), lambda: LocalStorageManager(root), leftovers, stray,
                   {"root": root})


def _memory() -> Backend:
    store = MemoryStore()

    def leftovers() -> list[str]:
        return sorted([f"objects/{k}" for k in store.objects] + [f"meta/{k}" for k in store.meta]
                      + [f"expiry/{b}/{m[0]}" for b, ms in store.expiry.items() for m in ms]
                      + [f"sessions/{s}/{k}" for s, ks in store.sessions.items() for k in ks])

    def stray(relative: str, data: bytes) -> None:
        pytest.skip("a memory store holds nothing it did not make")

    return Backend("memory", MemoryStorageManager(store), lambda: MemoryStorageManager(store), leftovers, stray,
                   {"store": store})


def _s3(server: S3Server) -> Backend:
    client = server.client()
    client.create_bucket(Bucket=BUCKET)

    def make() -> S3StorageManager:
        return S3StorageManager(BUCKET, prefix="store", part_size=5 * MiB, **server.manager_options())

    def leftovers() -> list[str]:
        keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                for item in page.get("Contents", [])]
        uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        return sorted([k.removeprefix("store/") for k in keys if k != "store/secret"]
                      + [f"multipart upload of {u['Key']}" for u in uploads])

    def stray(relative: str, data: bytes) -> None:
        client.put_object(Bucket=BUCKET, Key=f"store/{relative}", Body=data)

    return Backend("s3", make(), make, leftovers, stray, {"client": client})


@pytest.fixture(params=["local", "memory", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "local":
        made = _local(tmp_path)
    elif request.param == "memory":
        made = _memory()
    else:
        made = _s3(request.getfixturevalue("s3_server"))
    yield made
    await made.manager.close()


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for position in range(0, len(data), size):
        yield data[position:position + size]
        await asyncio.sleep(0)


async def read_all(manager: StorageManager, key: str, **kwargs: Any) -> bytes:
    return b"".join([chunk async for chunk in manager.read(key, **kwargs)])


# --- data ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 65_536, 65_537, 3 * MiB + 5])
async def test_write_then_read_whole_and_ranged(backend: Backend, size: int) -> None:
    data = os.urandom(size)
    key = new_key()
    assert await backend.manager.write(key, chunks_of(data)) == size
    assert await read_all(backend.manager, key) == data
    assert await read_all(backend.another(), key) == data  # another process sees the same object
    for start, end in [(0, 0), (5, 9), (1, None), (size - 1, None), (size // 2, size + 100), (size, None),
                       (size + 10, size + 20)]:
        if start < 0:
            continue
        expected = data[start:(end + 1) if end is not None else None]
        assert await read_all(backend.manager, key, start=start, end=end) == expected, (start, end)


async def test_reads_stream_in_chunks_not_one_buffer(backend: Backend) -> None:
    data = os.urandom(3 * MiB)
    key = new_key()
    await backend.manager.write(key, chunks_of(data, MiB))
    pieces = [len(chunk) async for chunk in backend.manager.read(key)]
    assert sum(pieces) == len(data) and max(pieces) <= 2 * MiB and len(pieces) >= 2


async def test_reading_a_missing_object_is_not_found(backend: Backend) -> None:
    with pytest.raises(FileServiceNotFoundError):
        await read_all(backend.manager, new_key())


async def test_a_write_is_refused_past_max_bytes_and_leaves_nothing(backend: Backend) -> None:
    key = new_key()
    with pytest.raises(FileTooLargeError, match="larger than the limit of 100,000 bytes"):
        await backend.manager.write(key, chunks_of(os.urandom(300_000), 30_000), max_bytes=100_000)
    assert backend.leftovers() == []
    assert await backend.manager.write(key, chunks_of(b"x" * 100_000), max_bytes=100_000) == 100_000


async def test_a_source_that_raises_midway_leaves_nothing(backend: Backend) -> None:
    """On S3 the source fails after a part went up: the multipart upload must be aborted, not left pending."""

    async def failing() -> AsyncIterator[bytes]:
        yield os.urandom(6 * MiB)  # more than one S3 part: a multipart upload is under way
        yield os.urandom(MiB)
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await backend.manager.write(new_key(), failing())
    assert backend.leftovers() == []


async def test_a_cancelled_write_leaves_nothing(backend: Backend) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield os.urandom(6 * MiB)
        yield os.urandom(5 * MiB)  # the first S3 part is uploaded while this one fills
        started.set()
        await asyncio.Event().wait()  # never
        yield b""

    task = asyncio.create_task(backend.manager.write(new_key(), stalls()))
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.leftovers() == []


async def test_large_objects_round_trip_in_parts(backend: Backend) -> None:
    data = os.urandom(12 * MiB + 321)
    key = new_key()
    assert await backend.manager.write(key, chunks_of(data, MiB)) == len(data)
    assert hashlib.sha256(await read_all(backend.manager, key)).digest() == hashlib.sha256(data).digest()
    middle = await read_all(backend.manager, key, start=5 * MiB - 10, end=5 * MiB + 9)  # across a part boundary
    assert middle == data[5 * MiB - 10:5 * MiB + 10]
    if backend.name == "s3":
        head = backend.extra["client"].head_object(Bucket=BUCKET, Key=f"store/objects/{key}")
        assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB parts: a multipart upload
    assert backend.leftovers() == [f"objects/{key}"] if backend.name != "local" else backend.leftovers() == [
        f"objects/{key[:2]}/{key}"]


async def test_delete_removes_data_and_metadata(backend: Backend) -> None:
    key = new_key()
    await backend.manager.write(key, chunks_of(b"data"))
    await backend.manager.write_metadata(key, b'{"a": 1}')
    assert await backend.manager.delete(key) is True
    assert await backend.manager.read_metadata(key) is None
    with pytest.raises(FileServiceNotFoundError):
        await read_all(backend.manager, key)
    assert await backend.manager.delete(key) is False
    assert backend.leftovers() == []


# --- metadata -----------------------------------------------------------------------------------------


async def test_metadata_is_replaced_atomically_and_compare_and_swapped(backend: Backend) -> None:
    manager, other = backend.manager, backend.another()
    key = new_key()
    assert await manager.read_metadata(key) is None
    assert await manager.read_metadata_versioned(key) is None
    assert await manager.write_metadata(key, b'{"v": 1}') is True
    first = await other.read_metadata_versioned(key)
    assert first is not None and first.data == b'{"v": 1}'
    assert await other.write_metadata(key, b'{"v": 2}', expected_version=first.version) is True
    assert await manager.write_metadata(key, b'{"v": 3}', expected_version=first.version) is False  # stale
    assert await manager.read_metadata(key) == b'{"v": 2}'
    second = await manager.read_metadata_versioned(key)
    assert second is not None and second.version != first.version
    assert await manager.delete_metadata(key, expected_version=first.version) is False
    assert await manager.delete_metadata(key, expected_version=second.version) is True
    assert await manager.write_metadata(key, b"{}", expected_version=second.version) is False  # gone: no resurrection
    assert await manager.read_metadata(key) is None


async def test_concurrent_metadata_swaps_never_lose_an_update(backend: Backend) -> None:
    """Many writers increment a counter by compare-and-swap: every increment lands exactly once."""
    key = new_key()
    await backend.manager.write_metadata(key, b"0")
    managers = [backend.manager, backend.another()]
    writers, increments = 4, 5 if backend.name == "s3" else 25

    async def bump(manager: StorageManager) -> None:
        for _ in range(increments):
            while True:
                current = await manager.read_metadata_versioned(key)
                assert current is not None
                if await manager.write_metadata(key, str(int(current.data) + 1).encode(),
                                                expected_version=current.version):
                    break

    await asyncio.gather(*(asyncio.to_thread(asyncio.run, bump(managers[i % 2])) if backend.name != "memory"
                           else bump(managers[i % 2]) for i in range(writers)))
    assert await backend.manager.read_metadata(key) == str(writers * increments).encode()


async def test_concurrent_writers_and_readers_never_see_a_partial_object(backend: Backend) -> None:
    blobs = {new_key(): os.urandom(200_000 + i) for i in range(6 if backend.name == "s3" else 24)}
    seen: list[str] = []

    async def writer(key: str, data: bytes) -> None:
        await backend.manager.write(key, chunks_of(data, 7_000))
        await backend.manager.write_metadata(key, hashlib.sha256(data).hexdigest().encode())

    async def reader() -> None:
        for _ in range(40):
            for key in blobs:
                digest = await backend.manager.read_metadata(key)
                if digest is None:
                    continue
                data = await read_all(backend.manager, key)  # metadata is the commit: the data is complete
                assert hashlib.sha256(data).hexdigest().encode() == digest
                seen.append(key)
            await asyncio.sleep(0)

    await asyncio.gather(*(writer(k, d) for k, d in blobs.items()), reader(), reader())
    for key, data in blobs.items():
        assert await read_all(backend.manager, key) == data


# --- indexes ------------------------------------------------------------------------------------------


async def expired_keys(manager: StorageManager, now: float) -> list[str]:
    return sorted([entry.key async for entry in manager.expired(now) if not entry.problem])


async def test_the_expiry_index_yields_only_buckets_that_have_ended(backend: Backend) -> None:
    manager = backend.manager
    session = session_ref("s")
    old, recent, running, future = (new_key() for _ in range(4))
    await manager.index_expiry(old, session, NOW - 3600)
    await manager.index_expiry(recent, session, NOW - 2 * EXPIRY_BUCKET_SECONDS)
    await manager.index_expiry(running, session, NOW - 1)  # its bucket has not ended: swept next time
    await manager.index_expiry(future, session, NOW + 3600)
    assert await expired_keys(manager, NOW) == sorted([old, recent])
    assert await expired_keys(backend.another(), NOW + 2 * EXPIRY_BUCKET_SECONDS) == sorted([old, recent, running])
    entries = [entry async for entry in manager.expired(NOW, limit=1)]
    assert [entry.key for entry in entries] == [old]
    assert entries[0].due <= NOW - 3600 < entries[0].due + EXPIRY_BUCKET_SECONDS
    assert entries[0].session == session


async def test_moving_a_marker_drops_the_old_one(backend: Backend) -> None:
    manager = backend.manager
    key, session = new_key(), session_ref("s")
    await manager.index_expiry(key, session, NOW - 3600)
    await manager.index_expiry(key, session, NOW + 3600, previous=NOW - 3600)  # an extend
    assert await expired_keys(manager, NOW) == []
    assert await expired_keys(manager, NOW + 7200) == [key]
    await manager.index_expiry(key, session, NOW + 3600, previous=NOW + 3601)  # same bucket: idempotent
    assert await expired_keys(manager, NOW + 7200) == [key]
    await manager.unindex(key, session, NOW + 3600)
    assert await expired_keys(manager, NOW + 7200) == []
    assert [k async for k in manager.session_keys(session)] == []
    assert backend.leftovers() == []


async def test_the_session_index_lists_each_sessions_own_keys(backend: Backend) -> None:
    manager = backend.manager
    alice, bob = session_ref("alice"), session_ref("bob")
    alices = sorted(new_key() for _ in range(5))
    bobs = [new_key()]
    for key in alices:
        await manager.index_expiry(key, alice, NOW + 60)
    await manager.index_expiry(bobs[0], bob, NOW + 60)
    assert sorted([k async for k in manager.session_keys(alice)]) == alices
    assert [k async for k in backend.another().session_keys(bob)] == bobs
    assert [k async for k in manager.session_keys(session_ref("nobody"))] == []
    await manager.unindex(alices[0], alice, NOW + 60)
    assert sorted([k async for k in manager.session_keys(alice)]) == alices[1:]


async def test_a_sweep_reads_only_the_buckets_that_expired(backend: Backend) -> None:
    """10,000 files, 1 % expired: the index reads 100 markers, whatever the other 9,900 are.

    The evidence is counted, not timed: the manager's own counters, and for S3 the keys that ListObjectsV2
    actually returned to boto3 (an event hook on the real client).
    """
    manager = backend.manager
    total, expired_count = 10_000, 100
    session = session_ref("load")
    expired_at = [NOW - 86_400 + i * 600 for i in range(expired_count)]  # spread over past buckets
    alive_at = [NOW + 120 + i * 8 for i in range(total - expired_count)]  # spread over the next 22 hours
    if backend.name == "s3":
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        store = s3_backends[DEFAULT_ACCOUNT_ID]["global"]  # setup through the backend: 10k PUTs take minutes
        for at in expired_at + alive_at:
            store.put_object(BUCKET, f"store/expiry/{bucket_of(at)}/{marker_name(new_key(), session)}", b"")
        returned = []
        manager.client.meta.events.register(
            "after-call.s3.ListObjectsV2",
            lambda parsed, **_: returned.extend(item["Key"] for item in parsed.get("Contents", [])))
    else:
        await asyncio.gather(*(manager.index_expiry(new_key(), session, at) for at in expired_at + alive_at))
    before = dict(manager.stats)
    found = [entry async for entry in manager.expired(NOW)]
    assert len(found) == expired_count and not any(entry.problem for entry in found)
    assert manager.stats["index_markers_read"] - before["index_markers_read"] == expired_count
    assert manager.stats["index_buckets_read"] - before["index_buckets_read"] == expired_count
    if backend.name == "s3":
        assert len(returned) == expired_count
        assert manager.stats["list_requests"] <= expired_count + 2  # one per expired bucket + the bucket list


async def test_stray_files_in_the_expiry_index_are_reported_and_removed(backend: Backend) -> None:
    manager = backend.manager
    key, session = new_key(), session_ref("s")
    await manager.index_expiry(key, session, NOW - 3600)
    bucket = bucket_of(NOW - 3600)
    backend.stray(f"expiry/{bucket}/notes.txt", b"not a marker")
    backend.stray(f"expiry/{bucket}/{key}.metadata", b"{}")
    backend.stray("expiry/README", b"hello")
    entries = [entry async for entry in manager.expired(NOW)]
    assert [entry.key for entry in entries if not entry.problem] == [key]
    problems = sorted(entry.problem or "" for entry in entries if entry.problem)
    assert len(problems) == 3 and all("removed" in p for p in problems), problems
    assert any("notes.txt" in p for p in problems) and any("README" in p for p in problems)
    await manager.unindex(key, session, NOW - 3600)
    assert backend.leftovers() == []


# --- the secret, leftovers of killed writers, hostile keys ---------------------------------------------


async def test_the_secret_is_made_once_and_shared_by_every_instance(backend: Backend) -> None:
    first, second = backend.manager, backend.another()
    secrets = await asyncio.gather(first.get_secret(), second.get_secret(), backend.another().get_secret())
    assert len(set(secrets)) == 1 and len(secrets[0]) == 32
    assert await backend.another().get_secret() == secrets[0]


async def test_purge_incomplete_removes_what_killed_writers_left(backend: Backend) -> None:
    key = new_key()
    if backend.name == "local":
        leftover = backend.extra["root"] / "tmp" / f"{key}.deadbeef0000.part"
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half a file")
        os.utime(leftover, (time.time() - 7200, time.time() - 7200))
        young = backend.extra["root"] / "tmp" / f"{new_key()}.deadbeef0001.part"
        young.write_bytes(b"in flight")
        assert await backend.manager.purge_incomplete(time.time() - 3600) == 1
        assert not leftover.exists() and young.exists()
        young.unlink()
    elif backend.name == "s3":
        client = backend.extra["client"]
        client.create_multipart_upload(Bucket=BUCKET, Key=f"store/objects/{key}")
        initiated = client.list_multipart_uploads(Bucket=BUCKET)["Uploads"][0]["Initiated"].timestamp()
        if initiated > time.time() - 600:  # a store that reports when the upload began (AWS, MinIO)
            assert await backend.manager.purge_incomplete(time.time() - 3600) == 0  # too young: may be in flight
        # else: moto reports a fixed Initiated (2010-11-10T20:48:33Z) for every upload, so age cannot be
        # checked against it; what the manager guarantees whatever the store reports is checked below.
        assert await backend.manager.purge_incomplete(time.time() + 60) == 1
        await _purge_spares_own_uploads_in_flight(backend)
    else:
        assert await backend.manager.purge_incomplete(time.time()) == 0
    assert backend.leftovers() == []


async def _purge_spares_own_uploads_in_flight(backend: Backend) -> None:
    """A purge never aborts a multipart upload its own manager has in flight, whatever age S3 reports."""
    filled = asyncio.Event()
    release = asyncio.Event()
    data = os.urandom(6 * MiB)

    async def slow() -> AsyncIterator[bytes]:
        yield data[:5 * MiB + 1]  # one part is uploading: a multipart upload exists
        filled.set()
        await release.wait()
        yield data[5 * MiB + 1:]

    key = new_key()
    task = asyncio.create_task(backend.manager.write(key, slow()))
    await asyncio.wait_for(filled.wait(), 30)
    await asyncio.sleep(0.3)
    assert await backend.manager.purge_incomplete(time.time() + 60) == 0
    release.set()
    assert await task == len(data)
    assert await read_all(backend.manager, key) == data
    await backend.manager.delete(key)


HOSTILE_KEYS = ["../../etc/passwd", "x.metadata", "", "A" * 32, "0" * 31, "0" * 33, "0" * 32 + "/..",
                "0" * 16 + "\x00" + "0" * 15, "0" * 32 + "\n", None, 123]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
async def test_hostile_keys_are_refused_by_every_method(backend: Backend, key: Any) -> None:
    manager = backend.manager
    calls = [
        lambda: manager.write(key, chunks_of(b"x")),
        lambda: read_all(manager, key),
        lambda: manager.delete(key),
        lambda: manager.write_metadata(key, b"{}"),
        lambda: manager.read_metadata(key),
        lambda: manager.read_metadata_versioned(key),
        lambda: manager.delete_metadata(key),
        lambda: manager.index_expiry(key, session_ref("s"), NOW),
        lambda: manager.unindex(key, session_ref("s"), NOW),
        lambda: manager.index_expiry(new_key(), key, NOW),
        lambda: manager.unindex(new_key(), key, NOW),
        lambda: _drain(manager.session_keys(key)),
    ]
    for call in calls:
        with pytest.raises(InvalidFileURLError, match=r"not a (storage key|session ref) of this file service"):
            await call()
    assert backend.leftovers() == []


async def _drain(iterator: AsyncIterator[Any]) -> None:
    async for _ in iterator:
        pass


def test_s3_errors_are_sentences_without_credentials(s3_server: S3Server) -> None:
    manager = S3StorageManager("no-such-bucket", **s3_server.manager_options())

    async def run() -> None:
        with pytest.raises(FileStorageError) as info:
            await manager.write(new_key(), chunks_of(b"x"))
        text = str(info.value)
        assert "The S3 bucket 'no-such-bucket' does not exist" in text and "create it" in text
        assert "testing-secret-key" not in text and "testing-secret-key" not in repr(manager)
        await manager.close()

    asyncio.run(run())


# --- optional fast paths (storage.base: StoresSmallFiles, CopiesLocalFiles, ExpiresInPlace) -----------------


FAST_PATH_STORES = ["local"]
"""The stores that implement the optional fast paths; the memory and S3 stores stream instead."""


@pytest.fixture(params=FAST_PATH_STORES)
async def fast_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made = _local(tmp_path)
    yield made
    await made.manager.close()


def _needs(backend: Backend, protocol: type) -> Any:
    assert isinstance(backend.manager, protocol), f"{backend.name} should implement {protocol.__name__}"
    return backend.manager


def test_only_the_stores_listed_implement_the_fast_paths(tmp_path: Path) -> None:
    from flowmas.files.storage.base import CopiesLocalFiles, ExpiresInPlace, StoresSmallFiles

    stores = {"local": _local(tmp_path).manager, "memory": _memory().manager}
    for name, manager in stores.items():
        implemented = [isinstance(manager, p) for p in (StoresSmallFiles, CopiesLocalFiles, ExpiresInPlace)]
        assert implemented == [name in FAST_PATH_STORES] * 3, name


@pytest.mark.parametrize("size", [0, 1, 1024, 4096])
async def test_a_small_file_in_one_step_round_trips_with_ranges_and_keeps_its_data_across_swaps(
        fast_backend: Backend, size: int) -> None:
    from flowmas.files.storage.base import StoresSmallFiles

    manager = _needs(fast_backend, StoresSmallFiles)
    assert size <= manager.small_file_bytes
    data, key = os.urandom(size), new_key()
    document = b'{"format":1,"v":1}'
    await manager.write_small(key, data, document)
    assert await read_all(manager, key) == data
    assert await read_all(fast_backend.another(), key) == data
    for start, end in [(0, 0), (5, 9), (1, None), (size - 1, None), (size // 2, size + 100), (size, None)]:
        if start >= 0:
            assert await read_all(manager, key, start=start, end=end) == data[start:(end + 1) if end is not None
                                                                               else None], (start, end)
    found = await manager.read_metadata_versioned(key)
    assert found is not None and found.data == document  # the caller never sees the inlined data
    assert await manager.write_metadata(key, b'{"format":1,"v":2}', expected_version=found.version) is True
    assert await manager.read_metadata(key) == b'{"format":1,"v":2}'
    assert await manager.write_metadata(key, b"{}") is True
    assert await manager.read_metadata(key) == b"{}" and await read_all(manager, key) == data
    if fast_backend.name == "local":
        assert fast_backend.leftovers() == [f"meta/{key[:2]}/{key}.json"]  # one file: no data object of its own
    assert await manager.delete(key) is True
    with pytest.raises(FileServiceNotFoundError):
        await read_all(manager, key)
    assert await manager.read_metadata(key) is None and fast_backend.leftovers() == []


async def test_write_small_of_a_larger_file_or_a_non_object_document_goes_the_usual_way(fast_backend: Backend) -> None:
    from flowmas.files.storage.base import StoresSmallFiles

    manager = _needs(fast_backend, StoresSmallFiles)
    big, key = os.urandom(manager.small_file_bytes + 1), new_key()
    await manager.write_small(key, big, b'{"a":1}')
    assert await read_all(manager, key) == big and await manager.read_metadata(key) == b'{"a":1}'
    other = new_key()
    await manager.write_small(other, b"tiny", b"0")
    assert await read_all(manager, other) == b"tiny" and await manager.read_metadata(other) == b"0"
    await manager.delete(key)
    await manager.delete(other)
    assert fast_backend.leftovers() == []


@pytest.mark.parametrize("size", [0, 10, 3 * MiB + 7, 20 * MiB + 1])
async def test_kernel_copies_give_identical_bytes_and_hash_what_is_stored(
        fast_backend: Backend, tmp_path: Path, size: int) -> None:
    from flowmas.files.storage.base import CopiesLocalFiles

    manager = _needs(fast_backend, CopiesLocalFiles)
    data, key = os.urandom(size), new_key()
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    digest = hashlib.sha256()
    pieces: list[int] = []

    def consume(piece: bytes) -> None:
        digest.update(piece)
        pieces.append(len(piece))

    with open(source, "rb") as handle:
        assert await manager.write_from_file(key, handle.fileno(), consume=consume) == size
    assert digest.digest() == hashlib.sha256(data).digest() and sum(pieces) == size
    assert all(p <= MiB for p in pieces)
    assert await read_all(manager, key) == data
    target = tmp_path / "copy.bin"
    with open(target, "xb") as out:
        assert await manager.copy_to_file(key, out.fileno()) == size
    assert target.read_bytes() == data
    with open(tmp_path / "missing.bin", "xb") as out, pytest.raises(FileServiceNotFoundError):
        await manager.copy_to_file(new_key(), out.fileno())


async def test_copy_to_file_copies_a_small_file_stored_in_one_step(fast_backend: Backend, tmp_path: Path) -> None:
    from flowmas.files.storage.base import CopiesLocalFiles, StoresSmallFiles

    manager = _needs(fast_backend, CopiesLocalFiles)
    _needs(fast_backend, StoresSmallFiles)
    key = new_key()
    await manager.write_small(key, b"hello", b'{"format":1}')
    with open(tmp_path / "out", "xb") as out:
        assert await manager.copy_to_file(key, out.fileno()) == 5
    assert (tmp_path / "out").read_bytes() == b"hello"


async def test_a_kernel_copy_past_max_bytes_or_refused_by_consume_or_cancelled_leaves_nothing(
        fast_backend: Backend, tmp_path: Path) -> None:
    from flowmas.files.storage.base import CopiesLocalFiles

    manager = _needs(fast_backend, CopiesLocalFiles)
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(20 * MiB))
    with open(source, "rb") as handle:
        with pytest.raises(FileTooLargeError):
            await manager.write_from_file(new_key(), handle.fileno(), max_bytes=9 * MiB)
        assert fast_backend.leftovers() == []

        def refuse(piece: bytes) -> None:
            raise FileTooLargeError("the session is full")

        with pytest.raises(FileTooLargeError, match="session is full"):
            await manager.write_from_file(new_key(), handle.fileno(), consume=refuse)
        assert fast_backend.leftovers() == []
        started = asyncio.Event()

        def slow(piece: bytes) -> None:
            started.set()
            time.sleep(0.05)

        loop = asyncio.get_running_loop()
        task = asyncio.create_task(manager.write_from_file(
            new_key(), handle.fileno(), consume=lambda p: (loop.call_soon_threadsafe(started.set), slow(p))))
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert fast_backend.leftovers() == []


async def test_expire_file_deletes_or_keeps_under_the_lock_in_one_pass(fast_backend: Backend) -> None:
    from flowmas.files.storage.base import ExpiresInPlace

    manager = _needs(fast_backend, ExpiresInPlace)
    session = session_ref("s")
    gone, kept, damaged = new_key(), new_key(), new_key()
    for key in (gone, kept, damaged):
        await manager.index_expiry(key, session, NOW - 3600)
        await manager.write(key, chunks_of(b"data"))
        await manager.write_metadata(key, key.encode())
    assert await manager.expire_file(new_key(), session, NOW - 3600, lambda doc: NOW) == (None, False)
    assert await manager.expire_file(gone, session, NOW - 3600, lambda doc: NOW - 3600) == (gone.encode(), True)
    assert await manager.read_metadata(gone) is None
    with pytest.raises(FileServiceNotFoundError):
        await read_all(manager, gone)
    assert await manager.expire_file(kept, session, NOW - 3600, lambda doc: None) == (kept.encode(), False)

    def broken(doc: bytes) -> float:
        raise ValueError("damaged")

    with pytest.raises(ValueError):
        await manager.expire_file(damaged, session, NOW - 3600, broken)
    assert await manager.read_metadata(kept) == kept.encode() and await manager.read_metadata(damaged) is not None
    assert sorted(await expired_keys(manager, NOW)) == sorted([kept, damaged])  # gone's marker went with it
    assert sorted([k async for k in manager.session_keys(session)]) == sorted([kept, damaged])
    for key in (kept, damaged):
        await manager.delete(key)
        await manager.unindex(key, session, NOW - 3600)
    assert fast_backend.leftovers() == []


async def test_local_markers_are_links_of_one_empty_file_rotated_when_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import flowmas.files.storage.local as local

    root = tmp_path / "store"
    manager = LocalStorageManager(root)
    session = session_ref("s")
    keys = [new_key() for _ in range(3)]
    for key in keys:
        await manager.index_expiry(key, session, NOW)
    source = root / "locks" / "marker"
    assert source.stat().st_size == 0 and source.stat().st_nlink == 1 + 2 * len(keys)
    first = source.stat().st_ino
    real_link, calls = os.link, []

    def full_once(src: Any, dst: Any, **kwargs: Any) -> None:
        calls.append(dst)
        if len(calls) == 1:
            raise OSError(errno.EMLINK, "Too many links")
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(local.os, "link", full_once)
    fourth = new_key()
    await manager.index_expiry(fourth, session, NOW)
    assert source.stat().st_ino != first and source.stat().st_nlink == 3  # a fresh source, two new markers
    assert fourth in [k async for k in manager.session_keys(session)]

    def refused(src: Any, dst: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(local.os, "link", refused)
    fifth = new_key()
    await manager.index_expiry(fifth, session, NOW)  # no hard links here: empty files of their own
    marker = root / "sessions" / session / fifth
    assert marker.stat().st_nlink == 1 and marker.stat().st_size == 0
    assert sorted(await expired_keys(manager, NOW + 3 * EXPIRY_BUCKET_SECONDS)) == sorted([*keys, fourth, fifth])


async def test_local_sweep_prunes_emptied_session_directories_once_per_bucket(tmp_path: Path) -> None:
    root = tmp_path / "store"
    manager = LocalStorageManager(root)
    session = session_ref("s")
    keys = [new_key() for _ in range(3)]
    for key in keys:
        await manager.index_expiry(key, session, NOW - 3600)
        await manager.write_metadata(key, b"{}")
    async for entry in manager.expired(NOW):
        assert await manager.expire_file(entry.key, entry.session, entry.due, lambda doc: NOW - 3600) == (b"{}", True)
        assert (root / "sessions" / session).is_dir() or entry.key == keys[-1]
    assert not (root / "sessions" / session).exists() and not (root / "expiry" / bucket_of(NOW - 3600)).exists()
