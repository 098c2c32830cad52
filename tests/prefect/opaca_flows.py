"""Flows the deployment-action tests deploy (tagged ``opaca``): each one shows one behaviour of a flow run.

Every flow persists a JSON result, as flows used as OPACA actions should. Names start with ``opaca-test-`` so
they never meet the repository's deployments on the session's Prefect server.
"""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

JSON = {"persist_result": True, "result_serializer": "json"}


@flow(name="opaca-test-double", **JSON)
def double(x: int) -> int:
    """Doubles a number, logging it and leaving a markdown artifact.

    (This second paragraph is not part of the action's description.)
    """
    get_run_logger().info("doubling %s", x)
    create_markdown_artifact(f"**{x}** doubled is **{2 * x}**", key="opaca-test-double")
    return 2 * x


@flow(name="opaca-test-fail", **JSON)
def fail(reason: str = "no reason") -> None:
    """Always fails, with the reason given."""
    raise ValueError(f"refused: {reason}")


@flow(name="opaca-test-sleep", **JSON)
def sleep(seconds: Annotated[float, Field(ge=0, le=60)] = 1.0) -> str:
    """Sleeps, then says how long."""
    get_run_logger().info("sleeping %s s", seconds)
    time.sleep(seconds)
    get_run_logger().info("woke up")
    return f"slept {seconds} s"


@task
def step(index: int, seconds: float) -> int:
    time.sleep(seconds)
    return index


@flow(name="opaca-test-steps", **JSON)
def steps(count: int = 10, seconds: float = 0.3) -> int:
    """Runs ``count`` tasks one after the other: a run that can be suspended between two of them."""
    return sum(step(index, seconds) for index in range(count))


@flow(name="opaca-test-flaky", retries=1, retry_delay_seconds=0, **JSON)
def flaky(marker: str) -> str:
    """Fails the first time it sees ``marker`` (a file path), then succeeds: Prefect's flow retry runs it again."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return "second attempt"


@flow(name="opaca-test-delayed-retries", retries=2, retry_delay_seconds=30, **JSON)
def delayed_retries(x: int = 1) -> int:
    """Would retry after a delay: its runs execute on the deployment's runner, never in the container."""
    return x


class Color(Enum):
    RED = "red"
    GREEN = "green"


class Inner(BaseModel):
    z: int


class Car(BaseModel):
    brand: str
    inner: Inner


@flow(name="opaca-test-shapes", **JSON)
def shapes(car: Car, color: Color, mode: Literal["a", "b"] = "a", names: list[str] | None = None,
           count: Annotated[int, Field(ge=1)] = 1, either: int | str = 1, table: dict[str, int] | None = None,
           cars: list[Car] | None = None) -> Car:
    """Echoes its car: parameters of every shape a schema can hold."""
    return car
