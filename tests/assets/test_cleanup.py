"""Tests for flowmas.assets.cleanup: real entries published by AssetManager from local sources in tmp_path.

Every test checks what was removed and what is left on disk: evicted version directories are gone (and no
trash is left), kept entries still resolve through the manager, lock files are never deleted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flowmas.assets.cache import RECORD, AssetCache, CacheEntry
from flowmas.assets.cleanup import (
    Eviction,
    cleanup_cache,
    declared_identities,
    evict,
    plan_cleanup,
    remove_expired_files,
    remove_stale_parts,
)
from flowmas.assets.manager import AssetManager
from flowmas.settings import FlowmasSettings, Project, project_from_dict

NOW = datetime.now(UTC)
KiB = 1024


# --- helpers ----------------------------------------------------------------------------------------


def project(
    tmp_path: Path, sizes: dict[str, int], *, version: str = "v1", source_suffix: str = ""
) -> Project:
    """A project of local-source assets ``name -> size in bytes``; the source files are written once."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    assets = []
    for name, size in sizes.items():
        file = src / f"{name}{source_suffix}.bin"
        if not file.exists():
            file.write_bytes(os.urandom(size))
        assets.append({"name": name, "version": version, "source": {"type": "local", "path": str(file)}})
    return project_from_dict({"name": "p", "assets": assets}, base_dir=tmp_path,
                             source=str(tmp_path / "flowmas.yaml"))


def manager(proj: Project, cache_dir: Path) -> AssetManager:
    settings = FlowmasSettings(lock_timeout_seconds=5)
    return AssetManager(proj, settings=settings, cache_dir=cache_dir, terminal=False)


def publish(tmp_path: Path, cache_dir: Path, sizes: dict[str, int], **kwargs: str) -> AssetManager:
    m = manager(project(tmp_path, sizes, **kwargs), cache_dir)
    for name in sizes:
        assert m.download(name).fetched
    return m


def set_last_used(cache: AssetCache, key: str, when: datetime) -> None:
    """Last use is the record's mtime (a hit touches it)."""
    os.utime(cache.root / key / RECORD, (when.timestamp(), when.timestamp()))


def entries_by_key(cache: AssetCache) -> dict[str, CacheEntry]:
    return {e.key: e for e in cache.entries()}


def planned(evictions: list[Eviction]) -> dict[str, str]:
    return {e.entry.key: e.reason for e in evictions}


def age(path: Path, delta: timedelta) -> None:
    stamp = (NOW - delta).timestamp()
    os.utime(path, (stamp, stamp), follow_symlinks=False)


def no_trash(cache: AssetCache) -> bool:
    return not any(p.name.startswith("trash-") for _, work in cache.work_dirs() for p in work.iterdir())


Holder = Callable[[Path], None]


