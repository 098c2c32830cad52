"""``flowmas graph``: plan, run (progress on stderr, the status as the exit code), resume; on the embedded cache and
on real Redis."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flowmas.cli import app
from tests.graph_faces import RUNS

TASK = '{"type": "research", "objective": "o", "params": {"topic": "prefect"}}'


@pytest.fixture(autouse=True)
def snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLOWMAS_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.delenv("FLOWMAS_CACHE_URL", raising=False)
    return tmp_path / "snaps"


def run(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(app, list(args), input=stdin)


def test_plan_prints_levels_and_nodes() -> None:
    result = run("graph", "plan", "examples.research:graph")
    assert result.exit_code == 0, result.output
    assert "level 2: search_notes, search_papers, search_web" in result.stdout
    assert "review" in result.stdout and "flow control" in result.stdout and "tracked" in result.stdout


def test_run_prints_progress_and_exits_0_when_complete(snapshots: Path) -> None:
    task = json.loads(TASK) | {"id": "cli-run"}
    result = run("graph", "run", "examples.research:graph", "--task", json.dumps(task))
    assert result.exit_code == 0, result.output
    assert "  summarise#2 ok (" in result.stderr and "  review#1 ok (" in result.stderr
    assert "publish: done (visits 1)" in result.stdout and result.stdout.rstrip().splitlines()[-1].startswith(
        "complete in ")
    assert (snapshots / "cli-run" / ".flowmas-graph").read_text().strip() == "examples.research:graph"

    as_json = run("graph", "run", "examples.research:graph", "--task", "-", "--json", stdin=TASK)
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["status"] == "complete"


def test_a_failed_node_exits_1_and_usage_mistakes_exit_2() -> None:
    failed = run("graph", "run", "tests.graph_faces:failing", "--task", '{"type": "t", "objective": "o"}')
    assert failed.exit_code == 1 and "broken: failed" in failed.stdout and "after: blocked" in failed.stdout
    assert "partial_failure in" in failed.stdout

    for args, words in ((("graph", "run", "examples.nope:graph", "--task", TASK), "cannot import module"),
                        (("graph", "run", "examples.research:graph", "--task", "{"), "not valid JSON"),
                        (("graph", "run", "examples.research:graph", "--task", TASK, "--cache", "ftp://x"),
                         "Unsupported cache URL scheme"),
                        (("graph", "plan", "tests.graph_faces:broken_factory"), "the factory broke"),
                        (("graph", "resume", "/nonexistent/snapshot"), "does not exist")):
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert words in result.stderr and "Traceback" not in result.output


def test_resume_continues_a_stopped_run_from_its_snapshots(snapshots: Path) -> None:
    task_id = f"cli-{uuid.uuid4().hex[:8]}"
    stopped = run("graph", "run", "tests.graph_faces:flaky", "--task",
                  json.dumps({"id": task_id, "type": "t", "objective": "o"}))
    assert stopped.exit_code == 1 and "Cannot snapshot the result of node 'b'" in stopped.stderr

    resumed = run("graph", "resume", str(snapshots / task_id))
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.stdout and [RUNS[(task_id, n)] for n in "abc"] == [1, 2, 1]


def test_run_on_redis(redis_url: str) -> None:
    task = json.loads(TASK) | {"id": f"redis-{uuid.uuid4().hex[:8]}"}
    result = run("graph", "run", "examples.research:graph", "--task", json.dumps(task), "--cache", f"{redis_url}/3")
    assert result.exit_code == 0, result.output
    assert "summarise: done (visits 2)" in result.stdout
