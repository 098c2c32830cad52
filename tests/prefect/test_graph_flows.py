"""``run-agent-graph`` and the graph part of ``cleanup-cache`` on the session's Prefect server.

The flows run in this process against the real server: tracked nodes become task runs ``<node>#<visit>``, the
others none; the table artifact is read back; a run stopped half way is retried by Prefect and continues from
its latest snapshot (``tests.graph_faces.RUNS`` shows that no completed node ran twice); cleanup deletes a
finished run's namespace and snapshots once older than the retention, and keeps fresh ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from flowmas.graph.loading import process_cache
from flowmas.graph.runs import RUNS_NAMESPACE
from flows.assets import cleanup_cache
from flows.graph import ARTIFACT_KEY, run_agent_graph
from tests.graph_faces import RUNS
from tests.prefect.support import final_task_runs, write_project

pytestmark = pytest.mark.prefect


@pytest.fixture(autouse=True)
def _env(prefect_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLOWMAS_SNAPSHOT_DIR", str(tmp_path / "snapshots"))
    monkeypatch.delenv("FLOWMAS_CACHE_URL", raising=False)
    return tmp_path / "snapshots"


@pytest.fixture
def client() -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as c:
        yield c


def artifact(client: SyncPrefectClient, flow_run_id: UUID) -> tuple[list[dict[str, Any]], str]:
    [found] = client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[ARTIFACT_KEY])))
    data = found.data
    return (json.loads(data) if isinstance(data, str) else data), str(found.description)  # type: ignore[return-value]


def task_run_names(client: SyncPrefectClient, flow_run_id: UUID, count: int) -> list[str]:
    return sorted(r.name for r in final_task_runs(client, flow_run_id, count))


def test_a_graph_run_is_one_flow_run_with_task_runs_for_tracked_nodes_only(client: SyncPrefectClient) -> None:
    task = {"id": f"research-{uuid.uuid4().hex[:8]}", "type": "research", "objective": "o",
            "params": {"topic": "redis"}}
    state = asyncio.run(run_agent_graph(graph="examples.research:graph", task=task, return_state=True))

    assert state.is_completed(), state
    output = state.result()
    assert output["status"] == "complete" and output["result"]["publish"]["results"][0]["result"]["rounds"] == 2
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    names = task_run_names(client, flow_run_id, 5)
    assert names == ["search_notes#1", "search_papers#1", "search_web#1", "summarise#1", "summarise#2"]
    rows, description = artifact(client, flow_run_id)
    by_node = {row["node"]: row for row in rows}
    assert list(by_node) == ["plan", "search_web", "search_papers", "search_notes", "summarise", "review", "publish"]
    assert by_node["summarise"] == {"node": "summarise", "status": "done", "visits": 2, "result": "round 2: 4 facts"}
    assert by_node["review"]["visits"] == 2 and by_node["review"]["result"] == "(no jump)"
    assert "complete" in description and "4 tracked node(s)" in description


def test_a_failing_node_is_a_failed_task_run_and_a_completed_flow_run_that_says_partial(
        client: SyncPrefectClient) -> None:
    task = {"id": f"failing-{uuid.uuid4().hex[:8]}", "type": "t", "objective": "o"}
    state = asyncio.run(run_agent_graph(graph="tests.graph_faces:failing", task=task, return_state=True))

    assert state.is_completed()
    assert state.result()["failed_chains"] == [["broken", "after"]]
    rows, _ = artifact(client, state.state_details.flow_run_id)  # type: ignore[arg-type]
    assert [(r["node"], r["status"]) for r in rows] == [("first", "done"), ("broken", "failed"), ("after", "blocked")]
    assert "always fails" in rows[1]["result"]


def test_a_run_stopped_half_way_is_retried_from_its_latest_snapshot(client: SyncPrefectClient) -> None:
    task_id = f"flaky-{uuid.uuid4().hex[:8]}"
    state = asyncio.run(run_agent_graph(graph="tests.graph_faces:flaky", task={"id": task_id, "type": "t",
                                                                               "objective": "o"}, return_state=True))

    assert state.is_completed(), state
    assert state.result()["status"] == "complete"
    assert [RUNS[(task_id, n)] for n in "abc"] == [1, 2, 1]  # a ran once: the retry resumed after it
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    assert client.read_flow_run(flow_run_id).run_count == 2
    _, description = artifact(client, flow_run_id)
    assert "(attempt 2)" in description and "resumed from" in description
    names = task_run_names(client, flow_run_id, 4)
    assert names == ["a#1", "b#1", "b#1", "c#1"]  # the snapshot (after a) never saw b's lost visit: b#1 again


def test_resume_true_continues_a_task_id_a_crashed_run_left_and_resume_false_starts_over() -> None:
    task_id = f"again-{uuid.uuid4().hex[:8]}"
    task = {"id": task_id, "type": "t", "objective": "o"}
    flaky = run_agent_graph.with_options(retries=0)
    first = asyncio.run(flaky(graph="tests.graph_faces:flaky", task=task, return_state=True))
    assert first.is_failed() and "Cannot snapshot" in str(first.message)

    second = asyncio.run(run_agent_graph(graph="tests.graph_faces:flaky", task=task))
    assert second["status"] == "complete" and [RUNS[(task_id, n)] for n in "abc"] == [1, 2, 1]
    third = asyncio.run(run_agent_graph(graph="tests.graph_faces:flaky", task=task, resume=False))
    assert third["status"] == "complete" and [RUNS[(task_id, n)] for n in "abc"] == [2, 3, 2]


def test_a_task_without_id_takes_the_flow_run_id_and_bad_parameters_fail_the_run() -> None:
    state = asyncio.run(run_agent_graph(graph="tests.graph_faces:factory", task={"type": "t", "objective": "o"},
                                        return_state=True))
    assert state.is_completed() and state.result()["status"] == "complete"
    assert RUNS[(str(state.state_details.flow_run_id), "only")] == 1

    bad = asyncio.run(run_agent_graph.with_options(retries=0)(graph="tests.graph_faces:nope", task={},
                                                               return_state=True))
    assert bad.is_failed() and "has no attribute 'nope'" in str(bad.message)
    secret = asyncio.run(run_agent_graph.with_options(retries=0)(
        graph="examples.research:graph", task={"type": "t", "objective": "o"},
        cache_url="redis://user:hunter22@127.0.0.1:1/0", return_state=True))
    assert secret.is_failed() and "hunter22" not in str(secret.message) and "cache_block" in str(secret.message)


def test_cleanup_cache_removes_old_finished_runs_and_keeps_fresh_ones(tmp_path: Path, _env: Path) -> None:
    cache = process_cache()
    registry = cache.namespaced(RUNS_NAMESPACE)
    now = time.time()

    async def plant() -> None:
        for name, status, age in (("old-done", "complete", 3600), ("old-running", "executing", 3600),
                                  ("fresh-done", "failed", 10)):
            await cache.namespaced(name).set("draft", name)
            finished = None if status == "executing" else now - age
            await registry.set(name, {"task_id": name, "status": status, "started": now - age, "finished": finished})
            folder = _env / name
            folder.mkdir(parents=True)
            (folder / "000000_a.json").write_text("{}")
            os.utime(folder / "000000_a.json", (now - age, now - age))
            os.utime(folder, (now - age, now - age))

    asyncio.run(plant())
    project = write_project(tmp_path / "project", [])
    report = cleanup_cache(project_file=str(project), result_max_age_days=None, graph_retention_seconds=600)

    assert [row["what"] for row in report["graph_runs"]] == ["namespace old-done", "snapshots old-done"]

    async def read() -> tuple[Any, ...]:
        return (await cache.namespaced("old-done").get("draft", None),
                await cache.namespaced("old-running").get("draft", None),
                await cache.namespaced("fresh-done").get("draft", None), sorted(await registry.keys()))

    old, running, fresh, records = asyncio.run(read())
    assert (old, running, fresh) == (None, "old-running", "fresh-done")
    assert "old-done" not in records and {"old-running", "fresh-done"} <= set(records)
    assert sorted(p.name for p in _env.iterdir()) == ["fresh-done", "old-running"]
