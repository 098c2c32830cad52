"""The on-disk asset cache: layout, locks, lookups and atomic publication.

    <root>/
    ├── .locks/<type>/<name>/<version>.lock      flock files; kept (deleting a lock file others hold breaks them)
    └── <type>/<name>/
        ├── <version>/                           a published entry: renaming it into place is the commit
        │   ├── record.json                      AssetRecord (small); its mtime is the entry's last use
        │   ├── files.json                       per-file sizes and sha256 (archives, directories): for verify
        │   └── data/                            the asset: data/<filename>, or the unpacked or copied tree
        └── .work/<version>/                     everything of the cache's own making for that version
            ├── <identity12>.part                resumable download (+ .part.json: validators, total, complete)
            ├── staging-<uuid>/                  an entry being assembled; never read
            └── trash-<uuid>/                    a replaced or cleared entry being deleted

Names, versions and types never start with a dot (``SAFE_SEGMENT``), so ``.work`` and ``.locks`` cannot
collide with them, and the asset's own files live under ``data/``, so none can collide with the record.

Invariants: a version directory exists only complete (staging + one rename); a hit is trusted when the
record's identity matches the declaration and the file's size and mtime match the record, so it costs a
small JSON read and a stat, never a hash, and it writes nothing but the record's mtime (``os.utime``,
atomic, and harmless if the entry vanished meanwhile). Whoever holds an entry's lock owns its ``.work``
directory: the next operation under the lock sweeps whatever a killed process left there. The lock avoids
duplicate downloads; correctness never depends on it, because nothing visible is ever half-written.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import filelock
from pydantic import TypeAdapter, ValidationError

from flowmas.assets.manifest import AssetConfig
from flowmas.assets.record import AssetRecord, Fetched, FileEntry, ProjectRef
from flowmas.assets.unpack import UnpackLimits, single_file, unpack_archive
from flowmas.errors import AssetCacheError, LockTimeoutError, describe_os_error

log = logging.getLogger("flowmas.assets")

RECORD = "record.json"
FILES = "files.json"
DATA = "data"
WORK = ".work"
TOUCH_INTERVAL = timedelta(hours=1)
"""The record's mtime (last use) is refreshed at most this often, so a hit stays a read in practice."""

EntryState = Literal["cached", "not cached", "stale", "damaged"]

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()
_files_adapter = TypeAdapter(list[FileEntry])


