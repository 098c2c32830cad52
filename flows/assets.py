"""Asset flows: the entrypoints ``prefect.yaml`` deploys (``flows/assets.py:<function>``).

Each flow resolves its configuration once (explicit parameters, else the named ``FlowmasAssets`` block,
else FLOWMAS_* discovery), fans out one task per asset with bounded concurrency, reports a table artifact,
and fails only after every asset has finished, naming the ones that failed. Parameters and artifacts hold
names, paths, sizes and redacted sources: never a token.
"""

from __future__ import annotations

from typing import Annotated, Any, cast
from uuid import UUID

from prefect import flow
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture, as_completed
from prefect.settings import get_current_settings
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from blocks.assets import FlowmasAssets
from flowmas.assets.manifest import AssetConfig
from flowmas.errors import AssetError, explain
from flowmas.settings import FlowmasSettings
from flowmas.text import human_size
from tasks.assets import (
    AssetDownload,
    cleanup_asset_cache,
    clear_assets,
    for_asset,
    remove_expired_results,
    verify_asset,
)
from tasks.graph import cleanup_graph_task
from tasks.logs import forward_core_logs


def assets_config(project_file: str | None, cache_dir: str | None, block: str | None) -> FlowmasAssets:
    """Explicit parameters win over ``block`` (a saved FlowmasAssets), which wins over FLOWMAS_* settings."""
    forward_core_logs()
    base = cast(FlowmasAssets, FlowmasAssets.load(block, _sync=True)) if block else FlowmasAssets()  # type: ignore[call-arg]
    config = FlowmasAssets(
        project_file=project_file or base.project_file,
        cache_dir=cache_dir or base.cache_dir,
        lock_timeout_seconds=base.lock_timeout_seconds,
        max_concurrency=base.max_concurrency,
    )
    config.project_file = config.resolved_project_file()
    return config


def failure_detail(state: State[Any]) -> str:
    """What failed, as the CLI would say it (``flowmas.errors.explain``)."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, BaseException):
        return explain(exc).message
    return state.message or state.name or "failed"


class FlowProgress:
    """How many of the flow's assets are finished, and how many of those failed, as a progress artifact."""

    def __init__(self, key: str, total: int) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.artifact_id = cast(UUID, create_progress_artifact(  # type: ignore[call-arg]
            0.0, key=key, description=self._describe(), _sync=True))

    def advance(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        update_progress_artifact(self.artifact_id, 100.0 * self.done / max(self.total, 1),  # type: ignore[call-arg]
                                 description=self._describe(), _sync=True)

    def _describe(self) -> str:
        ready = self.done - self.failed
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.done} of {self.total} assets finished: {ready} ready{failed}"


def _fail_if_any(rows: list[dict[str, Any]], what: str) -> None:
    failed = [row for row in rows if row["status"] == "failed"]
    if failed:
        listed = "".join(f"\n- {row['asset']}: {row['detail']}" for row in failed)
        raise AssetError(f"{len(failed)} of {len(rows)} assets failed to {what}:{listed}")


@flow(name="download-assets", persist_result=True, result_serializer="json")
def download_assets(
    names: list[str] | None = None,
    force: bool = False,
    project_file: str | None = None,
    cache_dir: str | None = None,
    block: str | None = None,
    max_concurrency: Annotated[int, Field(ge=1)] | None = None,
) -> list[dict[str, Any]]:
    """Fetch the named assets (default: every declared one), ``max_concurrency`` at a time."""
    config = assets_config(project_file, cache_dir, block)
    with config.manager() as manager:
        assets = manager.select(names)
        on_disk = {asset.name: manager.status(asset.name).status == "cached" for asset in assets}
        cache_root = str(manager.cache.root.resolve())
        max_delay = manager.settings.max_retry_delay_seconds
    parameters = {"project_file": config.project_file, "cache_dir": cache_root, "force": force,
                  "lock_timeout_seconds": config.lock_timeout_seconds}
    progress = FlowProgress("download-assets-progress", len(assets))
    futures: dict[PrefectFuture[AssetDownload], AssetConfig] = {}
    runner: Any  # Prefect types submit() for async tasks only
    with ThreadPoolTaskRunner(max_workers=max_concurrency or config.max_concurrency) as runner:
        for asset in assets:
            task = for_asset(asset, max_delay=max_delay, refresh=force or not on_disk[asset.name])
            futures[runner.submit(task, {"name": asset.name, **parameters})] = asset
        for future in as_completed(list(futures)):
            future.wait()  # records the final state on the future (as_completed does not)
            progress.advance(failed=not future.state.is_completed())
    rows = [_download_row(asset, future.state) for future, asset in futures.items()]
    ready = sum(row["status"] != "failed" for row in rows)
    create_table_artifact(rows, key="download-assets",  # type: ignore[call-arg]
                          description=f"{ready} of {len(rows)} assets ready in {cache_root}", _sync=True)
    _fail_if_any(rows, "download")
    return rows


