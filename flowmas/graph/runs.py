"""One graph run as the faces run it (flow, CLI, container), the runs' registry and its cleanup, and the platform
mailboxes a running graph reads.

``run_graph(agent, task, ...)`` is what every face calls once per run:

* the Agent is copied with the run's cache (the definition is never mutated, so concurrent runs of one graph
  with different caches do not meet) and, unless ``snapshot=False``, with ``auto_snapshot`` on: a snapshot
  after every node is what lets a crashed run continue;
* ``resume=True`` continues from the task's latest snapshot when there is one (a crashed run's retry, or the
  same task id run again: a finished run's last snapshot simply answers its result again);
* every visit goes through ``node_runner`` (the face's: a Prefect task run, a progress line) and is counted,
  so the outcome has each node's visits, and rows for a table (node, status, visits, result summary);
* the run is recorded in the cache's registry namespace ``flowmas-graph-runs`` (namespace -> graph, task id,
  status, start and end times), which ``cleanup_graph_runs`` reads to delete finished runs' namespaces, and
  the graph's import path is written beside the task's snapshots (``.flowmas-graph``), so
  ``flowmas graph resume SNAPSHOT`` needs nothing else.

Platform messages. The container's ``/send/{agentId}`` and ``/broadcast/{channel}`` also deliver into the
cache's ``platform`` namespace: mailbox ``agent:<agentId>``, and for a broadcast mailbox ``channel:<name>``
*and* a publish on the channel ``channel:<name>`` (live subscribers get every broadcast; a mailbox gives each
message to one reader). A module reads them through ``platform_cache(cache)``::

    message = await platform_cache(cache).get_message(agent_mailbox("graphs"), timeout=30)

Messages wait in a mailbox until a module takes them (no TTL: read what you ask the platform to send).
Across processes this needs a shared cache (FLOWMAS_CACHE_URL=redis://…); ``flowmas up`` runs the graph's
flow runs in the container's process, where the embedded cache is shared too.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from flowmas.cache import BaseCache, Cache
from flowmas.errors import CacheError, SnapshotError
from flowmas.graph.engine import Agent, NodeRunner, RunContext
from flowmas.graph.model import ModuleResult, Node, Task, TaskStatus, check_task_id
from flowmas.graph.snapshots import latest_snapshot, read_snapshot, snapshot_root
from flowmas.settings import FlowmasSettings
from flowmas.text import one_line, shorten

__all__ = ["FINAL_STATUSES", "GRAPH_FILE", "PLATFORM_NAMESPACE", "RUNS_NAMESPACE", "GraphOutcome", "agent_mailbox",
           "channel_mailbox", "cleanup_graph_runs", "deliver_message", "graph_of_snapshot", "newest_snapshot",
           "node_rows", "platform_cache", "run_graph", "summarise"]

RUNS_NAMESPACE: Final = "flowmas-graph-runs"
PLATFORM_NAMESPACE: Final = "platform"
GRAPH_FILE: Final = ".flowmas-graph"
"""Beside a task's snapshots: the graph's import path (a dot-file, so it is never taken for a snapshot)."""
FINAL_STATUSES: Final = frozenset({*(s.value for s in TaskStatus if s not in (TaskStatus.WAITING,
                                                                             TaskStatus.EXECUTING)), "interrupted"})
NodeObserver = Callable[[str, int, ModuleResult, float], None]
"""``(node, visit, result, seconds)`` after each visit (the CLI's progress lines)."""


def agent_mailbox(agent_id: str) -> str:
    return f"agent:{agent_id}"


def channel_mailbox(channel: str) -> str:
    return f"channel:{channel}"


def platform_cache(cache: Cache) -> Cache:
    """The namespace the container delivers ``/send`` and ``/broadcast`` messages into."""
    return cache.namespaced(PLATFORM_NAMESPACE)


async def deliver_message(cache: Cache, kind: str, name: str, message: Any, *,
                          settings: FlowmasSettings | None = None) -> None:
    """Queue ``message`` for ``agent:<name>`` (``kind="agent"``) or ``channel:<name>`` (mailbox and publish).

    The platform may send to any agent and broadcast on any channel whether or not a graph ever reads it, so
    each mailbox is bounded (``FLOWMAS_GRAPH_MAILBOX_MAX_MESSAGES``, the oldest dropped) and vanishes
    ``FLOWMAS_GRAPH_MAILBOX_TTL_SECONDS`` after its last message."""
    settings = settings or FlowmasSettings()
    most, ttl = settings.graph_mailbox_max_messages, settings.graph_mailbox_ttl_seconds
    view = platform_cache(cache)
    mailbox = agent_mailbox(name) if kind == "agent" else channel_mailbox(name)
    await view.publish_to_mailbox(mailbox, message, max_length=most, ttl=ttl)
    if kind != "agent":
        await view.publish(mailbox, message)


# --- one run ----------------------------------------------------------------------------------------------


@dataclass
class GraphOutcome:
    """What ``run_graph`` answers: the engine's output, and what a face shows of it."""

    output: dict[str, Any]
    task_id: str
    namespace: str
    visits: dict[str, int]
    rows: list[dict[str, Any]]
    resumed_from: str | None = None
    seconds: float = 0.0
    tracked: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.output.get("status"))