@pytest.fixture
def holder() -> Iterator[Holder]:
    """Hold a lock file from another process (as a running download would), until the test ends."""
    procs: list[subprocess.Popen[str]] = []

    def hold(lock_path: Path) -> None:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        code = ("import filelock, sys; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
                "print('held', flush=True); sys.stdin.read()")
        proc = subprocess.Popen([sys.executable, "-c", code, str(lock_path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"

    yield hold
    for proc in procs:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=10)


# --- planning ---------------------------------------------------------------------------------------


def test_plan_keeps_everything_declared_and_recent(tmp_path: Path, cache_dir: Path) -> None:
    m = publish(tmp_path, cache_dir, {"a": 10, "b": 20})
    plan = plan_cleanup(m.cache.entries(), declared_identities(m.project), project=m.project.ref, now=NOW,
                        max_unused_days=30, max_total_bytes=10_000)
    assert plan == []


def test_plan_evicts_undeclared_damaged_and_stale_entries(tmp_path: Path, cache_dir: Path) -> None:
    m = publish(tmp_path, cache_dir, {"keep": 10, "gone": 10, "broken": 10, "changed": 10})
    (m.cache.root / "model/broken/v1" / RECORD).write_text("{not json")
    # The new configuration: "gone" is no longer declared, "changed" now comes from another file.
    now_declared = project(tmp_path, {"keep": 10, "broken": 10})
    changed = project(tmp_path, {"changed": 10}, source_suffix="-new")
    declared = declared_identities(now_declared) | declared_identities(changed)

    plan = plan_cleanup(m.cache.entries(), declared, project=m.project.ref, now=NOW)

    assert planned(plan) == {"model/gone/v1": "not declared", "model/broken/v1": "damaged",
                             "model/changed/v1": "stale"}
    assert all(e.size > 10 for e in plan)  # the bytes plus the record file: what eviction frees


def test_plan_evicts_entries_unused_for_longer_than_the_limit(tmp_path: Path, cache_dir: Path) -> None:
    m = publish(tmp_path, cache_dir, {"old": 10, "recent": 10})
    set_last_used(m.cache, "model/old/v1", NOW - timedelta(days=31))
    set_last_used(m.cache, "model/recent/v1", NOW - timedelta(days=29))

    plan = plan_cleanup(m.cache.entries(), declared_identities(m.project), project=m.project.ref, now=NOW,
                        max_unused_days=30)

    assert planned(plan) == {"model/old/v1": "unused"}
    assert plan[0].describe().startswith("unused (last used ")


def test_plan_over_budget_evicts_least_recently_used_first_until_it_fits(
    tmp_path: Path, cache_dir: Path
) -> None:
    m = publish(tmp_path, cache_dir, {"a": 4 * KiB, "b": 4 * KiB, "c": 4 * KiB, "d": 4 * KiB})
    for days, name in ((1, "c"), (2, "a"), (3, "d"), (4, "b")):  # b is the least recently used
        set_last_used(m.cache, f"model/{name}/v1", NOW - timedelta(days=days))

    plan = plan_cleanup(m.cache.entries(), declared_identities(m.project), project=m.project.ref, now=NOW,
                        max_total_bytes=10 * KiB)

    assert [e.entry.key for e in plan] == ["model/b/v1", "model/d/v1"]  # 4 KiB + a record each
    assert {e.reason for e in plan} == {"over size budget"}


def test_plan_budget_counts_only_what_the_rules_keep(tmp_path: Path, cache_dir: Path) -> None:
    m = publish(tmp_path, cache_dir, {"a": 4 * KiB, "b": 4 * KiB, "undeclared": 8 * KiB})
    declared = declared_identities(project(tmp_path, {"a": 4 * KiB, "b": 4 * KiB}))

    plan = plan_cleanup(m.cache.entries(), declared, project=m.project.ref, now=NOW, max_total_bytes=10 * KiB)

    assert planned(plan) == {"model/undeclared/v1": "not declared"}


def test_plan_is_pure_sizes_come_from_the_caller(tmp_path: Path, cache_dir: Path) -> None:
    m = publish(tmp_path, cache_dir, {"a": 1, "b": 1})
    set_last_used(m.cache, "model/a/v1", NOW - timedelta(days=2))
    plan = plan_cleanup(m.cache.entries(), declared_identities(m.project), project=m.project.ref, now=NOW,
                        max_total_bytes=100,
                        size_of=lambda entry: 60)
    assert [(e.entry.key, e.size) for e in plan] == [("model/a/v1", 60)]


# --- eviction ---------------------------------------------------------------------------------------


def test_evict_removes_planned_entries_and_keeps_the_rest_usable(tmp_path: Path, cache_dir: Path) -> None:
    m = publish(tmp_path, cache_dir, {"keep": 10, "gone": 10})
    declared = declared_identities(project(tmp_path, {"keep": 10}))
    plan = plan_cleanup(m.cache.entries(), declared, project=m.project.ref, now=NOW)

    evicted, skipped = evict(m.cache, plan)

    assert [e.entry.key for e in evicted] == ["model/gone/v1"] and skipped == []
    assert not (cache_dir / "model/gone/v1").exists()
    assert m.status("keep").status == "cached" and m.status("gone").status == "not cached"
    assert (cache_dir / ".locks/model/gone/v1.lock").exists()  # lock files are kept on purpose
    assert no_trash(m.cache)


def test_evict_skips_an_entry_whose_lock_another_process_holds(
    tmp_path: Path, cache_dir: Path, holder: Holder
) -> None:
    m = publish(tmp_path, cache_dir, {"busy": 10, "idle": 10})
    plan = plan_cleanup(m.cache.entries(), {}, project=m.project.ref, now=NOW)
    holder(m.cache.lock_path("model/busy/v1"))

    evicted, skipped = evict(m.cache, plan)

    assert [e.entry.key for e in evicted] == ["model/idle/v1"]
    assert [e.entry.key for e in skipped] == ["model/busy/v1"]
    assert m.status("busy").status == "cached" and m.status("idle").status == "not cached"


def test_evict_leaves_an_entry_that_was_downloaded_again_after_planning(
    tmp_path: Path, cache_dir: Path
) -> None:
    m = publish(tmp_path, cache_dir, {"a": 10})
    plan = plan_cleanup(m.cache.entries(), {}, project=m.project.ref, now=NOW)
    assert m.download("a", force=True).fetched  # republished: a new record

    evicted, skipped = evict(m.cache, plan)

    assert evicted == [] and [e.entry.key for e in skipped] == ["model/a/v1"]
    assert m.status("a").status == "cached"


# --- leftovers --------------------------------------------------------------------------------------


def test_remove_stale_parts_removes_old_leftovers_only(tmp_path: Path, cache_dir: Path) -> None:
    m = publish(tmp_path, cache_dir, {"a": 10})
    asset = m.asset("a")
    part = m.cache.part_path(asset)
    part.parent.mkdir(parents=True)
    sidecar = part.with_name(part.name + ".json")
    staging = part.parent / "staging-0123456789ab"
    trash = part.parent / "trash-0123456789ab"
    part.write_bytes(b"partial")
    sidecar.write_text("{}")
    staging.mkdir()
    (staging / "file").write_bytes(b"x")
    (trash / "data").mkdir(parents=True)
    for path in (part, sidecar, staging, trash):
        age(path, timedelta(hours=48))
    fresh = m.cache.root / "model/a/.work/v2/0123456789ab.part"
    fresh.parent.mkdir()
    fresh.write_bytes(b"being written")

    removed = remove_stale_parts(m.cache, timedelta(hours=24), now=NOW)

    assert sorted(removed) == sorted([part, sidecar, staging, trash])
    assert not any(p.exists() for p in removed) and not part.parent.exists()
    assert fresh.exists()
    assert m.status("a").status == "cached"


def test_remove_stale_parts_never_touches_a_download_in_progress(
    tmp_path: Path, cache_dir: Path, holder: Holder
) -> None:
    m = manager(project(tmp_path, {"a": 10}), cache_dir)
    part = m.cache.part_path(m.asset("a"))
    part.parent.mkdir(parents=True)
    part.write_bytes(b"slow download")
    age(part, timedelta(days=3))  # stalled for days, but its download still holds the lock
    holder(m.cache.lock_path("model/a/v1"))

    assert remove_stale_parts(m.cache, timedelta(hours=1), now=NOW) == []
    assert part.read_bytes() == b"slow download"


def test_remove_expired_files_deletes_old_files_and_empty_directories(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    (storage / "nested/deeper").mkdir(parents=True)
    old_record = storage / "3f2a9c"
    new_record = storage / "b71e04"
    old_nested = storage / "nested/deeper/old"
    outside = tmp_path / "outside.txt"
    for path in (old_record, new_record, old_nested, outside):
        path.write_text("{}")
    link = storage / "link"
    link.symlink_to(outside)
    for path in (old_record, old_nested, outside, link):
        age(path, timedelta(days=10))

    removed = remove_expired_files(storage, timedelta(days=7), now=NOW)

    assert removed == sorted([old_record, old_nested])
    assert new_record.exists() and outside.exists() and link.is_symlink()
    assert not (storage / "nested").exists()  # emptied, so pruned
    assert storage.is_dir()


def test_remove_expired_files_of_a_missing_directory_is_a_no_op(tmp_path: Path) -> None:
    assert remove_expired_files(tmp_path / "absent", timedelta(days=1)) == []
    assert not (tmp_path / "absent").exists()


# --- the whole run ----------------------------------------------------------------------------------


def test_cleanup_cache_evicts_and_reports(tmp_path: Path, cache_dir: Path) -> None:
    m = publish(tmp_path, cache_dir, {"keep": 4 * KiB, "old": 4 * KiB, "gone": 4 * KiB})
    set_last_used(m.cache, "model/old/v1", NOW - timedelta(days=90))
    stale_part = m.cache.root / "model/keep/.work/v0/0123456789ab.part"
    stale_part.parent.mkdir(parents=True)
    stale_part.write_bytes(b"x")
    age(stale_part, timedelta(days=2))
    proj = project(tmp_path, {"keep": 4 * KiB, "old": 4 * KiB})

    report = cleanup_cache(m.cache, proj, max_unused_days=30, part_max_age=timedelta(hours=6), now=NOW)

    assert {e.entry.key: e.reason for e in report.evicted} == {"model/gone/v1": "not declared",
                                                             "model/old/v1": "unused"}
    assert report.skipped == [] and report.leftovers == [stale_part]
    assert report.freed_bytes == sum(e.size for e in report.evicted) > 8 * KiB
    assert sorted(entries_by_key(m.cache)) == ["model/keep/v1"]
    assert m.status("keep").status == "cached"


# --- a cache shared by projects ---------------------------------------------------------------------


def other_project(tmp_path: Path, sizes: dict[str, int]) -> Project:
    """Another project (its own file and name) declaring local assets, for a shared cache."""
    home = tmp_path / "other"
    home.mkdir(exist_ok=True)
    assets = []
    for name, size in sizes.items():
        (home / f"{name}.bin").write_bytes(os.urandom(size))
        assets.append({"name": name, "version": "v1", "source": {"type": "local", "path": f"{name}.bin"}})
    return project_from_dict({"name": "other", "assets": assets}, base_dir=home, source=str(home / "flowmas.yaml"))


def test_one_projects_cleanup_never_evicts_another_projects_assets_as_undeclared(
    tmp_path: Path, cache_dir: Path
) -> None:
    mine = publish(tmp_path, cache_dir, {"mine": 4 * KiB, "dropped": 4 * KiB})
    theirs = manager(other_project(tmp_path, {"theirs": 4 * KiB, "mine": 4 * KiB}), cache_dir)
    assert theirs.download("theirs").fetched
    now_mine = project(tmp_path, {"mine": 4 * KiB})  # "dropped" is no longer declared by this project

    report = cleanup_cache(mine.cache, now_mine, max_unused_days=30, now=NOW)

    assert {e.entry.key: e.reason for e in report.evicted} == {"model/dropped/v1": "not declared"}
    assert theirs.status("theirs").status == "cached"  # declared by the other project only: kept
    record = theirs.cache.read_record(cache_dir / "model/theirs/v1")
    assert record is not None and record.project is not None and record.project.name == "other"


def test_another_projects_entry_is_still_evicted_when_unused_or_damaged(tmp_path: Path, cache_dir: Path) -> None:
    mine = publish(tmp_path, cache_dir, {"mine": 10})
    theirs = manager(other_project(tmp_path, {"old": 10, "broken": 10}), cache_dir)
    for name in ("old", "broken"):
        theirs.download(name)
    set_last_used(theirs.cache, "model/old/v1", NOW - timedelta(days=60))
    (cache_dir / "model/broken/v1" / RECORD).write_text("{not json")

    plan = plan_cleanup(mine.cache.entries(), declared_identities(mine.project), project=mine.project.ref,
                        now=NOW, max_unused_days=30)

    assert planned(plan) == {"model/old/v1": "unused", "model/broken/v1": "damaged"}
