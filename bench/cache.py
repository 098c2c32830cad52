"""Benchmark of ``RedisCache``'s namespace index: a graph run's snapshots cost its own keys, not the database's.

Run it with ``make bench`` or directly::

    .venv/bin/python bench/cache.py                  # 100,000 unrelated keys, median of 15 (~30 s)
    .venv/bin/python bench/cache.py --noise 1000000 --reps 9
    .venv/bin/python bench/cache.py --quick          # smoke run: 10,000 keys, median of 3

No ``PYTHONPATH`` is needed. Progress goes to stderr, the table to stdout. A measurement, not a test: it exits 0
once it ran, whatever the figures. Redis as in ``bench/graph.py`` (whose helpers it uses): ``REDIS_URL`` with
database ``--redis-db`` (default 9), or a private ``redis-server`` on a free port; every key written starts with
one random root ``fmbench_<hex>`` and only those are deleted at the end.

A ``RedisCache`` namespace holds 50 JSON values and 2 mailboxes (what a mid-sized graph run leaves). Measured in
one process, every figure the median of ``--reps``, the sides taking turns within each repetition:

1. ``dump_namespace()`` (what an auto-snapshotting graph run calls after every node) with the database empty
   but for the namespace, then with ``--noise`` unrelated keys added. Target: noisy / clean <= 1.5 (the dump
   costs the namespace, not the database).
2. Baseline at that noise: the listing the cache used before its index, ``SCAN MATCH fm{P}:[km][vb]:*`` (count
   1000) and then the same one-MULTI read of every value's GET+PTTL and mailbox's LRANGE, on redis.asyncio.
   Target at 100,000 keys or more: flowmas / SCAN <= 0.1 (information below).
3. A 20-node chain with ``auto_snapshot=True`` on the ``RedisCache`` (a snapshot after every node, written to a
   temp dir), noisy / clean per run. Target <= 1.2.
4. For information, what the index costs a write: ``set()`` (one MULTI of SET + ZADD) against a bare redis.asyncio
   ``SET`` of the same bytes, sequential round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from benchkit import Row, median, print_table, ratio
from graph import delete_keys, load_noise, start_redis, stop_redis

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from flowmas.cache import Cache, RedisCache  # noqa: E402
from flowmas.graph import Agent, AgentModule, ModuleResult, Node, Task, TaskStatus  # noqa: E402

VALUES, MAILBOXES, CHAIN = 50, 2, 20


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Ex(AgentModule):
    async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
        await cache.set(self.name, {"done": True})
        return {"status": "success", "result": self.name}


async def fill(cache: RedisCache) -> None:
    for i in range(VALUES):
        await cache.set(f"node:{i}", {"result": "x" * 64, "i": i})
    for i in range(MAILBOXES):
        await cache.publish_to_mailbox(f"agent{i}", {"message": i})


async def scan_dump(client: aioredis.Redis, pattern: str) -> int:
    """The pre-index listing: SCAN MATCH, then GET+PTTL / LRANGE in one MULTI. Returns the entries read."""
    names = [name async for name in client.scan_iter(match=pattern, count=1000)]
    async with client.pipeline(transaction=True) as pipe:
        for name in names:
            if b":mb:" in name:
                pipe.lrange(name, 0, -1)
            else:
                pipe.get(name)
                pipe.pttl(name)
        await pipe.execute()
    return len(names)


async def chain_run(cache: RedisCache, snapshots: Path) -> float:
    agent = Agent(cache=cache, auto_snapshot=True, snapshot_dir=snapshots)
    for k in range(CHAIN):
        agent.add_node(Node(name=f"n{k}", modules=[Ex(name=f"m{k}")], dependencies=[f"n{k - 1}"] if k else []))
    began = time.perf_counter()
    out = await agent.run_task(Task(type="bench", objective="bench"))
    elapsed = time.perf_counter() - began
    if out["status"] != TaskStatus.COMPLETE:
        raise RuntimeError(f"the chain ended {out['status']}")
    return elapsed


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    began = time.perf_counter()
    await call()
    return time.perf_counter() - began


async def measure(url: str, root: str, reps: int, noisy: Callable[[], None], work: Path) -> dict[str, list[float]]:
    cache = RedisCache(url, namespace="snap", key_root=f"{root}_f")
    client = aioredis.Redis.from_url(url)
    pattern = f"{root}_f{{snap}}:[km][vb]:*"
    await fill(cache)
    if len((await cache.dump_namespace())["values"]) != VALUES or await scan_dump(client, pattern) != VALUES + 2:
        raise RuntimeError("the namespace does not hold what was written")
    times: dict[str, list[float]] = {k: [] for k in ("dump clean", "chain clean", "dump noisy", "scan noisy",
                                                    "chain noisy", "set", "bare SET")}

    async def round_of(label: str) -> None:
        for rep in range(reps):
            runs: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                (f"dump {label}", cache.dump_namespace),
                (f"chain {label}", lambda: chain_run(cache, work / uuid.uuid4().hex))]
            if label == "noisy":
                runs.append(("scan noisy", lambda: scan_dump(client, pattern)))
            for name, call in runs[rep % len(runs):] + runs[:rep % len(runs)]:
                if name.startswith("chain"):
                    times[name].append(await call())
                else:
                    times[name].append(await timed(call))

    for call in (cache.dump_namespace, lambda: chain_run(cache, work / "warm")):
        await call()  # warm-up: connections, the script's SHA, imports
    await round_of("clean")
    progress(f"clean: dump {1e3 * (median(times['dump clean']) or 0):.2f} ms; loading noise...")
    noisy()
    await round_of("noisy")
    payload = b'{"result":"' + b"x" * 64 + b'"}'
    for rep in range(reps * 20):
        first, second = (("set", lambda: cache.set("w", {"result": "x" * 64})),
                         ("bare SET", lambda: client.set(f"{root}_bare", payload)))[::1 if rep % 2 else -1]
        times[first[0]].append(await timed(first[1]))
        times[second[0]].append(await timed(second[1]))
    await cache.clear()
    await cache.close()
    await client.aclose()
    return times


def report(times: dict[str, list[float]], noise: int) -> None:
    def ms(key: str) -> str:
        value = median(times[key])
        return "-" if value is None else f"{value * 1e3:.3f} ms"

    def row(measure: str, mine: str, base: str, goal: float | None) -> Row:
        r = ratio(median(times[mine]), median(times[base]))
        met = "" if goal is None or r is None else ("✓" if r <= goal else "✗")
        return Row(measure, ms(mine), ms(base), "-" if r is None else f"{r:.3f}",
                   "info" if goal is None else f"≤ {goal:g}", met)

    print(f"RedisCache namespace of {VALUES} values + {MAILBOXES} mailboxes; noise = {noise:,} unrelated keys")
    print_table([
        row("dump_namespace, noisy vs clean db", "dump noisy", "dump clean", 1.5),
        row(f"dump_namespace vs SCAN listing ({noise:,} keys)", "dump noisy", "scan noisy",
            0.1 if noise >= 100_000 else None),  # the target is set at 100k keys
        row(f"{CHAIN}-node chain, snapshot per node, noisy vs clean", "chain noisy", "chain clean", 1.2),
        row("set() with its index entry vs a bare SET", "set", "bare SET", None),
    ])


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=int, default=100_000, help="unrelated keys added (default 100,000)")
    parser.add_argument("--reps", type=int, default=15, help="repetitions per figure (default 15)")
    parser.add_argument("--redis-db", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="smoke run: --noise 10000 --reps 3")
    args = parser.parse_args(argv)
    if args.quick:
        args.noise, args.reps = 10_000, 3
    if args.noise < 1 or args.reps < 1:
        parser.error("--noise and --reps must be >= 1")
    with tempfile.TemporaryDirectory(prefix="fmbench-cache-") as tmp:
        work = Path(tmp)
        target = start_redis(work, args.redis_db)
        root = f"fmbench_{uuid.uuid4().hex[:10]}"
        try:
            times = asyncio.run(measure(target.url, root, args.reps,
                                        lambda: progress(f"noise loaded in "
                                                         f"{load_noise(target, root, 0, args.noise):.2f} s"), work))
        finally:
            progress(f"deleted {delete_keys(target, root)} keys under {root}_*")
            stop_redis(target)
    report(times, args.noise)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
