"""Agent task graphs as flows: ``run-agent-graph``, deployed by prefect.yaml (``flows/graph.py:run_agent_graph``).

One graph run is one flow run. The graph is named by an import path (``examples.research:graph``; a module
importable from the project's or the current directory, an ``Agent`` or a zero-argument factory of one) and
the task is a JSON parameter (``{"type", "objective", "id"?, "params"?}``). The engine's scheduler runs
inline in the flow; a tracked node's visit is a task run ``<node>#<visit>`` (``tasks.graph``), the other
visits run inline. A table artifact ``run-agent-graph`` shows each node's status, visits and result; the flow
returns the engine's output (``{"status", "result", "failed_chains"?}``) as JSON, and fails only when the
graph cannot run at all (a bad import path, task or cache; the run interrupted): a graph that ends
``failed`` or ``partial_failure`` is a Completed flow run whose result says so.

Resuming. Snapshots are on (``snapshot=True``: one after every node), so a run that stops half way (a crash,
Redis gone, the worker killed) continues where it was: the flow retries once at once (``retries=1``, no delay,
so ``flowmas up``'s container runs the retry too), and a retry (``run_count > 1``) or any run with
``resume=True`` whose task id has a snapshot continues from the latest one; completed nodes do not run again.
A task without an ``id`` takes the flow run's id, so its retries find its snapshots.

The cache: ``cache_block`` (a saved ``redis-cache``/``embedded-cache`` block), else ``cache_url``, else
FLOWMAS_CACHE_URL, else the process's embedded cache. A URL with a password is refused as a parameter
(parameters are shown in the UI): save a RedisCacheBlock, or set FLOWMAS_CACHE_URL for the runner.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from prefect import flow
from prefect.artifacts import acreate_table_artifact
from prefect.runtime import flow_run

from flowmas.errors import ConfigurationError
from flowmas.graph.loading import load_graph, parse_task, tracked
from flowmas.graph.runs import GraphOutcome, run_graph
from tasks.graph import prefect_node_runner, run_cache
from tasks.logs import forward_core_logs

__all__ = ["ARTIFACT_KEY", "run_agent_graph"]

ARTIFACT_KEY = "run-agent-graph"


def _check_cache_url(url: str | None) -> None:
    if not url:
        return
    try:
        parts = urlsplit(url)
        secret = parts.password is not None or (parts.username is not None and parts.scheme != "unix")
    except ValueError:
        secret = True
    if secret:
        raise ConfigurationError("cache_url carries credentials, and flow parameters are shown in the Prefect UI: "
                                 "save a RedisCacheBlock and pass cache_block, or set FLOWMAS_CACHE_URL for the "
                                 "runner.")


@flow(name="run-agent-graph", persist_result=True, result_serializer="json", retries=1, retry_delay_seconds=0)
async def run_agent_graph(
    graph: str,
    task: dict[str, Any],
    cache_url: str | None = None,
    namespace: str | None = None,
    resume: bool = True,
    cache_block: str | None = None,
    snapshot: bool = True,
) -> dict[str, Any]:
    """Run an agent task graph (MODULE:ATTR) on a task; the graph's output: status, node results, failed chains."""
    forward_core_logs()
    _check_cache_url(cache_url)
    agent = load_graph(graph)
    fields = dict(task)
    run_count = flow_run.run_count or 1
    if not fields.get("id") and flow_run.id:
        fields["id"] = str(flow_run.id)  # stable across the flow run's retries: they find its snapshots
    parsed = parse_task(fields)
    cache, owned = run_cache(cache_block, cache_url)
    try:
        outcome = await run_graph(agent, parsed, cache=cache, graph_name=graph, node_runner=prefect_node_runner(),
                                  namespace=namespace, resume=resume or run_count > 1, snapshot=snapshot,
                                  tracked=tracked)
    finally:
        if owned:
            await cache.close()
    await acreate_table_artifact(outcome.rows, key=ARTIFACT_KEY, description=_describe(graph, outcome, run_count))
    return outcome.output


def _describe(graph: str, outcome: GraphOutcome, run_count: int) -> str:
    counts: dict[str, int] = {}
    for row in outcome.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    shown = ", ".join(f"{n} {status}" for status, n in counts.items())
    resumed = f"; resumed from {outcome.resumed_from.rsplit('/', 1)[-1]}" if outcome.resumed_from else ""
    attempt = f" (attempt {run_count})" if run_count > 1 else ""
    return (f"{graph}, task {outcome.task_id}: {outcome.status}{attempt} in {outcome.seconds:.2f} s — {shown}; "
            f"{len(outcome.tracked)} tracked node(s){resumed}")
