"""Prefect tasks over the file service (``flowmas.files``): put local files into a session, sweep expired ones.

Parameters are plain data (paths, a session id, the project file, the name of a saved storage block): the
``FileService`` is built inside each task and closed when it ends, so no client, credential or open store is
ever a Prefect parameter or result. What a task returns is the file service's own metadata (SAM's key names),
JSON-serialisable.

    upload_file(path, session_id)        one local file -> its metadata (url, size, sha256, schema, ...)
    ingest_files(directory, session_id)  a directory's files (a glob, optionally recursive) -> their metadata,
                                         skipping a file the session already holds (same name and sha256), so
                                         a retried or repeated ingest never stores a file twice
    sweep_expired_files()                one expiry sweep of the store -> rows for a table artifact

No caching (``NO_CACHE``): Prefect's default policy would hand back the first result for the same inputs within a
flow run, i.e. the metadata of a file uploaded before the path changed, or of a sweep that found nothing.

Retries: Prefect retries a task only when ``tasks.retries.transient_only`` says the failure may pass (a network
error or an S3 5xx/throttle); a missing path, a file over the size limit or a bad configuration fails at once.
flowmas's own log lines reach the run logs (``tasks.logs.forward_core_logs``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flowmas.errors import ConfigurationError, is_transient
from flowmas.files import ExpiryReport, FileService
from flowmas.settings import FlowmasSettings, Project, load_project
from flowmas.text import human_size, one_line, shorten
from tasks.logs import forward_core_logs
from tasks.retries import transient_only

log = logging.getLogger("flowmas.tasks.files")

HASH_CHUNK = 1 << 20


# --- the service --------------------------------------------------------------------------------------------


def optional_project(project_file: str | Path | None, settings: FlowmasSettings) -> Project | None:
    """The named project, else None: ``from_config`` then finds one (FLOWMAS_PROJECT, upwards) or uses defaults."""
    return load_project(project_file, settings=settings) if project_file else None


def file_service(project_file: str | None = None, storage_block: str | None = None) -> FileService:
    """The service of the project's ``services.file_service`` with FLOWMAS_FILES_* on top; ``storage_block``
    (a saved LocalFileStorage / S3FileStorage / MemoryFileStorage, ``<name>`` or ``<slug>/<name>``) replaces
    the storage they configure, keeping their limits and ttl (it wins over FLOWMAS_FILES_STORAGE too)."""
    settings = FlowmasSettings(files_storage=f"block:{storage_block}") if storage_block else FlowmasSettings()
    return FileService.from_config(project=optional_project(project_file, settings), settings=settings)


@contextmanager
def opened_service(project_file: str | None = None, storage_block: str | None = None) -> Iterator[FileService]:
    """``file_service(...)``, closed on the way out (its storage's connections and threads with it)."""
    service = file_service(project_file, storage_block)
    try:
        yield service
    finally:
        service.close_sync()


# --- retries ------------------------------------------------------------------------------------------------


def transient_storage_error(exc: BaseException) -> bool:
    """True when retrying may help: the core marks those errors ``TransientError`` (the storage unreachable,
    throttling or failing on its side). Everything else (a missing path, a size limit, credentials refused, a
    configuration mistake) is final."""
    return is_transient(exc)


# --- tasks --------------------------------------------------------------------------------------------------


def _upload_options(ttl: float | None, data_source: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if ttl is not None:
        options["ttl"] = ttl
    if data_source is not None:
        options["data_source"] = data_source
    return options


@task(name="upload-file", task_run_name="upload {path}", retries=3, retry_delay_seconds=[1, 5, 15],
      retry_jitter_factor=0.2, retry_condition_fn=transient_only, cache_policy=NO_CACHE,
      result_serializer="json", tags=["flowmas-files"])
def upload_file(
    path: str,
    session_id: str,
    ttl: float | None = None,
    data_source: str | None = None,
    project_file: str | None = None,
    storage_block: str | None = None,
) -> dict[str, Any]:
    """Upload one local file into ``session_id``; its metadata (``url``, ``size``, ``sha256``, ...)."""
    forward_core_logs()
    source = Path(path).expanduser()
    if not source.is_file():
        raise ConfigurationError(f"{path}: no such file to upload (a regular file is needed).")
    with opened_service(project_file, storage_block) as service:
        metadata = service.upload_from_file_sync(source, session_id, **_upload_options(ttl, data_source))
    log.info("Uploaded %s (%s) as %s", shorten(one_line(source.name), 80), human_size(source.stat().st_size),
             metadata.get("url"))
    return metadata


@task(name="ingest-files", task_run_name="ingest {directory}", retries=3, retry_delay_seconds=[1, 5, 15],
      retry_jitter_factor=0.2, retry_condition_fn=transient_only, cache_policy=NO_CACHE,
      result_serializer="json", tags=["flowmas-files"])
def ingest_files(
    directory: str,
    session_id: str,
    pattern: str = "*",
    recursive: bool = False,
    ttl: float | None = None,
    data_source: str | None = None,
    project_file: str | None = None,
    storage_block: str | None = None,
) -> list[dict[str, Any]]:
    """Upload every regular file of ``directory`` matching ``pattern`` into ``session_id`` (sorted by path).

    A file the session already holds (same name, same sha256) is not uploaded again: its stored metadata is
    returned instead, so a retry after a transient failure, or the same ingest run twice, stores each file once.
    """
    forward_core_logs()
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise ConfigurationError(f"{directory}: no such directory to ingest.")
    paths = sorted(p for p in (root.rglob(pattern) if recursive else root.glob(pattern))
                   if p.is_file() and not p.is_symlink())
    results: list[dict[str, Any]] = []
    with opened_service(project_file, storage_block) as service:
        held = {(_name(md), md.get("sha256")): md for md in service.list_files_sync(session_id)}
        for path in paths:
            known = held.get((path.name, _sha256(path))) if path.name in {name for name, _ in held} else None
            if known is not None:
                log.info("Skipped %s: the session holds it already (%s)", shorten(one_line(path.name), 80),
                         known.get("url"))
                results.append(known)
                continue
            metadata = service.upload_from_file_sync(path, session_id, **_upload_options(ttl, data_source))
            held[(_name(metadata), metadata.get("sha256"))] = metadata
            results.append(metadata)
    log.info("Ingested %d files of %s into the session", len(results), root)
    return results


def _name(metadata: dict[str, Any]) -> str | None:
    name = metadata.get("filename", metadata.get("name"))
    return str(name) if name is not None else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@task(name="sweep-expired-files", result_serializer="json", retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=transient_only, cache_policy=NO_CACHE, tags=["flowmas-files"])
def sweep_expired_files(
    limit: int | None = None,
    project_file: str | None = None,
    storage_block: str | None = None,
) -> dict[str, Any]:
    """One expiry sweep (``FileService.expire``): ``{"rows": [...], "summary": {...}}`` (``expiry_rows``)."""
    forward_core_logs()
    with opened_service(project_file, storage_block) as service:
        report = service.expire_sync(limit=limit)
    return expiry_rows(report)


def expiry_rows(report: ExpiryReport) -> dict[str, Any]:
    """The sweep's report as table rows (what, how many, bytes, action, why) and its counts as a summary.

    The report counts; it does not list files. Its problem and error sentences name storage keys: those are
    the secret part of a file's URL, so each is cut to its first 8 characters here.
    """
    rows = [
        {"what": "expired files", "count": report.expired, "bytes": report.bytes_freed, "action": "deleted",
         "reason": "their time to live had passed"},
        {"what": "leftovers of crashed uploads", "count": report.debris, "bytes": 0, "action": "deleted",
         "reason": "index markers without a file, past the upload grace period"},
        {"what": "incomplete writes", "count": report.incomplete_removed, "bytes": 0, "action": "removed",
         "reason": "temporary files or multipart uploads of writers that died"},
        {"what": "extended files", "count": report.kept, "bytes": 0, "action": "kept",
         "reason": "their expiry was extended after they were indexed"},
        {"what": "uploads in flight", "count": report.pending, "bytes": 0, "action": "kept",
         "reason": "within the upload grace period"},
    ]
    rows = [row for row in rows if row["count"]]
    rows += [{"what": "index problem", "count": 1, "bytes": 0, "action": "skipped", "reason": _redact(text)}
             for text in report.problems]
    rows += [{"what": "error", "count": 1, "bytes": 0, "action": "failed", "reason": _redact(text)}
             for text in report.errors]
    summary = {"deleted": report.expired, "bytes_freed": report.bytes_freed, "debris": report.debris,
               "incomplete_removed": report.incomplete_removed, "kept": report.kept, "pending": report.pending,
               "markers_read": report.markers_read, "problems": len(report.problems), "errors": len(report.errors),
               "seconds": round(report.seconds, 3), "description": str(report)}
    return {"rows": rows, "summary": summary}


_KEY = re.compile(r"\b([0-9a-f]{8})[0-9a-f]{24}\b")


def _redact(text: str) -> str:
    return shorten(one_line(_KEY.sub(r"\1…", text)), 300)