def summarise(result: Any, limit: int = 160) -> str:
    """A node result in one short line: the error, else the (last module's) result."""
    if not isinstance(result, dict):
        return shorten(one_line(repr(result)), limit)
    if result.get("status") not in ("success", "skipped"):
        shown: Any = result.get("error") or result.get("result") or result.get("status")
    elif result.get("status") == "skipped":
        shown = result.get("reason") or "skipped"
    else:
        inner = result.get("results")
        if isinstance(inner, list) and inner and isinstance(inner[-1], dict):
            last = inner[-1]
            shown = last.get("result", last.get("decision", last))
            if "decision" in last and last.get("decision") is not None:
                shown = f"-> {last['decision']}"
            elif "decision" in last:
                shown = "(no jump)"
        else:
            shown = result.get("result", "")
    text = shown if isinstance(shown, str) else json.dumps(shown, default=repr, ensure_ascii=False)
    return shorten(one_line(text), limit)


def node_rows(agent: Agent, output: dict[str, Any], visits: dict[str, int]) -> list[dict[str, Any]]:
    """One row per node (the graph's order, then nodes the run added): node, status, visits, result."""
    results: dict[str, Any] = output.get("result") or {}
    blocked = {name for chain in output.get("failed_chains") or [] for name in chain[1:]}
    rows = []
    for name in [*agent.nodes, *(n for n in results if n not in agent.nodes)]:
        result = results.get(name)
        if result is None:
            status = "blocked" if name in blocked else "not run"
        else:
            raw = result.get("status") if isinstance(result, dict) else None
            status = "done" if raw == "success" else "skipped" if raw == "skipped" else "failed"
        rows.append({"node": name, "status": status, "visits": visits.get(name, 0),
                     "result": summarise(result) if result is not None else ""})
    return rows


async def _record(cache: Cache, namespace: str, record: dict[str, Any]) -> None:
    try:
        await cache.namespaced(RUNS_NAMESPACE).set(namespace, record)
    except CacheError:
        raise
    except Exception:  # noqa: BLE001  # the registry is bookkeeping: never the run's failure
        pass


def _write_graph_file(directory: Path | None, task_id: str, graph_name: str) -> None:
    folder = snapshot_root(directory) / check_task_id(task_id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / GRAPH_FILE).write_text(graph_name + "\n", encoding="utf-8")
    except OSError as exc:
        raise SnapshotError(f"Cannot write {folder / GRAPH_FILE}: {exc.strerror or exc}. Check FLOWMAS_SNAPSHOT_DIR "
                            "and its permissions.") from None


