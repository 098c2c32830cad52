"""Helpers shared by the Prefect test modules: project files, HTTP assets and polling.

A module of plain functions rather than fixtures, so each test module imports what it uses and stays
readable on its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun

from tests.servers.http_files import FileServer

REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")
DATA = os.urandom(150_000)
PATH = "/files/model.bin"


def write_project(directory: Path, assets: list[dict[str, Any]], *, name: str = "flowmas.yaml") -> Path:
    """A flowmas.yaml in ``directory`` declaring ``assets``, with its cache under ``directory/cache``."""
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / name
    file.write_text(yaml.safe_dump({"name": "test", "assets": assets,
                                    "settings": {"assets": {"cache_dir": str(directory / "cache")}}}))
    return file


def http_asset(server: FileServer, name: str = "model", path: str = PATH, **extra: Any) -> dict[str, Any]:
    """An http asset served by ``server``; retries cost no time."""
    return {"name": name, "version": "v1", "retries": 2, "retry_delay_seconds": 0,
            "source": {"type": "http", "url": server.url_for(path)}, **extra}


def eventually(read: Callable[[], T], done: Callable[[T], bool], timeout: float = 30.0) -> T:
    """Poll ``read`` until ``done`` holds or ``timeout`` passes; returns the last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def final_task_runs(client: SyncPrefectClient, flow_run_id: Any, count: int = 1) -> list[TaskRun]:
    """The flow run's task runs once at least ``count`` exist and all are final in the API.

    The client reports a task run's states to the server as events, written after the flow returns, so a read
    straight after the run can still see ``Running``."""
    return eventually(
        lambda: client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))),
        lambda runs: len(runs) >= count and all(r.state is not None and r.state.is_final() for r in runs),
    )