def _download_row(asset: AssetConfig, state: State[AssetDownload]) -> dict[str, Any]:
    """One table row; what matters first (the asset, its status, the error or the path), details after."""
    row: dict[str, Any] = {"asset": asset.name}
    if not state.is_completed():
        return row | {"status": "failed", "detail": failure_detail(state), "version": asset.version,
                      "source": asset.describe_source(), "size": "", "bytes": 0, "seconds": None}
    result: AssetDownload = state.result()
    fetched = result["fetched"] and state.name != "Cached"
    return row | {
        "status": "fetched" if fetched else "cached",
        "detail": result["path"],
        "version": asset.version,
        "source": asset.describe_source(),
        "size": human_size(result["size"]),
        "bytes": result["size"],
        "seconds": result["seconds"] if fetched else 0.0,
    }


@flow(name="verify-assets", persist_result=True, result_serializer="json")
def verify_assets(
    names: list[str] | None = None,
    project_file: str | None = None,
    cache_dir: str | None = None,
    block: str | None = None,
    max_concurrency: Annotated[int, Field(ge=1)] | None = None,
) -> list[dict[str, Any]]:
    """Re-hash cached assets; fails when any cached asset no longer matches its record or checksum."""
    config = assets_config(project_file, cache_dir, block)
    with config.manager() as manager:
        selected = [asset.name for asset in manager.select(names)]
        cache_root = str(manager.cache.root.resolve())
    verifier: Any  # Prefect types submit() for async tasks only
    with ThreadPoolTaskRunner(max_workers=max_concurrency or config.max_concurrency) as verifier:
        parameters = {"project_file": config.project_file, "cache_dir": cache_root}
        futures: dict[str, PrefectFuture[dict[str, Any]]] = {
            name: verifier.submit(verify_asset, {"name": name, **parameters}) for name in selected}
        for future in futures.values():
            future.wait()
    rows = []
    for name, future in futures.items():
        state = future.state
        if state.is_completed():
            result = state.result()
            rows.append({"asset": name, "status": result["status"], "detail": result["detail"]})
        else:
            rows.append({"asset": name, "status": "failed", "detail": failure_detail(state)})
    create_table_artifact(rows, key="verify-assets",  # type: ignore[call-arg]
                          description=f"Verified in {cache_root}", _sync=True)
    _fail_if_any(rows, "verify")
    return rows


@flow(name="clear-asset-cache", persist_result=True, result_serializer="json")
def clear_asset_cache(
    names: list[str] | None = None,
    project_file: str | None = None,
    cache_dir: str | None = None,
    block: str | None = None,
) -> list[str]:
    """Remove the named assets from the cache, or every entry (declared or not) when no names are given."""
    config = assets_config(project_file, cache_dir, block)
    removed = clear_assets(names, config.project_file, config.cache_dir, config.lock_timeout_seconds)
    rows = [{"removed": key} for key in removed] or [{"removed": "(nothing was cached)"}]
    create_table_artifact(rows, key="clear-asset-cache", _sync=True)  # type: ignore[call-arg]
    return removed


@flow(name="cleanup-cache", persist_result=True, result_serializer="json")
def cleanup_cache(
    max_unused_days: float | None = 30,
    max_total_bytes: int | None = None,
    part_max_age_hours: float | None = 24,
    result_max_age_days: float | None = 30,
    result_dir: str | None = None,
    project_file: str | None = None,
    cache_dir: str | None = None,
    block: str | None = None,
    graph_runs: bool = True,
    graph_retention_seconds: Annotated[float, Field(gt=0)] | None = None,
    cache_block: str | None = None,
) -> dict[str, Any]:
    """Evict what the configuration no longer needs, then Prefect's expired result and cache-record files, then
    finished agent-graph runs' cache namespaces and snapshots.

    ``result_dir`` defaults to Prefect's local result storage (PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    ``$PREFECT_HOME/storage``), where the download task's cache records live. Graph runs (``graph_runs``)
    are kept ``graph_retention_seconds`` after they finished (default FLOWMAS_GRAPH_RETENTION_SECONDS, 7 days),
    in the cache of ``cache_block`` (else FLOWMAS_CACHE_URL, else the embedded one) and FLOWMAS_SNAPSHOT_DIR.
    """
    config = assets_config(project_file, cache_dir, block)
    report = cleanup_asset_cache(config.project_file, config.cache_dir, max_unused_days, max_total_bytes,
                                 part_max_age_hours)
    rows = report["evicted"] + report["skipped"] + report["leftovers"]
    results: list[str] = []
    if result_max_age_days is not None:
        directory = result_dir or str(get_current_settings().results.local_storage_path)
        results = remove_expired_results(directory, result_max_age_days)
        rows.append({"what": directory, "action": f"removed {len(results)} files",
                     "reason": f"Prefect results older than {result_max_age_days:g} days", "bytes": 0})
    graph_rows: list[dict[str, Any]] = []
    if graph_runs:
        retention = graph_retention_seconds or FlowmasSettings().graph_retention_seconds
        graph_rows = cleanup_graph_task(retention, None, cache_block)
        rows += [{**row, "bytes": 0} for row in graph_rows]
    freed = sum(row["bytes"] for row in report["evicted"])
    rows = rows or [{"what": "(nothing)", "action": "kept", "reason": "", "bytes": 0}]
    create_table_artifact(rows, key="cleanup-cache",  # type: ignore[call-arg]
                          description=f"Freed {human_size(freed)}", _sync=True)
    return {**report, "results": results, "graph_runs": graph_rows}
