"""Graph test fixtures: real caches (EmbeddedCache and the session's Redis), small modules, graph builders."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Annotated, Any

import pytest
import pytest_asyncio
import redis
from pydantic import Field, SkipValidation

from flowmas.cache import BaseCache, EmbeddedCache, RedisCache
from flowmas.graph import AgentModule, Middleware, ModuleConfig, Node, NodeConfig, NonRetryableError


def _purge(url: str, root: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        names = list(client.scan_iter(match=f"{root}*", count=1000))
        if names:
            client.delete(*names)
    finally:
        client.close()


async def _make(kind: str, redis_url: str) -> tuple[BaseCache, str | None]:
    if kind == "embedded":
        return EmbeddedCache(), None
    root = f"fmgraph-{uuid.uuid4().hex[:12]}"
    return RedisCache(redis_url, key_root=root), root


@pytest_asyncio.fixture(params=["embedded", "redis"], loop_scope="function")
async def cache(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[BaseCache]:
    """Each cache-dependent engine test runs twice: on EmbeddedCache and on the real Redis."""
    made, root = await _make(request.param, redis_url)
    try:
        yield made
    finally:
        await made.close()
        if root is not None:
            _purge(redis_url, root)


@pytest_asyncio.fixture(loop_scope="function")
async def mem() -> AsyncIterator[BaseCache]:
    """An EmbeddedCache, for tests about the engine alone (no backend difference to cover)."""
    made = EmbeddedCache()
    yield made
    await made.close()


@pytest.fixture(autouse=True)
def _snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "snapshots"
    monkeypatch.setenv("FLOWMAS_SNAPSHOT_DIR", str(folder))
    return folder


class Ex(AgentModule):
    """Succeeds with ``value`` after ``delay`` seconds, appending its name to ``calls``; can write a key."""

    value: Any = None
    delay: float = 0.0
    calls: Annotated[list[str], SkipValidation] = Field(default_factory=list)
    writes: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)

    async def process(self, cache: Any, semaphore: Any) -> dict[str, Any]:
        self.calls.append(self.name)
        if self.delay:
            await asyncio.sleep(self.delay)
        for key, value in self.writes.items():
            await cache.set(key, value)
        return {"status": "success", "result": self.value if self.value is not None else self.name, **self.extra}


class Boom(AgentModule):
    """Raises (``NonRetryableError`` with ``final``), or returns an error dict with ``soft``; counts attempts."""

    calls: Annotated[list[str], SkipValidation] = Field(default_factory=list)
    final: bool = False
    soft: bool = False
    fail_times: int = 10**9

    async def process(self, cache: Any, semaphore: Any) -> dict[str, Any]:
        self.calls.append(self.name)
        attempt = sum(1 for c in self.calls if c == self.name)
        if attempt <= self.fail_times:
            if self.final:
                raise NonRetryableError(f"{self.name} cannot be retried")
            if self.soft:
                return {"status": "error", "error": f"{self.name} soft failure {attempt}"}
            raise RuntimeError(f"{self.name} failed on attempt {attempt}")
        return {"status": "success", "result": f"attempt {attempt}"}


class Counter(AgentModule):
    """Increments the cache key ``key`` and returns the new value."""

    key: str = "i"

    async def process(self, cache: Any, semaphore: Any) -> dict[str, Any]:
        value = await cache.get(self.key, 0) + 1
        await cache.set(self.key, value)
        return {"status": "success", "result": value}


class Stream(AgentModule):
    """An async generator: yields ``n`` items (forever with n=None); records starts and closes."""

    n: int | None = 3
    events: Annotated[list[str], SkipValidation] = Field(default_factory=list)

    async def process(self, cache: Any, semaphore: Any) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        self.events.append("start")
        try:
            i = 0
            while self.n is None or i < self.n:
                i += 1
                yield {"status": "success", "result": i}
        finally:
            self.events.append("close")


class Tag(Middleware):
    def __init__(self, tag: str) -> None:
        self.tag = tag

    async def process(self, data: dict[str, Any], cache: Any) -> dict[str, Any]:
        return {**data, "tags": [*data.get("tags", []), self.tag]}


def node(name: str, *deps: str, modules: Iterable[AgentModule] | None = None, **config: Any) -> Node:
    """A node with an ``Ex`` module named after it, unless ``modules`` are given."""
    snapshot = config.pop("snapshot", None)
    extra: dict[str, Any] = {"snapshot": snapshot} if snapshot is not None else {}
    return Node(name=name, dependencies=list(deps), modules=list(modules or [Ex(name=name.lower())]),
                node_config=NodeConfig(**config), **extra)


def ex(name: str, calls: list[str] | None = None, **fields: Any) -> Ex:
    return Ex(name=name, calls=calls if calls is not None else [], **fields)


def timeout(seconds: float) -> ModuleConfig:
    return ModuleConfig(timeout=seconds)