def graph_of_snapshot(path: Path | str) -> str | None:
    """The graph import path recorded beside a snapshot (a file, or its task's directory), if any."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        text = (folder / GRAPH_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


async def run_graph(agent: Agent, task: Task, *, cache: BaseCache | Cache, graph_name: str = "graph",
                    node_runner: NodeRunner | None = None, namespace: str | None = None, resume: bool = True,
                    snapshot: bool = True, on_node: NodeObserver | None = None,
                    tracked: Callable[[Node], bool] | None = None,
                    snapshot_path: Path | str | None = None) -> GraphOutcome:
    """Run ``agent`` on ``task`` once (module docstring); ``snapshot_path`` resumes from that file or directory."""
    run_agent = agent.model_copy(update={"cache": cache, "auto_snapshot": agent.auto_snapshot or snapshot})
    visits: dict[str, int] = {}
    started = time.monotonic()

    async def observe(node: Node, context: RunContext, call: Callable[[], Awaitable[ModuleResult]]) -> ModuleResult:
        visits[context.node] = max(visits.get(context.node, 0), context.visit)
        began = time.monotonic()
        result = await (node_runner(node, context, call) if node_runner is not None else call())
        if on_node is not None:
            on_node(context.node, context.visit, result, time.monotonic() - began)
        return result

    source: Path | None = Path(snapshot_path) if snapshot_path is not None else None
    if source is None and resume:
        source = latest_snapshot(task.id, run_agent.snapshot_dir)
    task_id = task.id
    run_namespace = namespace or task.id
    if source is not None:
        data = read_snapshot(source if source.is_file() else newest_snapshot(source))
        visits.update(data.visits)
        task_id, run_namespace = data.task.id, data.namespace
    if run_agent.auto_snapshot:
        _write_graph_file(run_agent.snapshot_dir, task_id, graph_name)
    record = {"graph": graph_name, "task_id": task_id, "status": TaskStatus.EXECUTING.value, "started": time.time(),
              "finished": None}
    await _record(cache, run_namespace, record)
    try:
        if source is not None:
            output = await run_agent.run_from_snapshot(source, node_runner=observe)
        else:
            output = await run_agent.run_task(task, node_runner=observe, namespace=namespace)
    except BaseException:
        await _record(cache, run_namespace, {**record, "status": "interrupted", "finished": time.time()})
        raise
    await _record(cache, run_namespace, {**record, "status": output.get("status"), "finished": time.time()})
    return GraphOutcome(output=output, task_id=task_id, namespace=run_namespace, visits=visits,
                        rows=node_rows(run_agent, output, visits), resumed_from=str(source) if source else None,
                        seconds=time.monotonic() - started,
                        tracked=[n for n, node in run_agent.nodes.items() if tracked is not None and tracked(node)])


def newest_snapshot(directory: Path) -> Path:
    newest = max((p for p in directory.glob("*.json") if not p.name.startswith(".")), default=None,
                 key=lambda p: p.name)
    if newest is None:
        raise SnapshotError(f"{directory} holds no snapshot (*.json).")
    return newest


# --- retention --------------------------------------------------------------------------------------------


async def cleanup_graph_runs(cache: Cache, *, max_age_seconds: float, snapshot_dir: Path | None = None,
                             now: float | None = None) -> list[dict[str, Any]]:
    """Delete what finished runs left, once older than ``max_age_seconds``: rows (what, action, reason).

    * a namespace the registry records as finished (complete, failed, partial, interrupted) before the cutoff:
      ``clear()``ed (values and mailboxes) and its record deleted;
    * a task's snapshot directory whose newest file is older than the cutoff, unless the registry says that
      task is running: removed. Fresh runs and running ones are kept.
    """
    now = time.time() if now is None else now
    cutoff = now - max_age_seconds
    rows: list[dict[str, Any]] = []
    registry = cache.namespaced(RUNS_NAMESPACE)
    records = await registry.get_all()
    running: set[str] = set()
    for namespace, record in sorted(records.items()):
        if not isinstance(record, dict):
            continue
        status, finished = record.get("status"), record.get("finished")
        if status not in FINAL_STATUSES or not isinstance(finished, int | float):
            running.add(str(record.get("task_id", namespace)))
            continue
        if finished >= cutoff:
            continue
        try:
            await cache.namespaced(check_task_id(namespace)).clear()
        except (ValueError, CacheError) as exc:
            rows.append({"what": f"namespace {namespace}", "action": "failed", "reason": shorten(str(exc), 200)})
            continue
        await registry.delete(namespace)
        rows.append({"what": f"namespace {namespace}", "action": "deleted",
                     "reason": f"graph run {status} {int(now - finished)} s ago"})
    root = snapshot_root(snapshot_dir)
    if root.is_dir():
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if not entry.is_dir(follow_symlinks=False) or entry.name in running:
                continue
            newest = _newest_mtime(Path(entry.path))
            if newest >= cutoff:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            rows.append({"what": f"snapshots {entry.name}", "action": "deleted",
                         "reason": f"newest snapshot {int(now - newest)} s old"})
    return rows


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for entry in os.scandir(folder):
        try:
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except OSError:
            continue
    return newest
