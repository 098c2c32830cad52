"""The on-disk asset cache: layout, locks, lookups and atomic publication.

    <root>/
    ├── .locks/<type>/<name>/<version>.lock      flock files; kept (deleting a lock file others hold breaks them)
    └── <type>/<name>/
        ├── <version>/                           a published entry: renaming it into place is the commit
        │   ├── .asset_info.json                 AssetRecord, written into the staging dir last
        │   └── <filename> | <unpacked tree>
        ├── .<version>.<identity12>.part         resumable download (+ .part.json for http validators)
        ├── .<version>.staging-<uuid>/           an entry being assembled; never read
        └── .<version>.trash-<uuid>/             a replaced entry being deleted

Invariants: a version directory exists only complete (staging + one rename); a hit is trusted when the
record's identity matches the declaration and the file's size and mtime match the record, so it costs a
small JSON read and a stat, never a hash. The lock avoids duplicate downloads; correctness never depends
on it, because nothing visible is ever half-written.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import filelock

from flowmas.assets.manifest import AssetConfig
from flowmas.assets.record import AssetRecord, Fetched, FileEntry
from flowmas.assets.unpack import UnpackLimits, single_file, unpack_archive
from flowmas.errors import LockTimeoutError

log = logging.getLogger("flowmas.assets")

RECORD = ".asset_info.json"
TOUCH_INTERVAL = timedelta(hours=1)
"""last_used_at is rewritten at most this often, so a hit stays a read-only operation."""

EntryState = Literal["cached", "not_cached", "stale", "damaged"]

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


@dataclass(frozen=True)
class CacheEntry:
    """A published version directory, with its record (None when the record is unreadable)."""

    asset_type: str
    name: str
    version: str
    directory: Path
    record: AssetRecord | None

    @property
    def key(self) -> str:
        return f"{self.asset_type}/{self.name}/{self.version}"

    def size_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.directory.rglob("*") if f.is_file() and not f.is_symlink())


class AssetCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    # --- layout ---------------------------------------------------------------------------------------

    def entry_dir(self, asset: AssetConfig) -> Path:
        return self.root / asset.asset_type / asset.name / asset.version

    def part_path(self, asset: AssetConfig) -> Path:
        return self.root / asset.asset_type / asset.name / f".{asset.version}.{asset.identity_hash()[:12]}.part"

    def lock_path(self, key: str) -> Path:
        return self.root / ".locks" / f"{key}.lock"

    # --- lookups --------------------------------------------------------------------------------------

    def read_record(self, directory: Path) -> AssetRecord | None:
        try:
            return AssetRecord.model_validate_json((directory / RECORD).read_bytes())
        except (OSError, ValueError):
            return None

    def inspect(self, asset: AssetConfig) -> tuple[EntryState, AssetRecord | None]:
        """The entry's state without hashing: cached, not cached, stale (declaration changed) or damaged."""
        directory = self.entry_dir(asset)
        record = self.read_record(directory)
        if record is None:
            return ("damaged" if directory.exists() else "not_cached"), None
        if record.identity != asset.identity_hash():
            return "stale", record
        target = directory / record.path
        try:
            stat = target.stat()
        except OSError:
            return "damaged", record
        if not record.is_dir and (stat.st_size != record.size or stat.st_mtime_ns != record.mtime_ns):
            return "damaged", record
        return "cached", record

    def lookup(self, asset: AssetConfig) -> Path | None:
        """The published path on a trustworthy hit, else None. Sub-millisecond: a JSON read and a stat."""
        state, record = self.inspect(asset)
        if state != "cached" or record is None:
            return None
        directory = self.entry_dir(asset)
        now = datetime.now(UTC)
        if now - record.last_used_at > TOUCH_INTERVAL:
            _write_record(directory, record.model_copy(update={"last_used_at": now}))
        return directory / record.path if record.path != "." else directory

    def entries(self) -> Iterator[CacheEntry]:
        """Every published version directory in the cache, declared or not."""
        if not self.root.is_dir():
            return
        for type_dir in sorted(self.root.iterdir()):
            if type_dir.name.startswith(".") or not type_dir.is_dir():
                continue
            for name_dir in sorted(type_dir.iterdir()):
                if not name_dir.is_dir():
                    continue
                for version_dir in sorted(name_dir.iterdir()):
                    if version_dir.name.startswith(".") or not version_dir.is_dir():
                        continue
                    yield CacheEntry(type_dir.name, name_dir.name, version_dir.name, version_dir,
                                     self.read_record(version_dir))

    def leftovers(self) -> Iterator[Path]:
        """``.part`` files, sidecars, staging and trash directories: what an interrupted run leaves."""
        if not self.root.is_dir():
            return
        for type_dir in self.root.iterdir():
            if type_dir.name.startswith(".") or not type_dir.is_dir():
                continue
            for name_dir in type_dir.iterdir():
                if name_dir.is_dir():
                    yield from (p for p in name_dir.iterdir() if p.name.startswith("."))

    # --- locking --------------------------------------------------------------------------------------

    @contextmanager
    def locked(self, key: str, *, timeout: float, log_every: float, asset: str | None = None) -> Iterator[None]:
        """Hold the entry's lock: first among this process's threads, then among processes (flock)."""
        path = self.lock_path(key)
        with _process_locks_guard:
            thread_lock = _process_locks.setdefault(str(path), threading.Lock())
        deadline = time.monotonic() + timeout
        _wait(lambda t: thread_lock.acquire(timeout=t), key, deadline, log_every, path, asset)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            file_lock = filelock.FileLock(path, thread_local=False)

            def acquire(wait: float) -> bool:
                try:
                    file_lock.acquire(timeout=wait)
                    return True
                except filelock.Timeout:
                    return False

            _wait(acquire, key, deadline, log_every, path, asset)
            try:
                yield
            finally:
                file_lock.release()
        finally:
            thread_lock.release()

    @contextmanager
    def try_locked(self, key: str) -> Iterator[bool]:
        """Hold the entry's lock only if it is free right now; yields False (holding nothing) when busy.

        For housekeeping (cleanup) that must never wait for, or break, a running download.
        """
        path = self.lock_path(key)
        with _process_locks_guard:
            thread_lock = _process_locks.setdefault(str(path), threading.Lock())
        if not thread_lock.acquire(blocking=False):
            yield False
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            file_lock = filelock.FileLock(path, thread_local=False)
            try:
                file_lock.acquire(timeout=0)
            except filelock.Timeout:
                yield False
                return
            try:
                yield True
            finally:
                file_lock.release()
        finally:
            thread_lock.release()

    # --- publishing and removal -----------------------------------------------------------------------

    def publish(self, asset: AssetConfig, part: Path, fetched: Fetched, limits: UnpackLimits) -> Path:
        """Turn a verified ``.part`` into a published entry; call with the entry's lock held."""
        name_dir = self.entry_dir(asset).parent
        staging = name_dir / f".{asset.version}.staging-{uuid.uuid4().hex[:12]}"
        try:
            files = fetched.files
            if asset.unpack:
                unpacked = unpack_archive(part, staging, asset.unpack_format, limits=limits,  # type: ignore[arg-type]
                                          asset=asset.name)
                files = unpacked
                relative = single_file(unpacked, asset=asset.name) if asset.unpack_destination_is_file else "."
            elif part.is_dir():  # a copied local directory
                part.rename(staging)
                relative = "."
            else:
                staging.mkdir()
                part.rename(staging / asset.filename)
                relative = asset.filename
            target = staging / relative
            stat = target.stat()
            now = datetime.now(UTC)
            source = dict(asset.source.identity())
            source.update({k: v for k, v in fetched.details.items() if k == "commit" and v})
            record = AssetRecord(
                name=asset.name,
                version=asset.version,
                asset_type=asset.asset_type,
                identity=asset.identity_hash(),
                source=source,
                checksum=asset.checksum,
                sha256=fetched.sha256,
                size=stat.st_size if relative != "." else fetched.size,
                path=relative,
                is_dir=relative == ".",
                mtime_ns=stat.st_mtime_ns,
                etag=fetched.details.get("etag"),
                last_modified=fetched.details.get("last_modified"),
                files=[FileEntry(path=f.path, size=f.size, sha256=f.sha256) for f in files] if files else None,
                downloaded_at=now,
                last_used_at=now,
            )
            _write_record(staging, record)
            _fsync_dir(staging)
            self._swap_in(staging, self.entry_dir(asset))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        part.unlink(missing_ok=True)
        final = self.entry_dir(asset)
        return final / relative if relative != "." else final

    def remove(self, directory: Path) -> None:
        """Unpublish an entry: one rename makes it disappear, then its bytes are deleted."""
        if not directory.exists():
            return
        trash = directory.with_name(f".{directory.name}.trash-{uuid.uuid4().hex[:12]}")
        directory.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    def discard_part(self, asset: AssetConfig) -> None:
        part = self.part_path(asset)
        for path in (part, part.with_name(part.name + ".json")):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _swap_in(self, staging: Path, final: Path) -> None:
        if final.exists():
            trash = final.with_name(f".{final.name}.trash-{uuid.uuid4().hex[:12]}")
            final.rename(trash)
            staging.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(final)
        _fsync_dir(final.parent)


def _wait(try_acquire, key: str, deadline: float, log_every: float, path: Path, asset: str | None) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockTimeoutError(
                f"Gave up waiting for {key} after {time.monotonic() - started:.0f} s: another download of it is "
                f"still running (lock {path}). Wait for it, or raise FLOWMAS_LOCK_TIMEOUT_SECONDS.",
                asset=asset,
            )
        if try_acquire(min(log_every, remaining)):
            return
        log.info("Waiting for %s: another process or thread is downloading it (%.0f s so far)",
                 key, time.monotonic() - started)


def _write_record(directory: Path, record: AssetRecord) -> None:
    tmp = directory / f"{RECORD}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w", encoding="utf-8") as file:
        file.write(record.model_dump_json(indent=2))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, directory / RECORD)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

