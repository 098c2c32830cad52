"""Prefect tasks over the asset core: one task run per asset, retried and cached by Prefect.

Parameters are plain data (asset name, project file, cache directory): the ``AssetManager`` is built inside
the task, so no client object or token is ever a Prefect parameter, and tokens stay in request headers.

Retries: the task makes one attempt per run (``manager.download(retry=False)``) and Prefect retries, with
the counts and delays of the asset's declaration (``for_asset``), only when the error is transient
(``flowmas.errors.is_transient``): a 503 is retried, a 401 or a checksum mismatch is not. A server's
``Retry-After`` wins over a shorter planned delay (``tasks.retries.transient_only`` waits the difference), as it does
in the core's own retry loop.

Caching, and why a deleted file is never handed back: the cache key is the asset's identity (declaration
hash, type, name, version) plus the cache directory; ``asset_cache_key`` returns it only when

    the entry is on disk and intact (``AssetCache.inspect``)  -> a hit returns a path that exists
    no cache record exists yet, or the flow asks to refresh   -> the run downloads and (re)writes it

and returns None otherwise (a record exists, the file is gone): the task runs and downloads again without
reading the old record. ``download-assets`` submits with ``refresh_cache=True`` whenever the entry is not
on disk, so the record is rewritten with the new download's size and time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, TypedDict, cast
from uuid import UUID

from prefect import Task, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

from blocks.assets import FlowmasAssets
from flowmas.assets.cleanup import Eviction, cleanup_cache, remove_expired_files
from flowmas.assets.manager import AssetManager
from flowmas.assets.manifest import AssetConfig
from flowmas.errors import explain
from tasks.logs import forward_core_logs
from tasks.retries import transient_only

log = logging.getLogger("flowmas.tasks")

MAX_RETRY_DELAYS = 50
"""Prefect accepts at most 50 explicit delays; later retries repeat the last one."""


class AssetDownload(TypedDict):
    name: str
    path: str
    size: int
    fetched: bool
    seconds: float


def manager_for(project_file: str | None, cache_dir: str | None, lock_timeout_seconds: float | None = None,
                **kwargs: Any) -> AssetManager:
    return FlowmasAssets(project_file=project_file, cache_dir=cache_dir,
                         lock_timeout_seconds=lock_timeout_seconds).manager(**kwargs)


# --- retries and caching --------------------------------------------------------------------------------


def asset_identity_key(asset: AssetConfig, cache_root: str) -> str:
    blob = json.dumps([asset.identity_hash(), asset.asset_type, asset.name, asset.version, cache_root])
    return "flowmas-asset-" + hashlib.sha256(blob.encode()).hexdigest()


def asset_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """The task's ``cache_key_fn``: the asset's identity, or None when a hit could return a deleted path."""
    if parameters.get("force"):
        return None
    with manager_for(parameters.get("project_file"), parameters.get("cache_dir")) as manager:
        asset = manager.asset(parameters["name"])
        key = asset_identity_key(asset, str(manager.cache.root.resolve()))
        state, _ = manager.cache.inspect(asset)
    if state == "cached":
        return key
    if context.task.refresh_cache or not context.result_store.exists(key):
        return key
    return None


# --- progress -------------------------------------------------------------------------------------------


class ProgressArtifact:
    """A progress listener that mirrors one download's bytes into a Prefect progress artifact.

    The core calls it at most once a second; ``finish`` says how the download ended (done or failed, and
    why), so an artifact never stays "Downloading" after a failure. A failure to report is logged once
    and never fails the download.
    """

    def __init__(self, asset: str) -> None:
        self.asset = asset
        self.key = "asset-progress-" + (re.sub(r"[^a-z0-9]+", "-", asset.lower()).strip("-") or "asset")
        self.artifact_id: UUID | None = None
        self.percent = 0.0
        self.broken = False

    def __call__(self, asset: str, done: int, total: int | None) -> None:
        if not total:
            return
        self.percent = min(100.0, 100.0 * done / total)
        self._report(f"Downloading {asset}")

    def finish(self, description: str) -> None:
        """The final word, only if the download reported progress at all."""
        if self.artifact_id is not None:
            self._report(description)

    def _report(self, description: str) -> None:
        if self.broken:
            return
        try:
            if self.artifact_id is None:
                self.artifact_id = cast(UUID, create_progress_artifact(  # type: ignore[call-arg]
                    self.percent, key=self.key, description=description, _sync=True))
            else:
                update_progress_artifact(self.artifact_id, self.percent,  # type: ignore[call-arg]
                                         description=description, _sync=True)
        except Exception as exc:  # noqa: BLE001 - progress is best effort
            self.broken = True
            log.warning("Cannot report download progress of %s to Prefect: %s", self.asset, exc)


# --- tasks ----------------------------------------------------------------------------------------------


@task(
    name="download-asset",
    task_run_name="download {name}",
    cache_key_fn=asset_cache_key,
    persist_result=True,
    result_serializer="json",
    retry_condition_fn=transient_only,
    tags=["flowmas-assets"],
)
def download_asset(
    name: str,
    project_file: str | None = None,
    cache_dir: str | None = None,
    force: bool = False,
    lock_timeout_seconds: float | None = None,
) -> AssetDownload:
    """Make sure one declared asset is in the cache; one attempt per run, Prefect owns the retries."""
    forward_core_logs()
    progress = ProgressArtifact(name)
    with manager_for(project_file, cache_dir, lock_timeout_seconds, progress_listeners=[progress],
                     terminal=False) as manager:
        try:
            result = manager.download(name, force=force, retry=False)
        except Exception as exc:
            progress.finish(f"Failed: {explain(exc).message}")
            raise
    progress.finish(f"Downloaded {name}")
    return AssetDownload(name=result.name, path=str(result.path), size=result.size, fetched=result.fetched,
                         seconds=round(result.seconds, 3))


def for_asset(asset: AssetConfig, *, max_delay: float, refresh: bool) -> Task[..., AssetDownload]:
    """``download_asset`` with the asset's retries: exponential backoff from its delay, capped, jittered."""
    count = min(asset.retries, MAX_RETRY_DELAYS)
    delays = [min(max_delay, asset.retry_delay_seconds * 2**n) for n in range(count)]
    if asset.retry_delay_seconds <= 0:
        return download_asset.with_options(retries=asset.retries, retry_delay_seconds=0, refresh_cache=refresh)
    return download_asset.with_options(retries=asset.retries, retry_delay_seconds=delays, retry_jitter_factor=0.2,
                                       refresh_cache=refresh)


