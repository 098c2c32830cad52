"""Prefect tasks of the graph engine: tracked nodes as task runs, and the cleanup of finished runs.

``prefect_node_runner()`` is the ``node_runner`` ``run-agent-graph`` gives the engine. A visit of a *tracked*
node (``flowmas.graph.loading.tracked``: ``NodeConfig.track=True``, or unset on an executor that retries after
a delay) is one task run named ``<node>#<visit>``; every other visit (flow control, quick steps) runs inline in
the flow, costing microseconds instead of a task run. The task run wraps the engine's whole visit (its
retries included: the engine retries, with its own delays and ``NonRetryableError`` rules, so the task itself
has ``retries=0``) and ends Failed when the node's result is not a success, so the UI shows which node failed
and why; the engine still gets the node's result either way.

Prefect pitfalls this respects: the task is async and awaited in the flow's own event loop (the engine's
coroutines, its cache client and its semaphore belong to that loop); no closure, cache or module object is a
task parameter (the visit's ``call`` waits in a registry under a token, the parameters are the node's name,
visit and that token); ``NO_CACHE``, so Prefect never hands back an earlier visit's result.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flowmas.cache import Cache
from flowmas.errors import GraphError
from flowmas.graph import ModuleResult, Node, RunContext
from flowmas.graph.engine import NodeRunner
from flowmas.graph.loading import tracked
from flowmas.graph.runs import cleanup_graph_runs
from tasks.logs import forward_core_logs

__all__ = ["NodeFailed", "cleanup_graph_task", "prefect_node_runner", "run_node"]

_calls: dict[str, Callable[[], Awaitable[ModuleResult]]] = {}
_results: dict[str, ModuleResult] = {}
_tokens = itertools.count()
_lock = threading.Lock()


class NodeFailed(GraphError):
    """A tracked node's visit did not succeed: its task run ends Failed with the node's error."""


@task(name="graph-node", task_run_name="{node}#{visit}", cache_policy=NO_CACHE, retries=0, persist_result=False)
async def run_node(node: str, visit: int, token: str) -> str:
    """One visit of a tracked node (its modules, the engine's retries included); its status."""
    forward_core_logs()
    call = _calls.pop(token)
    result = await call()
    _results[token] = result
    status = str(result.get("status")) if isinstance(result, dict) else type(result).__name__
    if status != "success":
        error = result.get("error") or result.get("result") if isinstance(result, dict) else None
        raise NodeFailed(f"Node {node!r} (visit {visit}) ended {status}: {error or 'no error text'}")
    return status


def prefect_node_runner(is_tracked: Callable[[Node], bool] = tracked) -> NodeRunner:
    """The engine's ``node_runner``: tracked visits as task runs ``<node>#<visit>``, the others inline."""

    async def runner(node: Node, context: RunContext, call: Callable[[], Awaitable[ModuleResult]]) -> ModuleResult:
        if not is_tracked(node):
            return await call()
        with _lock:
            token = f"{context.run_id}:{context.node}:{context.visit}:{next(_tokens)}"
            _calls[token] = call
        try:
            # The run name comes from the task's template, not with_options (a task copy: ~0.4 ms per visit).
            await run_node(context.node, context.visit, token, return_state=True)  # type: ignore[misc]
            result = _results.pop(token, None)
        finally:
            _calls.pop(token, None)
            _results.pop(token, None)
        if result is None:  # the task run never reached the call (Prefect refused it, or it crashed first)
            text = f"Node {context.node!r} (visit {context.visit}): its task run did not run the node."
            return {"status": "error", "error": text, "result": text}
        return result

    return runner


@task(name="cleanup-graph-runs", cache_policy=NO_CACHE, persist_result=False)
def cleanup_graph_task(max_age_seconds: float, snapshot_dir: str | None = None,
                       cache_block: str | None = None) -> list[dict[str, Any]]:
    """Delete finished graph runs' cache namespaces and snapshots older than ``max_age_seconds``; rows.

    Sync (``cleanup-cache`` is a sync flow): the cache is made and closed on this task's own event loop."""
    forward_core_logs()
    cache, owned = run_cache(cache_block)

    async def clean() -> list[dict[str, Any]]:
        try:
            return await cleanup_graph_runs(cache, max_age_seconds=max_age_seconds,
                                            snapshot_dir=Path(snapshot_dir) if snapshot_dir else None)
        finally:
            if owned:
                await cache.close()

    return asyncio.run(clean())


def run_cache(cache_block: str | None = None, cache_url: str | None = None) -> tuple[Cache, bool]:
    """The cache of a run and whether the caller closes it: a saved cache block (``<slug>/<name>`` or a
    RedisCacheBlock's ``<name>``), else ``cache_url``, else FLOWMAS_CACHE_URL, else the process's embedded one."""
    from blocks.cache import load_cache_block
    from flowmas.cache import EmbeddedCache, cache_from_url
    from flowmas.graph.loading import default_cache

    if cache_block:
        cache: Cache = load_cache_block(cache_block).cache()
    elif cache_url:
        cache = cache_from_url(cache_url)
    else:
        cache = default_cache()
    return cache, not isinstance(cache, EmbeddedCache)  # embedded ones are the process's: never closed here
