"""Cache housekeeping: decide what to evict (a pure plan), then evict without ever breaking a download.

A cache may be shared by several projects (the default one is). Every entry records the project that
fetched it, and a project judges declarations only for its own entries: another project's asset is never
"not declared" or "stale" here. Why an entry is evicted, first matching reason wins:

    damaged            its ``record.json`` cannot be read (nothing can trust or use it)     any entry
    not declared       this project no longer declares its type/name/version               own entries
    stale              this project's declaration changed since the download               own entries
    unused             not used (record.json's mtime) for longer than ``max_unused_days``  any entry
    over size budget   what is left exceeds ``max_total_bytes``: least recently used first  any entry

Invariants: ``plan_cleanup`` reads no clock, and no disk beyond ``size_of`` (entries, declarations and
``now`` go in), so every rule is tested directly. The executors take each entry's lock without waiting
and skip what is busy, so a running download is never broken (the next cleanup gets it); an entry whose
record or last use changed between planning and eviction (someone used or re-downloaded it) is left
alone. Prefect's result and cache-record files are removed by age only: Prefect never deletes them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from flowmas.assets.cache import AssetCache, CacheEntry
from flowmas.assets.record import ProjectRef
from flowmas.settings import Project

Reason = Literal["damaged", "not declared", "stale", "unused", "over size budget"]


@dataclass(frozen=True)
class Eviction:
    entry: CacheEntry
    reason: Reason
    size: int

    def describe(self) -> str:
        if self.reason in ("unused", "over size budget"):
            return f"{self.reason} (last used {self.entry.last_used:%Y-%m-%d %H:%M} UTC)"
        return self.reason


@dataclass(frozen=True)
class CleanupReport:
    evicted: list[Eviction] = field(default_factory=list)
    skipped: list[Eviction] = field(default_factory=list)
    """Planned but left alone: the entry was busy (being downloaded) or changed since planning."""
    leftovers: list[Path] = field(default_factory=list)
    """Stale ``.part`` files, sidecars, staging and trash directories that were removed."""

    @property
    def freed_bytes(self) -> int:
        return sum(e.size for e in self.evicted)


def declared_identities(project: Project) -> dict[str, str]:
    """``type/name/version`` -> identity hash of every asset the project declares."""
    return {asset.key: asset.identity_hash() for asset in project.assets}


def plan_cleanup(
    entries: Iterable[CacheEntry],
    declared: Mapping[str, str],
    *,
    project: ProjectRef,
    now: datetime,
    max_unused_days: float | None = None,
    max_total_bytes: int | None = None,
    size_of: Callable[[CacheEntry], int] = CacheEntry.size_on_disk,
) -> list[Eviction]:
    """What to evict and why; ``declared`` maps ``type/name/version`` to ``project``'s declaration hashes."""
    evictions: list[Eviction] = []
    kept: list[tuple[CacheEntry, int]] = []
    unused_before = now - timedelta(days=max_unused_days) if max_unused_days is not None else None
    for entry in entries:
        size = size_of(entry)
        reason = _rule_reason(entry, declared, project, unused_before)
        if reason is not None:
            evictions.append(Eviction(entry, reason, size))
        else:
            kept.append((entry, size))
    if max_total_bytes is not None:
        total = sum(size for _, size in kept)
        by_last_use = sorted(kept, key=lambda item: item[0].last_used)
        for entry, size in by_last_use:
            if total <= max_total_bytes:
                break
            evictions.append(Eviction(entry, "over size budget", size))
            total -= size
    return evictions


def _rule_reason(
    entry: CacheEntry, declared: Mapping[str, str], project: ProjectRef, unused_before: datetime | None
) -> Reason | None:
    record = entry.record
    if record is None:
        return "damaged"
    if project.owns(record.project):
        if entry.key not in declared:
            return "not declared"
        if record.identity != declared[entry.key]:
            return "stale"
    if unused_before is not None and entry.last_used < unused_before:
        return "unused"
    return None


def evict(cache: AssetCache, evictions: Iterable[Eviction]) -> tuple[list[Eviction], list[Eviction]]:
    """Remove planned entries, each under its lock taken without waiting; returns (evicted, skipped)."""
    evicted: list[Eviction] = []
    skipped: list[Eviction] = []
    for eviction in evictions:
        entry = eviction.entry
        with cache.try_locked(entry.key) as held:
            if held and _unchanged(cache, entry):
                cache.remove(entry.directory)
                evicted.append(eviction)
            else:
                skipped.append(eviction)
    return evicted, skipped


def _unchanged(cache: AssetCache, entry: CacheEntry) -> bool:
    """The entry is as planned: same record, not used since (a hit touches record.json)."""
    if not entry.directory.exists():
        return False
    current = cache.entry_at(entry.directory)
    return current.record == entry.record and current.last_used == entry.last_used


def remove_stale_parts(
    cache: AssetCache, older_than: timedelta, *, now: datetime | None = None
) -> list[Path]:
    """Remove what interrupted runs left in ``.work`` (``.part`` files, staging, trash) untouched for ``older_than``.

    Each is removed under its entry's lock taken without waiting, so the ``.part`` of a download that is
    running (however slowly) is never deleted.
    """
    cutoff = (now or datetime.now(UTC)).timestamp() - older_than.total_seconds()
    removed: list[Path] = []
    for key, work in list(cache.work_dirs()):
        stale = [path for path in sorted(work.iterdir()) if _older_than(path, cutoff)]
        if not stale:
            continue
        with cache.try_locked(key) as held:
            if not held:
                continue
            for path in stale:
                if _older_than(path, cutoff):  # look again: the lock holder may just have written it
                    _remove(path)
                    removed.append(path)
            with contextlib.suppress(OSError):
                work.rmdir()
    return removed


def remove_expired_files(
    directory: Path, older_than: timedelta, *, now: datetime | None = None
) -> list[Path]:
    """Delete files under ``directory`` not modified for ``older_than`` (Prefect result/cache records).

    Symlinks are never followed; directories left empty are removed, ``directory`` itself is kept.
    """
    if not directory.is_dir():
        return []
    cutoff = (now or datetime.now(UTC)).timestamp() - older_than.total_seconds()
    removed: list[Path] = []
    for root, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            path = Path(root, name)
            if not path.is_symlink() and _older_than(path, cutoff):
                path.unlink(missing_ok=True)
                removed.append(path)
        for name in dirs:
            sub = Path(root, name)
            if not sub.is_symlink():
                with contextlib.suppress(OSError):
                    sub.rmdir()  # only succeeds when empty
    return sorted(removed)


def cleanup_cache(
    cache: AssetCache,
    project: Project,
    *,
    max_unused_days: float | None = None,
    max_total_bytes: int | None = None,
    part_max_age: timedelta | None = None,
    now: datetime | None = None,
) -> CleanupReport:
    """Plan and evict, then remove stale leftovers: the one call the ``cleanup-cache`` flow makes."""
    now = now or datetime.now(UTC)
    plan = plan_cleanup(cache.entries(), declared_identities(project), project=project.ref, now=now,
                        max_unused_days=max_unused_days, max_total_bytes=max_total_bytes)
    evicted, skipped = evict(cache, plan)
    leftovers = remove_stale_parts(cache, part_max_age, now=now) if part_max_age is not None else []
    return CleanupReport(evicted=evicted, skipped=skipped, leftovers=leftovers)


def _older_than(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
