"""File-service flows: the entrypoints ``prefect.yaml`` deploys (``flows/files.py:<function>``).

``expire-files`` is the file service's expiry, replacing Solace Agent Mesh's per-process sweeper thread: one
sweep of the store per run (``FileService.expire``: it reads the store's expiry index, so a run costs what has
expired, never a listing of every file), scheduled every ``expiration_check_interval`` (600 s) by prefect.yaml
with a concurrency limit of 1 (``CANCEL_NEW``), so N processes sharing a store never sweep it N times at once.
The store is the project's ``services.file_service`` (FLOWMAS_FILES_* on top), or the saved storage block that
``storage_block`` names.

The table artifact ``expire-files`` says what the sweep deleted and why, one row per kind (expired files, the
leftovers of crashed uploads, incomplete writes; what was kept and why; each problem or error of the index as a
sentence). It never shows a session id (the id is what grants access to a session's files) nor a whole storage
key (the secret part of a file's URL): keys are cut to 8 characters.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import Field

from flowmas.text import human_size
from tasks.files import ingest_files, sweep_expired_files
from tasks.logs import forward_core_logs

__all__ = ["expire_files", "ingest_directory"]


@flow(name="expire-files", persist_result=True, result_serializer="json")
def expire_files(
    limit: Annotated[int, Field(ge=1)] | None = None,
    project_file: str | None = None,
    storage_block: str | None = None,
) -> dict[str, Any]:
    """Delete the session files whose time to live has passed (one sweep; at most ``limit`` files); a summary."""
    forward_core_logs()
    report = sweep_expired_files(limit, project_file, storage_block)
    rows: list[dict[str, Any]] = report["rows"]
    summary: dict[str, Any] = report["summary"]
    shown = rows or [{"what": "(nothing had expired)", "count": 0, "bytes": 0, "action": "", "reason": ""}]
    create_table_artifact(shown, key="expire-files",  # type: ignore[call-arg]
                          description=f"Deleted {summary['deleted']} expired files "
                                      f"({human_size(summary['bytes_freed'])}) in {summary['seconds']:g} s",
                          _sync=True)
    return summary


@flow(name="ingest-files", persist_result=True, result_serializer="json")
def ingest_directory(
    directory: str,
    session_id: str,
    pattern: str = "*",
    recursive: bool = False,
    ttl: Annotated[float, Field(gt=0)] | None = None,
    project_file: str | None = None,
    storage_block: str | None = None,
) -> list[dict[str, Any]]:
    """Upload a directory's files into a session (each once); their metadata, without the session id."""
    forward_core_logs()
    metadata = ingest_files(directory, session_id, pattern, recursive, ttl, None, project_file, storage_block)
    rows = [{"file": md.get("filename", md.get("name")), "size": human_size(int(md.get("size", 0) or 0)),
             "mime_type": md.get("mime_type"), "url": md.get("url")} for md in metadata]
    create_table_artifact(rows or [{"file": "(no file matched)", "size": "", "mime_type": "", "url": ""}],
                          key="ingest-files", _sync=True)  # type: ignore[call-arg]
    return [{key: value for key, value in md.items() if key != "session_id"} for md in metadata]