@dataclass(frozen=True)
class CacheEntry:
    """A published version directory, with its record (None when the record is unreadable)."""

    asset_type: str
    name: str
    version: str
    directory: Path
    record: AssetRecord | None
    last_used: datetime

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

    def work_dir(self, asset: AssetConfig) -> Path:
        return work_dir_of(self.entry_dir(asset))

    def part_path(self, asset: AssetConfig) -> Path:
        return self.work_dir(asset) / f"{asset.identity_hash()[:12]}.part"

    def lock_path(self, key: str) -> Path:
        return self.root / ".locks" / f"{key}.lock"

    def ensure_root(self) -> None:
        """Create the cache root, or say in one sentence why it cannot be used."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise AssetCacheError(
                f"The asset cache {self.root} cannot be created: it, or a directory above it, is a file. Move "
                "the file away, or point FLOWMAS_ASSETS_DIR (or settings.assets.cache_dir) elsewhere.") from None
        except OSError as exc:
            raise AssetCacheError(f"The asset cache cannot be created: {describe_os_error(exc)}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise AssetCacheError(
                f"The asset cache {self.root} is not writable by this user; fix its permissions or point "
                "FLOWMAS_ASSETS_DIR elsewhere.")

    # --- lookups --------------------------------------------------------------------------------------

    def read_record(self, directory: Path) -> AssetRecord | None:
        read = _read_record(directory)
        return read[0] if read else None

    def read_files(self, directory: Path) -> list[FileEntry] | None:
        try:
            return _files_adapter.validate_json((directory / FILES).read_bytes())
        except (OSError, ValidationError):
            return None

    def inspect(self, asset: AssetConfig) -> tuple[EntryState, AssetRecord | None]:
        """The entry's state without hashing: cached, not cached, stale (declaration changed) or damaged."""
        state, record, _ = self._inspect(asset)
        return state, record

    def _inspect(self, asset: AssetConfig) -> tuple[EntryState, AssetRecord | None, float]:
        directory = self.entry_dir(asset)
        read = _read_record(directory)
        if read is None:
            return ("damaged" if directory.exists() else "not cached"), None, 0.0
        record, used = read
        if record.identity != asset.identity_hash():
            return "stale", record, used
        try:
            stat = (directory / record.path).stat()
        except OSError:
            return "damaged", record, used
        if not record.is_dir and (stat.st_size != record.size or stat.st_mtime_ns != record.mtime_ns):
            return "damaged", record, used
        return "cached", record, used

    def lookup(self, asset: AssetConfig) -> Path | None:
        """The published path on a trustworthy hit, else None. Sub-millisecond: a JSON read and a stat."""
        state, record, used = self._inspect(asset)
        if state != "cached" or record is None:
            return None
        directory = self.entry_dir(asset)
        if time.time() - used > TOUCH_INTERVAL.total_seconds():
            with contextlib.suppress(OSError):  # the entry may have been cleared meanwhile: still a hit
                os.utime(directory / RECORD)
        return directory / record.path

    def entries(self) -> Iterator[CacheEntry]:
        """Every published version directory in the cache, declared or not."""
        for version_dir in self._version_dirs():
            yield self.entry_at(version_dir)

    def entry_at(self, version_dir: Path) -> CacheEntry:
        """The entry published at ``version_dir`` as it is now (record None when unreadable)."""
        read = _read_record(version_dir)
        record, used = read if read else (None, _mtime(version_dir))
        return CacheEntry(version_dir.parent.parent.name, version_dir.parent.name, version_dir.name, version_dir,
                          record, datetime.fromtimestamp(used, UTC))

    def work_dirs(self) -> Iterator[tuple[str, Path]]:
        """``(type/name/version, .work/<version>)`` for every entry that has work in progress or left over."""
        for name_dir in self._name_dirs():
            work = name_dir / WORK
            if work.is_dir():
                for version_work in sorted(work.iterdir()):
                    yield f"{name_dir.parent.name}/{name_dir.name}/{version_work.name}", version_work

    def _name_dirs(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for type_dir in sorted(self.root.iterdir()):
            if type_dir.name.startswith(".") or not type_dir.is_dir():
                continue
            for name_dir in sorted(type_dir.iterdir()):
                if not name_dir.name.startswith(".") and name_dir.is_dir():
                    yield name_dir

    def _version_dirs(self) -> Iterator[Path]:
        for name_dir in self._name_dirs():
            for version_dir in sorted(name_dir.iterdir()):
                if not version_dir.name.startswith(".") and version_dir.is_dir():
                    yield version_dir

    # --- locking --------------------------------------------------------------------------------------

    @contextmanager
    def locked(self, key: str, *, timeout: float, log_every: float, asset: str | None = None) -> Iterator[None]:
        """Hold the entry's lock: first among this process's threads, then among processes (flock)."""
        path = self.lock_path(key)
        thread_lock = _thread_lock(path)
        deadline = time.monotonic() + timeout
        _wait(lambda t: thread_lock.acquire(timeout=t), key, deadline, log_every, path, asset)
        try:
            self._lock_dir(path)
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
        thread_lock = _thread_lock(path)
        if not thread_lock.acquire(blocking=False):
            yield False
            return
        try:
            self._lock_dir(path)
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

    def _lock_dir(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError, PermissionError, OSError):
            self.ensure_root()  # says what is wrong with the cache in one sentence
            raise

    # --- work under the lock --------------------------------------------------------------------------

    def sweep(self, asset: AssetConfig, *, keep_part: bool = True) -> list[Path]:
        """Remove what killed processes left in the entry's ``.work`` (call with the entry's lock held).

        Keeps the current declaration's ``.part`` and sidecar unless ``keep_part`` is False; removes staging
        and trash directories and the ``.part`` files of older declarations.
        """
        work = self.work_dir(asset)
        part = self.part_path(asset)
        keep = {part.name, part.name + ".json"} if keep_part else set()
        removed = []
        if work.is_dir():
            for path in work.iterdir():
                if path.name not in keep:
                    _remove_path(path)
                    removed.append(path)
        _prune(work)
        return removed

    def tidy(self, asset: AssetConfig) -> None:
        """Remove the entry's ``.work`` if nothing is left in it (after a failure, with its lock held)."""
        _prune(self.work_dir(asset))

    def clear_work(self, directory: Path) -> None:
        """Remove the whole ``.work`` of an entry (its lock held): partial downloads included."""
        work = work_dir_of(directory)
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
        _prune(work)

    def publish(
        self,
        asset: AssetConfig,
        part: Path,
        fetched: Fetched,
        limits: UnpackLimits,
        project: ProjectRef | None,
        redacted_source: dict[str, object],
    ) -> Path:
        """Turn a verified ``.part`` into a published entry; call with the entry's lock held."""
        work = make_work(self.work_dir(asset))
        staging = work / f"staging-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        data = staging / DATA
        try:
            files = fetched.files
            if asset.unpack:
                files = unpack_archive(part, data, asset.unpack_format,  # type: ignore[arg-type]
                                       limits=limits, asset=asset.name, source=asset.describe_source())
                relative = DATA + ("/" + single_file(files, asset=asset.name) if asset.unpack_destination_is_file
                                   else "")
            elif part.is_dir():  # a copied local directory or a Hub snapshot
                part.rename(data)
                relative = DATA
            else:
                data.mkdir()
                part.rename(data / asset.filename)
                relative = f"{DATA}/{asset.filename}"
            target = staging / relative
            stat = target.stat()
            if files is not None:
                _write_json(staging / FILES, _files_adapter.dump_json([
                    FileEntry(path=f.path, size=f.size, sha256=f.sha256) for f in files]))
            source = dict(redacted_source)
            source.update({k: v for k, v in fetched.details.items() if k == "commit" and v})
            record = AssetRecord(
                name=asset.name,
                version=asset.version,
                asset_type=asset.asset_type,
                identity=asset.identity_hash(),
                project=project,
                source=source,
                checksum=asset.checksum,
                sha256=fetched.sha256,
                size=fetched.size if relative == DATA else stat.st_size,
                path=relative,
                is_dir=target.is_dir(),
                mtime_ns=stat.st_mtime_ns,
                etag=fetched.details.get("etag"),
                last_modified=fetched.details.get("last_modified"),
                file_count=len(files) if files is not None else None,
                downloaded_at=datetime.now(UTC),
            )
            _write_json(staging / RECORD, record.model_dump_json(indent=2).encode())
            _fsync_dir(staging)
            self._swap_in(staging, self.entry_dir(asset), work)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        for path in (part, part.with_name(part.name + ".json")):
            path.unlink(missing_ok=True)
        _prune(work)
        return self.entry_dir(asset) / relative

    def remove(self, directory: Path) -> None:
        """Unpublish an entry: one rename into its ``.work`` makes it disappear, then its bytes are deleted."""
        if not directory.exists():
            return
        work = make_work(work_dir_of(directory))
        trash = work / f"trash-{uuid.uuid4().hex[:12]}"
        directory.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        _prune(work)

    def discard_part(self, asset: AssetConfig) -> None:
        part = self.part_path(asset)
        for path in (part, part.with_name(part.name + ".json")):
            _remove_path(path)
        _prune(self.work_dir(asset))

    def _swap_in(self, staging: Path, final: Path, work: Path) -> None:
        if final.exists():
            trash = work / f"trash-{uuid.uuid4().hex[:12]}"
            final.rename(trash)
            staging.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(final)
        _fsync_dir(final.parent)


def work_dir_of(entry_dir: Path) -> Path:
    return entry_dir.parent / WORK / entry_dir.name


def _thread_lock(path: Path) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault(str(path), threading.Lock())


def _read_record(directory: Path) -> tuple[AssetRecord, float] | None:
    """The record and its mtime (last use), read through one open file."""
    try:
        with open(directory / RECORD, "rb") as file:
            used = os.fstat(file.fileno()).st_mtime
            return AssetRecord.model_validate_json(file.read()), used
    except (OSError, ValidationError):
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _wait(try_acquire: Callable[[float], bool], key: str, deadline: float, log_every: float, path: Path,
          asset: str | None) -> None:
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


def _write_json(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _prune(work: Path) -> None:
    """Remove an empty ``.work/<version>`` (its lock is held), then ``.work`` if it is empty too.

    Another version's lock holder may be creating its directory in ``.work`` at this moment: ``make_work``
    creates again what a prune removed underneath it.
    """
    for directory in (work, work.parent):
        try:
            directory.rmdir()
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                log.debug("Could not remove %s: %s", directory, exc)
            return


def make_work(work: Path) -> Path:
    """Create ``.work/<version>`` (and ``.work``), tolerating a concurrent prune of an empty ``.work``."""
    for _ in range(5):
        try:
            work.mkdir(parents=True, exist_ok=True)
            return work
        except FileNotFoundError:
            continue  # .work was pruned between its creation and ours: try again
    work.mkdir(parents=True, exist_ok=True)
    return work
