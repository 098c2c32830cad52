"""``AssetManager``: the one entry point to declared assets, for agents, the CLI and the Prefect tasks.

A request goes: fast hit (no lock, no hash) -> in-flight coalescing (coroutines of one event loop share
one download) -> the entry's lock (threads, then processes) -> sweep what killed runs left in the entry's
``.work`` -> a second look, which is how waiters get the winner's file -> fetch into the ``.part`` with
retries, under one deadline -> verify -> publish. Every failure leaves the cache as it was (plus, for a
transient one, a ``.part`` the next attempt resumes) and is raised as a ``FlowmasError`` that names the
asset: an ``OSError`` of the cache (a full disk, a read-only directory) included.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from flowmas.assets import auth
from flowmas.assets.cache import AssetCache, CacheEntry, EntryState, make_work
from flowmas.assets.deadline import Deadline
from flowmas.assets.http import HttpSource, Limits
from flowmas.assets.hub import HubSource
from flowmas.assets.local import LocalSource
from flowmas.assets.manifest import AssetConfig, HttpSourceConfig, HubSourceConfig
from flowmas.assets.progress import ProgressListener, TransferProgress
from flowmas.assets.record import Fetched
from flowmas.assets.retry import Backoff
from flowmas.assets.streaming import sha256_file
from flowmas.assets.unpack import UnpackLimits
from flowmas.errors import (
    AssetCacheError,
    AssetError,
    AssetNotCachedError,
    ChecksumMismatchError,
    DiskSpaceError,
    DownloadTimeoutError,
    FlowmasError,
    TransientError,
    UnpackError,
    UnsafeArchiveError,
    describe_os_error,
)
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
    status: Literal["verified", "not cached", "stale", "failed"]
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
            max_total_bytes=self.settings.unpack_max_bytes,
            max_members=self.settings.unpack_max_members,
            max_ratio=self.settings.unpack_max_ratio,
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
        path = self.cache.entry_dir(asset) / record.path if state == "cached" and record is not None else None
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
        self.cache.ensure_root()
        with self.cache.locked(asset.key, timeout=self.settings.lock_timeout_seconds,
                               log_every=self.settings.lock_log_interval_seconds, asset=asset.name):
            try:
                self.cache.sweep(asset, keep_part=not force)  # what killed runs left; --force starts over
                if not force and (path := self.cache.lookup(asset)) is not None:
                    return self._result(asset, path, False, started)  # another process fetched it meanwhile
                path = self._fetch_and_publish(asset, attempts=asset.retries + 1 if retry else 1)
            except FlowmasError:
                raise
            except OSError as exc:
                raise self._os_error(asset, exc) from None
            finally:
                self.cache.tidy(asset)
        log.info("Fetched %s (%s) into %s", asset.name, asset.describe_source(), path)
        return self._result(asset, path, True, started)

    def _fetch_and_publish(self, asset: AssetConfig, attempts: int) -> Path:
        fetched = self._fetch_with_retries(asset, attempts)
        self._check(asset, fetched)
        try:
            return self.cache.publish(asset, self.cache.part_path(asset), fetched, self.limits, self.project.ref,
                                      asset.source.redacted_identity())
        except (UnsafeArchiveError, UnpackError):
            self.cache.discard_part(asset)  # a bad archive is fetched again next time, not unpacked again
            raise

    def _fetch_with_retries(self, asset: AssetConfig, attempts: int) -> Fetched:
        deadline = Deadline(self.settings.download_deadline_seconds)
        backoff = Backoff(base=asset.retry_delay_seconds, cap=self.settings.max_retry_delay_seconds)
        for attempt in range(attempts):
            try:
                return self._fetch(asset, deadline)
            except TransientError as exc:
                last = attempt + 1 >= attempts or (isinstance(exc, DownloadTimeoutError) and deadline.expired)
                if last:
                    if attempt:
                        exc.args = (f"{exc} Gave up after {attempt + 1} attempts.",)
                    raise
                delay = min(backoff.delay(attempt, exc), deadline.remaining())
                log.warning("%s Retrying in %.1f s (attempt %d of %d).", exc, delay, attempt + 1, attempts)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _fetch(self, asset: AssetConfig, deadline: Deadline) -> Fetched:
        part = self.cache.part_path(asset)
        make_work(part.parent)
        progress = TransferProgress(
            asset.name,
            enabled=asset.progress_report,
            interval_mb=asset.progress_report_interval_mb,
            listeners=self.progress_listeners,
            terminal=self.terminal,
        )
        try:
            if isinstance(asset.source, HttpSourceConfig):
                headers = auth.http_headers(asset, self.secret_resolver)
                return self._http_source().fetch(asset.source.url, part, asset=asset.name, headers=headers,
                                                 progress=progress, deadline=deadline)
            if isinstance(asset.source, HubSourceConfig):
                return HubSource().fetch(asset, part, auth.hub_token(asset, self.secret_resolver), progress,
                                         http=self._http_source(), deadline=deadline)
            return LocalSource().fetch(asset, part, progress, cache_root=self.cache.root)
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

    def _os_error(self, asset: AssetConfig, exc: OSError) -> AssetError:
        """An OSError of the cache (the sources translate their own) as a sentence that names the asset."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskSpaceError(
                f"Asset {asset.name!r}: no space left on the device of the asset cache ({self.cache.root}) "
                "while writing it. Free some space or move the cache (FLOWMAS_ASSETS_DIR); a partial download "
                "is kept and resumes.", asset=asset.name)
        return AssetCacheError(f"Asset {asset.name!r}: the asset cache failed: {describe_os_error(exc)}",
                               asset=asset.name)

    def _http_source(self) -> HttpSource:
        if self._http is None:
            settings = self.settings
            self._http = HttpSource(Limits(
                connect_timeout=settings.http_connect_timeout, read_timeout=settings.http_read_timeout,
                min_speed=settings.http_min_speed, speed_window=settings.http_min_speed_window_seconds))
        return self._http

    def _result(self, asset: AssetConfig, path: Path, fetched: bool, started: float) -> DownloadResult:
        if path.is_file():
            size = path.stat().st_size
        else:
            record = self.cache.read_record(self.cache.entry_dir(asset))
            size = record.size if record is not None else 0
        return DownloadResult(name=asset.name, path=path, fetched=fetched, size=size,
                              seconds=time.monotonic() - started)

    # --- verification and removal ---------------------------------------------------------------------

    def verify(self, name: str) -> VerifyResult:
        """Re-hash a cached asset against its record and its declared checksum (slow on purpose)."""
        asset = self.asset(name)
        directory = self.cache.entry_dir(asset)
        record = self.cache.read_record(directory)
        if record is None:
            if directory.exists():
                return VerifyResult(name=name, status="failed",
                                    detail="its record is missing or unreadable; download it again with --force")
            return VerifyResult(name=name, status="not cached")
        if record.identity != asset.identity_hash():
            return VerifyResult(name=name, status="stale",
                                detail="the declaration changed since it was downloaded; download it again")
        problems: list[str] = []
        if record.file_count is not None:
            files = self.cache.read_files(directory)
            if files is None or len(files) != record.file_count:
                problems.append("files.json: missing or damaged")
            for entry in files or []:
                path = directory / record.path / entry.path
                if not path.is_file():
                    problems.append(f"{entry.path}: missing")
                elif path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
                    problems.append(f"{entry.path}: content changed")
        else:
            path = directory / record.path
            if not path.is_file():
                problems.append(f"{asset.filename}: missing")
            else:
                digest = sha256_file(path)
                if digest != record.sha256:
                    problems.append(f"{asset.filename}: sha256 {digest} differs from the recorded {record.sha256}")
                elif asset.checksum and f"sha256:{digest}" != asset.checksum:
                    problems.append(f"{asset.filename}: sha256 does not match the declared checksum")
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            return VerifyResult(name=name, status="failed", detail="; ".join(problems[:5]) + more)
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
        """Remove one declared asset's cache entry, partial downloads and leftovers, under its lock."""
        asset = self.asset(name)
        with self.cache.locked(asset.key, timeout=self.settings.lock_timeout_seconds,
                               log_every=self.settings.lock_log_interval_seconds, asset=name):
            existed = self.cache.entry_dir(asset).exists()
            self.cache.remove(self.cache.entry_dir(asset))
            self.cache.clear_work(self.cache.entry_dir(asset))
        return existed

    def clear_all(self) -> int:
        """Remove every entry in the cache (declared or not) and all work in progress, each under its lock."""
        removed = 0
        for entry in list(self.cache.entries()):
            self.remove_entry(entry)
            removed += 1
        for key, work in list(self.cache.work_dirs()):
            with self.cache.locked(key, timeout=self.settings.lock_timeout_seconds,
                                   log_every=self.settings.lock_log_interval_seconds):
                self.cache.clear_work(work.parent.parent / work.name)
        return removed

    def remove_entry(self, entry: CacheEntry) -> None:
        with self.cache.locked(entry.key, timeout=self.settings.lock_timeout_seconds,
                               log_every=self.settings.lock_log_interval_seconds, asset=entry.name):
            self.cache.remove(entry.directory)
            self.cache.clear_work(entry.directory)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> AssetManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

