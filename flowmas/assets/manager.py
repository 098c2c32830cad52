"""``AssetManager``: the one entry point to declared assets, for agents, the CLI and the Prefect tasks.

A request goes: fast hit (no lock, no hash) -> in-flight coalescing (coroutines of one event loop share
one download) -> the entry's lock (threads, then processes) -> a second look, which is how waiters get
the winner's file -> fetch into the ``.part`` with retries -> verify -> publish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from flowmas.assets import auth
from flowmas.assets.cache import AssetCache, CacheEntry, EntryState
from flowmas.assets.cleanup import remove_stale_parts
from flowmas.assets.http import HttpSource
from flowmas.assets.hub import HubSource
from flowmas.assets.local import LocalSource
from flowmas.assets.manifest import AssetConfig, HttpSourceConfig, HubSourceConfig
from flowmas.assets.progress import ProgressListener, TransferProgress
from flowmas.assets.record import Fetched
from flowmas.assets.retry import Backoff
from flowmas.assets.streaming import sha256_file
from flowmas.assets.unpack import UnpackLimits
from flowmas.errors import AssetNotCachedError, ChecksumMismatchError, TransientError, UnsafeArchiveError
from flowmas.settings import FlowmasSettings, Project, assets_cache_dir, load_project

log = logging.getLogger("flowmas.assets")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class AssetStatus(_Model):
    """One row of ``flowmas assets list``: what is declared and what the cache holds, without hashing."""

    name: str
    version: str
    asset_type: str
    source: str
    checksum: str | None
    status: EntryState
    path: Path | None


class DownloadResult(_Model):
    name: str
    path: Path
    fetched: bool
    """False when the cache already had it (possibly because another process just fetched it)."""
    size: int
    seconds: float


class VerifyResult(_Model):
    name: str
    status: Literal["verified", "not_cached", "stale", "failed"]
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "verified"


class AssetManager:
    """Declared assets of one project, fetched into one cache shared by every process on the machine."""

    def __init__(
        self,
        project: Project | None = None,
        *,
        settings: FlowmasSettings | None = None,
        cache_dir: Path | None = None,
        secret_resolver: auth.SecretResolver | None = None,
        progress_listeners: list[ProgressListener] | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.settings = settings or FlowmasSettings()
        self.project = project if project is not None else load_project(settings=self.settings)
        self.cache = AssetCache(cache_dir or assets_cache_dir(self.project, self.settings))
        self.secret_resolver = secret_resolver
        self.progress_listeners = list(progress_listeners or [])
        self.terminal = terminal
        self.limits = UnpackLimits(
            max_total_bytes=self.settings.unpack_max_bytes, max_members=self.settings.unpack_max_members
        )
        self._http: HttpSource | None = None
        self._inflight: dict[tuple[int, str, bool], asyncio.Future[DownloadResult]] = {}

    # --- queries --------------------------------------------------------------------------------------

    def asset(self, name: str) -> AssetConfig:
        return self.project.asset(name)

    def select(self, names: list[str] | None = None) -> list[AssetConfig]:
        """The named assets in the given order, or every declared one; an unknown name is an error."""
        return [self.asset(name) for name in names] if names is not None else list(self.project.assets)

    def status(self, name: str) -> AssetStatus:
        asset = self.asset(name)
        state, record = self.cache.inspect(asset)
        path = None
        if state == "cached" and record is not None:
            directory = self.cache.entry_dir(asset)
            path = directory / record.path if record.path != "." else directory
        return AssetStatus(
            name=asset.name, version=asset.version, asset_type=asset.asset_type, source=asset.describe_source(),
            checksum=asset.checksum, status=state, path=path,
        )

    def list_assets(self) -> list[AssetStatus]:
        return [self.status(asset.name) for asset in self.project.assets]

    # --- fetching -------------------------------------------------------------------------------------

    async def get_asset_path(self, name: str, force_download: bool = False) -> Path:
        """The local path of a declared asset, downloading it first if needed (never blocks the loop)."""
        asset = self.asset(name)
        if not force_download and (path := self.cache.lookup(asset)) is not None:
            return path
        loop = asyncio.get_running_loop()
        key = (id(loop), asset.key, force_download)
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(self.download, name, force=force_download))
            self._inflight[key] = future
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
        return (await asyncio.shield(future)).path

    def get_asset_path_sync(self, name: str, force_download: bool = False) -> Path:
        """Blocking twin of ``get_asset_path``."""
        asset = self.asset(name)
        if not force_download and (path := self.cache.lookup(asset)) is not None:
            return path
        return self.download(name, force=force_download).path

    async def prefetch(self, agent_name: str) -> dict[str, Path]:
        """Fetch every ``required_assets`` entry of an agent, concurrently."""
        names = self.project.agent(agent_name).required_assets
        paths = await asyncio.gather(*(self.get_asset_path(name) for name in names))
        return dict(zip(names, paths, strict=True))

    def prefetch_sync(self, agent_name: str) -> dict[str, Path]:
        return {name: self.get_asset_path_sync(name) for name in self.project.agent(agent_name).required_assets}

    def download(self, name: str, *, force: bool = False, retry: bool = True) -> DownloadResult:
        """Make sure one asset is cached, under its lock. ``retry=False`` makes one attempt (Prefect retries)."""
        asset = self.asset(name)
        started = time.monotonic()
        if not force and (path := self.cache.lookup(asset)) is not None:
            return self._result(asset, path, False, started)
        with self.cache.locked(asset.key, timeout=self.settings.lock_timeout_seconds,
                               log_every=self.settings.lock_log_interval_seconds, asset=asset.name):
            if not force and (path := self.cache.lookup(asset)) is not None:
                return self._result(asset, path, False, started)  # another process fetched it meanwhile
            if force:
                self.cache.discard_part(asset)
            fetched = self._fetch_with_retries(asset, attempts=asset.retries + 1 if retry else 1)
            self._check(asset, fetched)
            try:
                path = self.cache.publish(asset, self.cache.part_path(asset), fetched, self.limits)
            except UnsafeArchiveError:
                self.cache.discard_part(asset)
                raise
        log.info("Fetched %s (%s) into %s", asset.name, asset.describe_source(), path)
        return self._result(asset, path, True, started)

    def _fetch_with_retries(self, asset: AssetConfig, attempts: int) -> Fetched:
        backoff = Backoff(base=asset.retry_delay_seconds, cap=self.settings.max_retry_delay_seconds)
        for attempt in range(attempts):
            try:
                return self._fetch(asset)
            except TransientError as exc:
                if attempt + 1 >= attempts:
                    raise
                delay = backoff.delay(attempt, exc)
                log.warning("%s (attempt %d of %d); retrying in %.1f s", exc, attempt + 1, attempts, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _fetch(self, asset: AssetConfig) -> Fetched:
        part = self.cache.part_path(asset)
        part.parent.mkdir(parents=True, exist_ok=True)
        progress = TransferProgress(
            asset.name,
            enabled=asset.progress_report and not isinstance(asset.source, HubSourceConfig),
            interval_mb=asset.progress_report_interval_mb,
            listeners=self.progress_listeners,
            terminal=self.terminal,
        )
        try:
            if isinstance(asset.source, HttpSourceConfig):
                headers = auth.http_headers(asset, self.secret_resolver)
                return self._http_source().fetch(asset, part, headers, progress)
            if isinstance(asset.source, HubSourceConfig):
                return HubSource().fetch(asset, part, auth.hub_token(asset, self.secret_resolver), progress)
            return LocalSource().fetch(asset, part, progress)
        finally:
            progress.close()

    def _check(self, asset: AssetConfig, fetched: Fetched) -> None:
        if asset.checksum is None:
            return
        actual = f"sha256:{fetched.sha256}"
        if actual != asset.checksum:
            self.cache.discard_part(asset)
            raise ChecksumMismatchError(
                asset=asset.name, expected=asset.checksum, actual=actual, source=asset.describe_source()
            )

    def _http_source(self) -> HttpSource:
        if self._http is None:
            self._http = HttpSource(self.settings.http_connect_timeout, self.settings.http_read_timeout)
        return self._http

    def _result(self, asset: AssetConfig, path: Path, fetched: bool, started: float) -> DownloadResult:
        size = path.stat().st_size if path.is_file() else 0
        return DownloadResult(name=asset.name, path=path, fetched=fetched, size=size,
                              seconds=time.monotonic() - started)

    # --- verification and removal ---------------------------------------------------------------------

    def verify(self, name: str) -> VerifyResult:
        """Re-hash a cached asset against its record and its declared checksum (slow on purpose)."""
        asset = self.asset(name)
        directory = self.cache.entry_dir(asset)
        record = self.cache.read_record(directory)
        if record is None:
            return VerifyResult(name=name, status="not_cached")
        if record.identity != asset.identity_hash():
            return VerifyResult(name=name, status="stale",
                                detail="the declaration changed since it was downloaded; download it again")
        problems: list[str] = []
        if record.files is not None:
            for entry in record.files:
                path = directory / entry.path
                if not path.is_file():
                    problems.append(f"{entry.path}: missing")
                elif path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
                    problems.append(f"{entry.path}: content changed")
        else:
            path = directory / record.path
            if not path.is_file():
                problems.append(f"{record.path}: missing")
            else:
                digest = sha256_file(path)
                if digest != record.sha256:
                    problems.append(f"{record.path}: sha256 {digest} differs from the recorded {record.sha256}")
                elif asset.checksum and f"sha256:{digest}" != asset.checksum:
                    problems.append(f"{record.path}: sha256 does not match the declared checksum")
        if problems:
            return VerifyResult(name=name, status="failed", detail="; ".join(problems[:5]))
        return VerifyResult(name=name, status="verified")

    async def averify(self, name: str) -> VerifyResult:
        return await asyncio.to_thread(self.verify, name)

    def require_cached(self, name: str) -> Path:
        """The cached path, or ``AssetNotCachedError`` (for callers that must not download)."""
        asset = self.asset(name)
        path = self.cache.lookup(asset)
        if path is None:
            raise AssetNotCachedError(
                f"Asset {name!r} is not cached; run `flowmas assets download {name}`.", asset=name
            )
        return path

    def clear(self, name: str) -> bool:
        """Remove one declared asset's cache entry and partial downloads, under its lock."""
        asset = self.asset(name)
        with self.cache.locked(asset.key, timeout=self.settings.lock_timeout_seconds,
                               log_every=self.settings.lock_log_interval_seconds, asset=name):
            existed = self.cache.entry_dir(asset).exists()
            self.cache.remove(self.cache.entry_dir(asset))
            self.cache.discard_part(asset)
        return existed

    def clear_all(self) -> int:
        """Remove every entry in the cache (declared or not), each under its lock; returns how many."""
        removed = 0
        for entry in list(self.cache.entries()):
            self.remove_entry(entry)
            removed += 1
        remove_stale_parts(self.cache, timedelta(0))  # under each entry's lock: a running download keeps its .part
        return removed

    def remove_entry(self, entry: CacheEntry) -> None:
        with self.cache.locked(entry.key, timeout=self.settings.lock_timeout_seconds,
                               log_every=self.settings.lock_log_interval_seconds, asset=entry.name):
            self.cache.remove(entry.directory)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> AssetManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