@task(name="verify-asset", task_run_name="verify {name}", result_serializer="json", tags=["flowmas-assets"])
def verify_asset(name: str, project_file: str | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """Re-hash one cached asset against its record and declared checksum."""
    forward_core_logs()
    with manager_for(project_file, cache_dir) as manager:
        return manager.verify(name).model_dump()


@task(name="clear-assets", result_serializer="json", tags=["flowmas-assets"])
def clear_assets(names: list[str] | None, project_file: str | None = None, cache_dir: str | None = None,
                 lock_timeout_seconds: float | None = None) -> list[str]:
    """Remove the named assets' entries (or every entry when ``names`` is None); returns what was removed."""
    forward_core_logs()
    with manager_for(project_file, cache_dir, lock_timeout_seconds) as manager:
        if names is None:
            removed = [entry.key for entry in manager.cache.entries()]
            manager.clear_all()
            return removed
        return [name for name in names if manager.clear(name)]


@task(name="cleanup-asset-cache", result_serializer="json", tags=["flowmas-assets"])
def cleanup_asset_cache(
    project_file: str | None = None,
    cache_dir: str | None = None,
    max_unused_days: float | None = None,
    max_total_bytes: int | None = None,
    part_max_age_hours: float | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Evict undeclared, stale, unused and over-budget entries, and old leftovers (flowmas.assets.cleanup)."""
    forward_core_logs()
    part_max_age = timedelta(hours=part_max_age_hours) if part_max_age_hours is not None else None
    with manager_for(project_file, cache_dir) as manager:
        report = cleanup_cache(manager.cache, manager.project, max_unused_days=max_unused_days,
                               max_total_bytes=max_total_bytes, part_max_age=part_max_age)

    def rows(evictions: list[Eviction], action: str) -> list[dict[str, Any]]:
        return [{"what": e.entry.key, "action": action, "reason": e.describe(), "bytes": e.size}
                for e in evictions]

    return {
        "evicted": rows(report.evicted, "evicted"),
        "skipped": rows(report.skipped, "skipped (in use)"),
        "leftovers": [{"what": str(p), "action": "removed", "reason": "stale leftover", "bytes": 0}
                      for p in report.leftovers],
    }


@task(name="remove-expired-results", result_serializer="json")
def remove_expired_results(directory: str, max_age_days: float) -> list[str]:
    """Delete Prefect result and cache-record files older than ``max_age_days`` (Prefect never does)."""
    forward_core_logs()
    return [str(p) for p in remove_expired_files(Path(directory), timedelta(days=max_age_days))]
