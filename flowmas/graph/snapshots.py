"""Graph snapshots: JSON files, never pickle, so reading a tampered file can fail but never run code.

Layout: ``<snapshot dir>/<task id>/<seq:06d>_<node>.json``; the directory is ``Agent.snapshot_dir``, else
``FLOWMAS_SNAPSHOT_DIR``, else ``$FLOWMAS_HOME/snapshots``. ``seq`` grows across resumes (a resumed run
continues after the highest number in the directory, never overwriting: Asimov bug #20). The task id is the
directory name, so it is checked (``check_task_id``: no ``/``, no ``..``). Files are written atomically
(temporary file + ``os.replace``; not fsynced — a killed process leaves either the old or the new file, a
power loss may lose the latest one).

A snapshot holds the task, the execution state, visit counts, failed chains, node results, each node's
scheduling state and the run's cache namespace (mailboxes included). Node results must be JSON-able (pydantic
models, dataclasses, datetimes and sets are converted); anything else is a ``SnapshotError`` naming the node.
Not saved: the modules' code (resume on an Agent with the same node names) and async generators' positions
(a generator module starts afresh after a resume).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from flowmas.errors import SnapshotError
from flowmas.graph.model import ExecutionState, Task, check_task_id
from flowmas.text import shorten

__all__ = ["FORMAT", "MAX_SNAPSHOT_BYTES", "SnapshotData", "latest_snapshot", "read_snapshot", "snapshot_root",
           "to_json_data", "write_snapshot"]

FORMAT: Literal["flowmas.graph.snapshot"] = "flowmas.graph.snapshot"
MAX_SNAPSHOT_BYTES = 1 << 30
_FILE = re.compile(r"(\d{6,})_[^/]*\.json")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class LevelsState(BaseModel):
    """``scheduling="levels"``: the plan, the level being run and what is done or skipped in this plan."""

    model_config = ConfigDict(extra="forbid")

    plan: list[list[str]]
    index: int = Field(ge=0)
    executed: list[str]
    skipped: list[str]


class SnapshotData(BaseModel):
    """A snapshot file's content, validated field by field when read."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["flowmas.graph.snapshot"] = FORMAT
    version: Literal[1] = 1
    seq: int = Field(ge=0)
    when: Literal["before", "after"]
    node: str
    task: Task
    namespace: str
    scheduling: Literal["ready", "levels"]
    state: ExecutionState
    visits: dict[str, int]
    failed_chains: list[list[str]]
    node_results: dict[str, Any]
    done: list[str]
    skipped: list[str]
    failed: list[str]
    blocked: list[str]
    ready: list[str]
    added_nodes: list[str]
    levels: LevelsState | None = None
    cache: dict[str, Any]


def snapshot_root(directory: Path | None = None) -> Path:
    if directory is not None:
        return Path(directory).expanduser()
    from flowmas.settings import FlowmasSettings

    settings = FlowmasSettings()
    return settings.snapshot_dir or settings.home.expanduser() / "snapshots"


def to_json_data(value: Any, what: str) -> Any:
    """``value`` as plain JSON data, or ``SnapshotError`` naming ``what`` and the offending type."""
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError as exc:
        raise SnapshotError(f"Cannot snapshot {what}: it holds a value that is not JSON ({shorten(str(exc), 200)}). "
                            "Return JSON-able data (dicts, lists, str, numbers, pydantic models), or turn "
                            "snapshots off for this graph.") from None


def _task_dir(root: Path, task_id: str) -> Path:
    try:
        return root / check_task_id(task_id)
    except ValueError as exc:
        raise SnapshotError(str(exc)) from None


def next_seq(root: Path, task_id: str) -> int:
    """One more than the highest snapshot number of ``task_id`` (0 when there is none)."""
    folder = _task_dir(root, task_id)
    highest = -1
    if folder.is_dir():
        for entry in os.scandir(folder):
            match = _FILE.fullmatch(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def write_snapshot(root: Path, data: SnapshotData) -> Path:
    """Write ``data`` atomically; returns the file's path."""
    folder = _task_dir(root, data.task.id)
    label = shorten(_UNSAFE.sub("_", data.node), 80) if data.node else "run"
    path = folder / f"{data.seq:06d}_{label}.json"
    try:
        payload = orjson.dumps(data.model_dump(mode="json"))
    except (orjson.JSONEncodeError, PydanticSerializationError) as exc:
        raise SnapshotError(f"Cannot snapshot task {data.task.id!r}: {shorten(str(exc), 200)}") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise SnapshotError(f"Cannot write the snapshot {path}: {exc.strerror or exc}. Check "
                            "FLOWMAS_SNAPSHOT_DIR (or Agent.snapshot_dir) and its permissions.") from None
    return path


def read_snapshot(path: Path | str) -> SnapshotData:
    """A snapshot file's content; ``SnapshotError`` for anything that is not a well-formed snapshot."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_SNAPSHOT_BYTES:
            raise SnapshotError(f"{path} is {size} bytes, larger than any snapshot ({MAX_SNAPSHOT_BYTES}).")
        raw = path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"Cannot read the snapshot {path}: {exc.strerror or exc}.") from None
    try:
        content = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SnapshotError(f"{path} is not a flowmas snapshot: it is not JSON (snapshots are never pickle).") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise SnapshotError(f"{path} is not a flowmas snapshot (no 'format': {FORMAT!r}).")
    try:
        return SnapshotData.model_validate(content)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[:3]
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in first)
        raise SnapshotError(f"{path} is a damaged snapshot ({exc.error_count()} error(s): {shorten(where, 300)}).") \
            from None


def latest_snapshot(task_id: str, directory: Path | None = None) -> Path | None:
    """The newest snapshot of ``task_id`` (highest number), or ``None``: what a crashed run's retry resumes."""
    folder = _task_dir(snapshot_root(directory), task_id)
    best: tuple[int, str] | None = None
    if folder.is_dir():
        for entry in os.scandir(folder):
            match = _FILE.fullmatch(entry.name)
            if match and (best is None or (int(match.group(1)), entry.name) > best):
                best = (int(match.group(1)), entry.name)
    return folder / best[1] if best else None
