"""Benchmark of flowmas's agent task graph engine (``flowmas.graph``) against Asimov Agents 0.6.0, and of tracked
nodes against bare Prefect task runs.

Run it with ``make bench`` (which runs ``.venv/bin/python bench/graph.py``) or directly::

    .venv/bin/python bench/graph.py                   # everything, median of 9 (~2-4 min on 2 cores)
    .venv/bin/python bench/graph.py --quick           # smoke run: median of 3, fewer tracked nodes
    .venv/bin/python bench/graph.py --skip-tracked --json /tmp/graph.json

No ``PYTHONPATH`` is needed: the script puts the repository root first on ``sys.path``. Progress goes to
stderr; the summary table (and the ``--json`` file) are the output. It is a measurement, not a test: it exits 0
once it ran, whatever the figures (non-zero only for bad options or a crash of the harness itself). Every
ratio compares figures taken in the same run, because absolute times on a shared 2-core machine move by 2x
between runs (``shared/anchors/asimov-graph.md`` section 4 holds the figures this reproduces).

Scenarios, built the same way on both sides (``Ex`` returns ``{"status": "success", "result": name}``; every
node has ``max_visits=100``; the agents ``max_total_iterations=10000`` and the default
``max_concurrent_tasks=5``):

(a) ``chain50``: 50 nodes, each depending on the previous one (50 node executions);
(b) ``fan50``: a root and 50 nodes depending on it (51 node executions);
(c) ``loop20``: G (reads ``i``, default 0, and writes ``i + 1``) and F depending on G, a flow-control module with
    one decision: jump to G when the Lua condition ``i < 20`` holds (spaces: Asimov binds variables by
    splitting the text on spaces). 20 visits of G and 20 of F: 40 node executions; every run is checked
    to end with ``i == 20``;
(d) ``plan400``: ``compile_execution_plan()`` of a 400-node chain (nodes added dependencies first, so
    Asimov's recursive DFS stays within the recursion limit). flowmas's ``compile_execution_plan()``
    validates the graph (unknown dependencies, cycles, jump targets, Lua syntax) and then levels it.

(a)-(c) run on the in-process cache (Asimov's ``MockRedisCache``, flowmas's ``EmbeddedCache``, a fresh one per
run) and on Redis (one ``RedisCache`` per process, connected during the warm-up run; Asimov's with a fresh key prefix
per run via ``with_prefix``, flowmas's run namespace is the task id, fresh per run). (c) on Redis runs three
times: with no other keys in the database, then with 10,000 and with 100,000 unrelated keys (pipelined SETs
of ``<root>_noise:<n>``), which Asimov's flow control SCANs on every decision.

Method (the anchor's): a fresh Agent and Task per run; only ``await agent.run_task(task)`` (or the one
``compile_execution_plan()`` call) is timed; one warm-up run per scenario and side discarded; median of
``--reps`` (9; 3 with ``--quick``). Every run is checked (status complete, ``i == 20`` for the loop); a failing
scenario is reported, not timed. Per-node overhead = median run time / node executions. Each side is one
long-lived child process (flowmas: this script with ``--worker`` on this venv's Python 3.11; Asimov: a runner
script written to the work dir, on the Asimov venv's Python 3.12) that runs one scenario per request on a
line protocol, so the harness interleaves the two sides run by run (the side going first alternates) and a
change of the machine's load hits both. Redis command counts per run are ``INFO commandstats`` deltas taken by
the harness around each timed run (one side runs at a time; INFO itself left out): exact when the benchmark
owns the Redis; with ``REDIS_URL`` other clients of that server add their commands.

Targets (the issue's): inline per-node overhead on the in-process cache <= Asimov's (ratio <= 1) for (a) and
(b); (c) with 100k unrelated keys <= 0.05x Asimov; (d) <= 0.02x Asimov; the other rows are information.

Tracked nodes: when ``tasks/graph.py`` (the Prefect face) exists, a chain of ``--tracked-nodes`` (50; 10 with
``--quick``) executor nodes with ``NodeConfig(track=True)`` on an ``EmbeddedCache`` is run by
``agent.run_task(task, node_runner=prefect_node_runner())`` inside an async flow (each visit one ``graph-node``
task run), against the same number of calls of a trivial ``@task`` async function (Prefect's defaults), awaited
one after the other inside an async flow: the target is tracked <= 1.2x that baseline per node. A second
baseline, the same trivial task with ``cache_policy=NO_CACHE, persist_result=False`` (the options the face's
task uses), is shown for information. All against one temporary Prefect server (``prefect_test_harness``, a
temporary ``PREFECT_HOME``, SQLite) in one child process; each figure is timed inside its flow (flow-run
creation and teardown excluded); the three flows take turns (the one going first rotates); median of
``--tracked-reps`` (9; 3 with ``--quick``) flow runs each after one warm-up round. Prefect's per-task cost on a
loaded 2-core machine moves by 2x from one flow run to the next (single flow runs gave tracked/bare from 0.65
to 2.4): read this ratio over several runs of the benchmark. The task runs of node ``n1`` are counted on the
server afterwards (one per tracked flow run expected). Without ``tasks/graph.py`` only the baselines are printed.

Redis: ``REDIS_URL`` when set (its host, port and password; the database is ``--redis-db``, default 9,
whatever the URL says); otherwise a private ``redis-server`` on a free port of 127.0.0.1 (no persistence)
started and stopped by this script. Every key the benchmark writes starts with one random root
``fmbench_<hex>``; only those keys are deleted at the end (SCAN MATCH + UNLINK), nothing is flushed.

Asimov 0.6.0 requires Python >= 3.12. It is installed by this script from PyPI into its own venv, kept between
runs under ``~/.cache/flowmas-bench/asimov-0.6.0`` (``--asimov-venv``): ``-m venv`` with the first of
``--asimov-python``, pyenv's ``~/.pyenv/versions/3.12*/bin/python3.12``, ``python3.12`` on ``PATH``, then the
same for 3.13 (on 3.13 pip tried to build one of Asimov's dependencies from source, and failed), then
``pip install asimov-agents==0.6.0`` (about 90 packages: redis, lupa, jsonpickle, pydantic and the inference SDKs
with boto3, google-cloud-aiplatform, grpcio, numpy...; ~45 s once). If no interpreter is found or the install
fails, the reason is printed and only the Asimov baselines are skipped. Nothing else is downloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

ASIMOV_VERSION = "0.6.0"
ASIMOV_REQUIREMENTS = (f"asimov-agents=={ASIMOV_VERSION}",)
DEFAULT_ASIMOV_VENV = Path("~/.cache/flowmas-bench") / f"asimov-{ASIMOV_VERSION}"
WORKER_TIMEOUT = 1800.0
MAX_VISITS = 100
MAX_TOTAL_ITERATIONS = 10_000
TURNS = 20
NOISE_LEVELS = (0, 10_000, 100_000)

_STARTED = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since the start."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Scenario:
    kind: str  # chain, fan, loop, plan
    size: int
    backend: str  # memory, redis
    noise: int = 0

    @property
    def key(self) -> str:
        noise = f"+{self.noise // 1000}k" if self.noise else ""
        return f"{self.kind}{self.size}/{self.backend}{noise}"

    @property
    def executions(self) -> int:
        return {"chain": self.size, "fan": self.size + 1, "loop": 2 * self.size, "plan": 1}[self.kind]

    def spec(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "size": self.size, "backend": self.backend}


def scenarios_for(noise: int) -> list[Scenario]:
    if noise:
        return [Scenario("loop", TURNS, "redis", noise)]
    return [Scenario("chain", 50, "memory"), Scenario("fan", 50, "memory"), Scenario("loop", TURNS, "memory"),
            Scenario("chain", 50, "redis"), Scenario("fan", 50, "redis"), Scenario("loop", TURNS, "redis"),
            Scenario("plan", 400, "memory")]


# -------------------------------------------------------------------------------------------------- workers
#
# Both sides are long-lived child processes speaking one line protocol, so that the harness can interleave their
# runs one by one. The spec is one JSON argument ({"redis", "root", "max_visits", "max_total_iterations"}); each
# line on stdin is a scenario (``Scenario.spec()``); the child runs it once (a fresh Agent and Task, or one plan
# compilation), checks the outcome and answers one JSON line {"seconds", "error"} on the file descriptor that
# was its stdout (its own stdout goes to stderr: Asimov prints). An empty line ends it.

WORKER_LOOP = textwrap.dedent(
    """
    def serve(run_once):
        proto = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        print(json.dumps({"ready": True, "versions": VERSIONS}), file=proto, flush=True)

        async def loop():
            while True:
                line = sys.stdin.readline()
                if not line.strip():
                    return
                sc = json.loads(line)
                try:
                    reply = {"seconds": await run_once(sc), "error": None}
                except Exception as exc:
                    traceback.print_exc()
                    reply = {"seconds": None, "error": f"{type(exc).__name__}: {exc}"[:600]}
                print(json.dumps(reply), file=proto, flush=True)

        asyncio.run(loop())
    """
).strip()

ASIMOV_RUNNER = textwrap.dedent(
    '''
    """Asimov Agents 0.6.0 side of bench/graph.py (written by it; runs in the Asimov venv)."""
    import asyncio, contextlib, importlib.metadata, json, os, sys, time, traceback, uuid
    from asimov.caches.mock_redis_cache import MockRedisCache
    from asimov.caches.redis_cache import RedisCache
    from asimov.graph import (Agent, AgentModule, FlowControlConfig, FlowControlModule, FlowDecision, ModuleType,
                              Node, NodeConfig)
    from asimov.graph.tasks import Task, TaskStatus

    spec = json.loads(sys.argv[1])
    MAX_VISITS, MAX_TOTAL_ITERATIONS = spec["max_visits"], spec["max_total_iterations"]
    VERSIONS = {n: importlib.metadata.version(n) for n in ("asimov-agents", "redis", "lupa", "pydantic")}
    VERSIONS["python"] = sys.version.split()[0]

    WORKER_LOOP

    class Ex(AgentModule):
        async def process(self, cache, semaphore):
            return {"status": "success", "result": self.name}

    class Bump(AgentModule):
        async def process(self, cache, semaphore):
            i = await cache.get("i", 0)
            await cache.set("i", i + 1)
            return {"status": "success", "result": i + 1}

    def node(name, deps, module=None):
        return Node(name=name, modules=[module or Ex(name="m", type=ModuleType.EXECUTOR)], dependencies=deps,
                    node_config=NodeConfig(max_visits=MAX_VISITS))

    def build(kind, size, cache):
        agent = Agent(cache=cache, max_total_iterations=MAX_TOTAL_ITERATIONS)
        if kind in ("chain", "plan"):
            for k in range(size):
                agent.add_node(node(f"n{k}", [f"n{k - 1}"] if k else []))
        elif kind == "fan":
            agent.add_node(node("root", []))
            for k in range(size):
                agent.add_node(node(f"n{k}", ["root"]))
        else:
            agent.add_node(node("G", [], Bump(name="bump", type=ModuleType.EXECUTOR)))
            decision = FlowDecision(next_node="G", condition=f"i < {size}")
            agent.add_node(node("F", ["G"], FlowControlModule(name="fc", type=ModuleType.FLOW_CONTROL,
                                                             flow_config=FlowControlConfig(decisions=[decision]))))
        return agent

    shared = None
    if spec["redis"] is not None:
        r = spec["redis"]
        shared = RedisCache(host=r["host"], port=r["port"], db=r["db"], password=r["password"],
                            default_prefix=spec["root"] + "_a")
    plans = {}

    async def run_once(sc):
        if sc["kind"] == "plan":
            agent = plans.get(sc["key"]) or plans.setdefault(sc["key"], build("plan", sc["size"], MockRedisCache()))
            began = time.perf_counter()
            plan = agent.compile_execution_plan()
            elapsed = time.perf_counter() - began
            if len(plan) != sc["size"]:
                raise RuntimeError(f"the plan has {len(plan)} steps, expected {sc['size']}")
            return elapsed
        redis = sc["backend"] == "redis"
        agent = build(sc["kind"], sc["size"], shared if redis else MockRedisCache())
        task = Task(type="bench", objective="bench")
        # a fresh key prefix per run, like flowmas's run namespace; Lua binds v_<prefix>_i: keep it an identifier
        scope = shared.with_prefix(f"{spec['root']}_a{uuid.uuid4().hex}") if redis else contextlib.nullcontext()
        async with scope:
            began = time.perf_counter()
            await agent.run_task(task)
            elapsed = time.perf_counter() - began
        if task.status != TaskStatus.COMPLETE:
            raise RuntimeError(f"run ended {task.status}: {str(agent.node_results)[:300]}")
        if sc["kind"] == "loop":
            last = agent.node_results["G"]["results"][0]["result"]
            if last != sc["size"]:
                raise RuntimeError(f"the loop ended with i == {last}, expected {sc['size']}")
        return elapsed

    serve(run_once)
    '''
).lstrip().replace("WORKER_LOOP", WORKER_LOOP)


def commandstats(client: Any) -> dict[str, int]:
    """Calls per command from INFO commandstats (INFO itself left out)."""
    counts: dict[str, int] = {}
    for name, value in client.info("commandstats").items():
        name = str(name).removeprefix("cmdstat_")
        if name != "info" and isinstance(value, dict):
            counts[name] = int(value.get("calls", 0))
    return counts


def flowmas_worker(spec: dict[str, Any]) -> None:
    """flowmas side of the protocol (``bench/graph.py --worker SPEC``), run with this venv's Python."""
    import traceback
    from importlib.metadata import version

    from flowmas.cache import Cache, EmbeddedCache, RedisCache
    from flowmas.graph import (
        Agent,
        AgentModule,
        FlowControlConfig,
        FlowControlModule,
        FlowDecision,
        ModuleResult,
        Node,
        NodeConfig,
        Task,
        TaskStatus,
    )

    versions = {n: version(n) for n in ("flowmas", "redis", "lupa", "pydantic")}
    versions["python"] = platform.python_version()
    namespace: dict[str, Any] = {"os": os, "sys": sys, "json": json, "asyncio": asyncio, "traceback": traceback,
                                 "VERSIONS": versions}
    exec(WORKER_LOOP, namespace)  # the same loop as the Asimov runner's
    serve: Callable[[Callable[[dict[str, Any]], Awaitable[float]]], None] = namespace["serve"]

    class Ex(AgentModule):
        async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
            return {"status": "success", "result": self.name}

    class Bump(AgentModule):
        async def process(self, cache: Cache, semaphore: Any) -> ModuleResult:
            i = await cache.get("i", 0)
            await cache.set("i", i + 1)
            return {"status": "success", "result": i + 1}

    def node(name: str, deps: list[str], module: AgentModule | None = None) -> Node:
        return Node(name=name, modules=[module or Ex(name="m")], dependencies=deps,
                    node_config=NodeConfig(max_visits=MAX_VISITS))

    def build(kind: str, size: int, cache: Cache) -> Agent:
        agent = Agent(cache=cache, max_total_iterations=MAX_TOTAL_ITERATIONS)
        if kind in ("chain", "plan"):
            for k in range(size):
                agent.add_node(node(f"n{k}", [f"n{k - 1}"] if k else []))
        elif kind == "fan":
            agent.add_node(node("root", []))
            for k in range(size):
                agent.add_node(node(f"n{k}", ["root"]))
        else:
            agent.add_node(node("G", [], Bump(name="bump")))
            decision = FlowDecision(next_node="G", condition=f"i < {size}")
            agent.add_node(node("F", ["G"], FlowControlModule(
                name="fc", flow_config=FlowControlConfig(decisions=[decision]))))
        return agent

    shared: list[RedisCache] = []  # created on first use, inside the event loop it is bound to
    plans: dict[str, Agent] = {}

    async def run_once(sc: dict[str, Any]) -> float:
        if sc["kind"] == "plan":
            agent = plans.get(sc["key"]) or plans.setdefault(sc["key"], build("plan", sc["size"], EmbeddedCache()))
            began = time.perf_counter()
            plan = agent.compile_execution_plan()
            elapsed = time.perf_counter() - began
            if len(plan) != sc["size"]:
                raise RuntimeError(f"the plan has {len(plan)} levels, expected {sc['size']}")
            return elapsed
        cache: Cache
        if sc["backend"] == "redis":
            if not shared:
                shared.append(RedisCache(spec["redis"]["url"], key_root=f"{spec['root']}_f"))
            cache = shared[0]
        else:
            cache = EmbeddedCache()
        agent = build(sc["kind"], sc["size"], cache)
        task = Task(type="bench", objective="bench")
        began = time.perf_counter()
        out = await agent.run_task(task)
        elapsed = time.perf_counter() - began
        if out["status"] != TaskStatus.COMPLETE:
            raise RuntimeError(f"run ended {out['status']}: {str(out)[:300]}")
        if sc["kind"] == "loop":
            last = out["result"]["G"]["results"][0]["result"]
            if last != sc["size"]:
                raise RuntimeError(f"the loop ended with i == {last}, expected {sc['size']}")
        return elapsed

    serve(run_once)


# ----------------------------------------------------------------------------------------------- the venv


@dataclass
class AsimovVenv:
    python: Path | None
    note: str | None  # why it is skipped


def find_python312(explicit: str | None) -> Path | None:
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit).expanduser())
    pyenv = Path("~/.pyenv/versions").expanduser()
    for minor in ("3.12", "3.13"):  # 3.12 first: on 3.13 one of Asimov's dependencies builds from source and fails
        candidates += sorted(pyenv.glob(f"{minor}*/bin/python{minor}"), reverse=True)
        found = shutil.which(f"python{minor}")
        if found:
            candidates.append(Path(found))
    for candidate in candidates:
        if candidate.exists() and _python_ok(candidate):
            return candidate
    return None


def _python_ok(python: Path) -> bool:
    try:
        done = subprocess.run([str(python), "-c", "import sys; sys.exit(sys.version_info < (3, 12))"],
                              capture_output=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _asimov_version(python: Path) -> str | None:
    try:
        done = subprocess.run([str(python), "-c", ("import importlib.metadata as m, asimov.graph; "
                               "print(m.version('asimov-agents'))")], capture_output=True, text=True, check=False,
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_asimov(venv: Path, explicit_python: str | None) -> AsimovVenv:
    """A venv holding asimov-agents 0.6.0 on Python >= 3.12, installed on first use (kept afterwards)."""
    python = venv / "bin" / "python"
    if python.exists():
        if _asimov_version(python) == ASIMOV_VERSION:
            return AsimovVenv(python, None)
        progress(f"Asimov venv at {venv} is unusable; rebuilding it")
        shutil.rmtree(venv, ignore_errors=True)
    base = find_python312(explicit_python)
    if base is None:
        return AsimovVenv(None, "no Python >= 3.12 found (Asimov 0.6.0 requires it); pass --asimov-python")
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return AsimovVenv(None, f"cannot create {venv.parent}: {exc}")
    progress(f"installing {' '.join(ASIMOV_REQUIREMENTS)} into {venv} with {base} (once; kept for later runs)")
    steps = [[str(base), "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *ASIMOV_REQUIREMENTS]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, check=False, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(venv, ignore_errors=True)
            return AsimovVenv(None, f"{' '.join(step[:4])}: {exc}")
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "WARNING" not in line][-6:]
            shutil.rmtree(venv, ignore_errors=True)
            return AsimovVenv(None, f"`{' '.join(step)}` exited {done.returncode}: " + " | ".join(errors))
    if _asimov_version(python) != ASIMOV_VERSION:
        shutil.rmtree(venv, ignore_errors=True)
        return AsimovVenv(None, "asimov.graph is not importable after the install")
    return AsimovVenv(python, None)


# -------------------------------------------------------------------------------------------------- Redis


@dataclass
class RedisTarget:
    url: str  # with the benchmark's database
    host: str
    port: int
    db: int
    password: str | None
    owned: bool
    process: subprocess.Popen[bytes] | None = None

    def spec(self) -> dict[str, Any]:
        return {"url": self.url, "host": self.host, "port": self.port, "db": self.db, "password": self.password}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def start_redis(work: Path, db: int) -> RedisTarget:
    """``REDIS_URL`` with database ``db``, or a private redis-server this script starts (and later stops)."""
    env_url = os.environ.get("REDIS_URL")
    if env_url:
        parts = urlsplit(env_url)
        url = urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))
        if not _answers(url):
            raise SystemExit(f"REDIS_URL={parts.scheme}://{parts.hostname}:{parts.port} does not answer.")
        return RedisTarget(url, parts.hostname or "localhost", parts.port or 6379, db, parts.password, owned=False)
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("No REDIS_URL and no redis-server on PATH: apt-get install -y redis-server, or set "
                         "REDIS_URL.")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(work)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/{db}"
    deadline = time.monotonic() + 15
    while not _answers(url):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit(f"Started a private redis-server on port {port}, but it does not answer.")
        time.sleep(0.02)
    return RedisTarget(url, "127.0.0.1", port, db, None, owned=True, process=process)


def stop_redis(target: RedisTarget) -> None:
    if target.process is not None and target.process.poll() is None:
        target.process.terminate()
        try:
            target.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            target.process.kill()
            target.process.wait()


def load_noise(target: RedisTarget, root: str, start: int, stop: int) -> float:
    """SET ``<root>_noise:<n>`` for n in [start, stop), pipelined; returns the seconds it took."""
    client = redis.Redis.from_url(target.url)
    began = time.perf_counter()
    batch = 10_000
    for first in range(start, stop, batch):
        mapping = {f"{root}_noise:{n}": b"x" for n in range(first, min(stop, first + batch))}
        client.mset(mapping)
    client.close()
    return time.perf_counter() - began


def delete_keys(target: RedisTarget, root: str) -> int:
    """UNLINK every key starting with ``<root>_`` (what this run wrote); returns how many."""
    client = redis.Redis.from_url(target.url)
    deleted = 0
    batch: list[bytes] = []
    for name in client.scan_iter(match=f"{root}_*", count=5000):
        batch.append(name)
        if len(batch) >= 5000:
            deleted += int(client.unlink(*batch))
            batch.clear()
    if batch:
        deleted += int(client.unlink(*batch))
    client.close()
    return deleted


def db_size(target: RedisTarget) -> int:
    client = redis.Redis.from_url(target.url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------- harness


@dataclass
class Figures:
    times: list[float] = field(default_factory=list)
    commands: dict[str, float] | None = None
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


@dataclass
class Side:
    figures: dict[str, Figures] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    note: str | None = None


class Peer:
    """One worker process (either side), driven one run at a time."""

    def __init__(self, label: str, argv: list[str], spec: dict[str, Any], work: Path) -> None:
        self.label = label
        self.log_path = work / f"{label}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen([*argv, json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._log, cwd=work, text=True)
        self.versions: dict[str, str] = {}
        self.dead: str | None = None
        hello = self._read()
        if hello is not None:
            self.versions = hello.get("versions", {})

    def _read(self) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            tail = self.log_path.read_text(errors="replace")[-800:]
            self.dead = f"the {self.label} process exited {self.process.returncode}: {tail}"
            return None
        reply: dict[str, Any] = json.loads(line)
        return reply

    def run(self, sc: Scenario) -> tuple[float | None, str | None]:
        if self.dead:
            return None, self.dead
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(sc.spec()) + "\n")
            self.process.stdin.flush()
        except OSError as exc:
            self.dead = f"the {self.label} process is gone: {exc}"
            return None, self.dead
        reply = self._read()
        if reply is None:
            return None, self.dead
        return reply["seconds"], reply["error"]

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.write("\n")
                self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def measure_scenario(sc: Scenario, peers: dict[str, Peer], sides: dict[str, Side], reps: int, counter: Any) -> None:
    """One warm-up run per side, then ``reps`` runs each, alternating which side goes first; INFO commandstats
    around every timed Redis run gives that side's commands (one side runs at a time)."""
    names = list(peers)
    figures = {name: sides[name].figures.setdefault(sc.key, Figures()) for name in names}
    totals: dict[str, dict[str, int]] = {name: {} for name in names}
    for name in names:
        _, error = peers[name].run(sc)
        if error:
            figures[name].error = error
            progress(f"  {name} {sc.key} FAILED: {error}")
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            if figures[name].error:
                continue
            before = commandstats(counter) if sc.backend == "redis" else None
            seconds, error = peers[name].run(sc)
            if error or seconds is None:
                figures[name].error = error or "no figure"
                progress(f"  {name} {sc.key} FAILED: {figures[name].error}")
                continue
            figures[name].times.append(seconds)
            if before is not None:
                for command, calls in commandstats(counter).items():
                    totals[name][command] = totals[name].get(command, 0) + calls - before.get(command, 0)
    for name in names:
        if sc.backend == "redis" and figures[name].times:
            runs = len(figures[name].times)
            figures[name].commands = {k: v / runs for k, v in sorted(totals[name].items()) if v}
    progress(f"  {sc.key}: " + ", ".join(f"{n} {fmt_time(f.median)}" for n, f in figures.items()))


# ------------------------------------------------------------------------------------------- tracked nodes


TRACKED_SCRIPT = textwrap.dedent(
    '''
    """Tracked nodes vs bare Prefect tasks (written by bench/graph.py; runs in the flowmas venv)."""
    import asyncio, json, os, sys, time, traceback
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.testing.utilities import prefect_test_harness

    spec = json.loads(sys.argv[1])
    N, REPS = spec["nodes"], spec["reps"]

    @task
    async def trivial(k: int) -> int:
        return k

    @task(cache_policy=NO_CACHE, persist_result=False)
    async def trivial_lean(k: int) -> int:
        return k

    @flow
    async def bare_flow(n: int) -> float:
        began = time.perf_counter()
        for k in range(n):
            await trivial(k)
        return time.perf_counter() - began

    @flow
    async def lean_flow(n: int) -> float:
        began = time.perf_counter()
        for k in range(n):
            await trivial_lean(k)
        return time.perf_counter() - began

    result = {"bare": [], "lean": [], "tracked": [], "tracked_error": None, "task_runs": None}
    tracked_flow = None
    if os.path.exists(spec["face"]):
        try:
            from flowmas.cache import EmbeddedCache
            from flowmas.graph import Agent, AgentModule, Node, NodeConfig, Task
            from tasks.graph import prefect_node_runner

            class Ex(AgentModule):
                async def process(self, cache, semaphore):
                    return {"status": "success", "result": self.name}

            @flow
            async def tracked_flow(n: int) -> float:
                agent = Agent(cache=EmbeddedCache())
                for k in range(n):
                    agent.add_node(Node(name=f"n{k}", modules=[Ex(name="m")], dependencies=[f"n{k - 1}"] if k else [],
                                        node_config=NodeConfig(track=True)))
                task_ = Task(type="bench", objective="bench")
                runner = prefect_node_runner()
                began = time.perf_counter()
                out = await agent.run_task(task_, node_runner=runner)
                elapsed = time.perf_counter() - began
                if out["status"] != "complete" or len(out["result"]) != n:
                    raise RuntimeError(f"tracked run ended {out['status']}: {str(out)[:300]}")
                return elapsed
        except Exception as exc:
            result["tracked_error"] = f"{type(exc).__name__}: {exc}"[:600]
            tracked_flow = None

    with prefect_test_harness(server_startup_timeout=120):
        for rep in range(REPS + 1):
            flows = [("bare", bare_flow), ("lean", lean_flow), ("tracked", tracked_flow)]
            for name, fn in flows[rep % 3:] + flows[:rep % 3]:  # the flow going first rotates
                if fn is None or (name == "tracked" and result["tracked_error"]):
                    continue
                try:
                    seconds = asyncio.run(fn(N))
                except Exception as exc:
                    if name == "tracked":
                        result["tracked_error"] = f"{type(exc).__name__}: {exc}"[:600]
                        traceback.print_exc()
                        continue
                    raise
                if rep:
                    result[name].append(seconds)
        if tracked_flow is not None and not result["tracked_error"]:
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

            async def count():
                async with get_client() as client:
                    runs = await client.read_task_runs(limit=200, task_run_filter=TaskRunFilter(
                        name=TaskRunFilterName(like_="n1#")))
                    return len(runs)
            result["task_runs"] = asyncio.run(count())
    with open(spec["out"], "w") as out:
        json.dump(result, out)
    '''
).lstrip()


@dataclass
class Tracked:
    nodes: int = 0
    bare: list[float] = field(default_factory=list)
    lean: list[float] = field(default_factory=list)
    tracked: list[float] = field(default_factory=list)
    task_runs: int | None = None
    note: str | None = None


def measure_tracked(work: Path, nodes: int, reps: int) -> Tracked:
    """Bare ``@task`` calls and (when ``tasks/graph.py`` exists) tracked nodes, in one Prefect child process."""
    result = Tracked(nodes=nodes)
    face = REPO_ROOT / "tasks" / "graph.py"
    if not face.exists():
        result.note = "tracked: not measured (tasks/graph.py missing)"
    script = work / "tracked.py"
    script.write_text(TRACKED_SCRIPT)
    out = work / "tracked.json"
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("PREFECT_API_URL", None)
    spec = {"nodes": nodes, "reps": reps, "out": str(out), "face": str(face)}
    with open(work / "tracked.log", "wb") as log, contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, str(script), json.dumps(spec)], stdout=log, stderr=subprocess.STDOUT,
                       cwd=work, env=env, timeout=WORKER_TIMEOUT, check=False)
    if not out.exists():
        tail = (work / "tracked.log").read_text(errors="replace")[-800:]
        result.note = f"tracked/bare: the Prefect process left no result: {tail}"
        return result
    data = json.loads(out.read_text())
    result.bare, result.lean, result.tracked = data["bare"], data["lean"], data["tracked"]
    result.task_runs = data["task_runs"]
    if data["tracked_error"]:
        result.note = f"tracked: failed: {data['tracked_error']}"
    return result


# --------------------------------------------------------------------------------------------------- report


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_commands(commands: dict[str, float] | None) -> str:
    if not commands:
        return "-"
    return " ".join(f"{name.upper()}×{count:g}" for name, count in sorted(commands.items(), key=lambda kv: -kv[1]))


TARGETS: dict[str, float] = {"chain50/memory": 1.0, "fan50/memory": 1.0, "loop20/redis+100k": 0.05,
                             "plan400/memory": 0.02}


def report(keys: Sequence[Scenario], flowmas: Side, asimov: Side, tracked: Tracked | None, args: argparse.Namespace,
           loads: tuple[str, str], target: RedisTarget | None) -> dict[str, Any]:
    rows: list[list[str]] = []
    summary: dict[str, Any] = {"scenarios": {}, "tracked": None}
    header = ["scenario", "execs", "flowmas run", "per node", "Asimov run", "per node", "ratio", "target", ""]
    for sc in keys:
        mine, theirs = flowmas.figures.get(sc.key, Figures()), asimov.figures.get(sc.key, Figures())
        a, b = mine.median, theirs.median
        ratio = a / b if a is not None and b else None
        goal = TARGETS.get(sc.key)
        verdict = "" if goal is None or ratio is None else ("✓" if ratio <= goal else "✗")
        per = sc.kind != "plan"
        rows.append([sc.key, str(sc.executions) if per else "-", fmt_time(a),
                     fmt_time(a / sc.executions) if per and a is not None else "-",
                     fmt_time(b) if b is not None else ("skipped" if asimov.note else "failed"),
                     fmt_time(b / sc.executions) if per and b is not None else "-",
                     f"{ratio:.3f}" if ratio is not None else "-", f"≤ {goal:g}" if goal is not None else "info",
                     verdict])
        summary["scenarios"][sc.key] = {"flowmas": mine.times, "asimov": theirs.times, "ratio": ratio,
                                        "target": goal, "executions": sc.executions,
                                        "flowmas_commands": mine.commands, "asimov_commands": theirs.commands,
                                        "flowmas_error": mine.error, "asimov_error": theirs.error}
    if tracked is not None:
        n = tracked.nodes
        mine_t = statistics.median(tracked.tracked) if tracked.tracked else None
        for label, baseline, goal in (("bare @task", tracked.bare, 1.2), ("@task NO_CACHE", tracked.lean, None)):
            base = statistics.median(baseline) if baseline else None
            ratio = mine_t / base if mine_t is not None and base else None
            verdict = "" if ratio is None or goal is None else ("✓" if ratio <= goal else "✗")
            rows.append([f"tracked{n} vs {label}", str(n), fmt_time(mine_t) if mine_t is not None else "not measured",
                         fmt_time(mine_t / n) if mine_t is not None else "-", fmt_time(base),
                         fmt_time(base / n) if base is not None else "-", f"{ratio:.3f}" if ratio is not None else "-",
                         f"≤ {goal:g}" if goal is not None else "info", verdict])
        bare = statistics.median(tracked.bare) if tracked.bare else None
        summary["tracked"] = {"nodes": n, "tracked": tracked.tracked, "bare": tracked.bare, "lean": tracked.lean,
                              "ratio": mine_t / bare if mine_t is not None and bare else None,
                              "task_runs_of_n1": tracked.task_runs, "note": tracked.note}
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    print(f"flowmas graph engine vs Asimov Agents {ASIMOV_VERSION} — medians of {args.reps} runs after one warm-up "
          f"(tracked: {args.tracked_reps});\n"
          "for the tracked rows the Asimov columns hold the Prefect baseline (awaited @task calls in a flow)")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print()
    if any(sc.backend == "redis" for sc in keys):
        print("Redis commands per run (INFO commandstats deltas / runs):")
    for sc in keys:
        if sc.backend != "redis":
            continue
        print(f"  {sc.key:<18} flowmas: {fmt_commands(flowmas.figures.get(sc.key, Figures()).commands)}")
        print(f"  {'':<18} Asimov:  {fmt_commands(asimov.figures.get(sc.key, Figures()).commands)}")
    print()
    for side_name, side in (("flowmas", flowmas), ("Asimov", asimov)):
        errors = [f"{k}: {f.error}" for k, f in side.figures.items() if f.error]
        for line in errors:
            print(f"{side_name} FAILED {line}")
    if asimov.note:
        print(f"Asimov baselines skipped: {asimov.note}")
    if tracked is not None:
        if tracked.note:
            print(tracked.note)
        if tracked.task_runs is not None:
            print(f"tracked: Prefect holds {tracked.task_runs} task runs named 'n1#…' "
                  f"(expected {args.tracked_reps + 1}, one per tracked flow run)")
    redis_kind = "-" if target is None else \
        f"{'private redis-server' if target.owned else 'REDIS_URL'} {target.host}:{target.port} db {target.db}"
    print(f"flowmas: {', '.join(f'{k} {v}' for k, v in flowmas.versions.items())}")
    print(f"Asimov:  {', '.join(f'{k} {v}' for k, v in asimov.versions.items())}")
    print(f"Redis: {redis_kind}; machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs; load average at start {loads[0]}, at end {loads[1]}")
    summary["load"] = {"start": loads[0], "end": loads[1]}
    return summary


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


@contextlib.contextmanager
def work_dir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="flowmas-bench-graph-"))
    try:
        yield path
    finally:
        if keep:
            progress(f"work dir kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="flowmas graph engine vs Asimov Agents 0.6.0 (see the docstring).")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 runs per figure, 10 tracked nodes")
    parser.add_argument("--reps", type=int, default=None, help="timed runs per scenario (default 9; quick 3)")
    parser.add_argument("--tracked-nodes", type=int, default=None, help="tracked chain length (default 50)")
    parser.add_argument("--tracked-reps", type=int, default=None, help="tracked flow runs (default 9; quick 3)")
    parser.add_argument("--skip-tracked", action="store_true", help="no Prefect measure")
    parser.add_argument("--only", choices=("engine", "tracked"), default=None,
                        help="only the engine scenarios (vs Asimov) or only the tracked-node measure")
    parser.add_argument("--skip-asimov", action="store_true", help="no Asimov baselines")
    parser.add_argument("--asimov-venv", type=Path, default=DEFAULT_ASIMOV_VENV)
    parser.add_argument("--asimov-python", default=None, help="a Python >= 3.12 to build the Asimov venv with")
    parser.add_argument("--redis-db", type=int, default=9, help="the Redis database the benchmark uses")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, runner scripts)")
    args = parser.parse_args(argv)
    if args.only == "engine":
        args.skip_tracked = True
    args.reps = args.reps or (3 if args.quick else 9)
    args.tracked_nodes = args.tracked_nodes or (10 if args.quick else 50)
    args.tracked_reps = args.tracked_reps or (3 if args.quick else 9)
    if args.reps < 1 or args.tracked_reps < 1 or args.tracked_nodes < 1:
        parser.error("--reps, --tracked-reps and --tracked-nodes must be >= 1")
    return args


def measure_engine(args: argparse.Namespace, work: Path, target: RedisTarget, asimov_env: AsimovVenv,
                   sides: dict[str, Side], keys: list[Scenario]) -> None:
    """Every engine scenario on both sides, noise level by noise level; stops the private Redis at the end."""
    root = f"fmbench_{uuid.uuid4().hex[:10]}"

    def on_sigterm(signum: int, frame: object) -> None:
        stop_redis(target)
        sys.exit(143)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        existing = db_size(target)
        if existing:
            progress(f"note: Redis db {target.db} already holds {existing} keys (Asimov SCANs them too)")
        runner = work / "asimov_runner.py"
        runner.write_text(ASIMOV_RUNNER)
        spec = {"redis": target.spec(), "root": root, "max_visits": MAX_VISITS,
                "max_total_iterations": MAX_TOTAL_ITERATIONS}
        peers: dict[str, Peer] = {}
        counter = redis.Redis.from_url(target.url)
        try:
            peers["flowmas"] = Peer("flowmas", [sys.executable, str(Path(__file__).resolve()), "--worker"],
                                    spec, work)
            if asimov_env.python is not None:
                peers["asimov"] = Peer("asimov", [str(asimov_env.python), str(runner)], spec, work)
            for name, peer in peers.items():
                sides[name].versions = peer.versions
                if peer.dead:
                    progress(f"{name} worker failed to start: {peer.dead}")
            loaded = 0
            for noise in NOISE_LEVELS:
                if noise > loaded:
                    seconds = load_noise(target, root, loaded, noise)
                    progress(f"loaded {noise - loaded} unrelated keys in {seconds:.2f} s (db size {db_size(target)})")
                    loaded = noise
                for sc in scenarios_for(noise):
                    keys.append(sc)
                    measure_scenario(sc, peers, sides, args.reps, counter)
        finally:
            for peer in peers.values():
                peer.close()
            progress(f"deleted {delete_keys(target, root)} keys under {root}_*")
            counter.close()
    finally:
        stop_redis(target)
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--worker"]:
        flowmas_worker(json.loads(argv[1]))
        return 0
    args = parse_args(argv)
    loads_start = load_average()
    progress(f"load average {loads_start}")
    if args.skip_asimov or args.only == "tracked":
        asimov_env = AsimovVenv(None, "--skip-asimov" if args.skip_asimov else "--only tracked")
    else:
        asimov_env = ensure_asimov(args.asimov_venv.expanduser(), args.asimov_python)
    if asimov_env.note:
        progress(f"Asimov baselines skipped: {asimov_env.note}")
    flowmas, asimov = Side(), Side(note=asimov_env.note)
    keys: list[Scenario] = []
    tracked: Tracked | None = None
    target: RedisTarget | None = None
    with work_dir(args.keep) as work:
        if args.only != "tracked":
            target = start_redis(work, args.redis_db)
            measure_engine(args, work, target, asimov_env, {"flowmas": flowmas, "asimov": asimov}, keys)
        if not args.skip_tracked:
            progress(f"tracked nodes vs bare Prefect tasks ({args.tracked_nodes} nodes, temporary Prefect server)")
            tracked = measure_tracked(work, args.tracked_nodes, args.tracked_reps)
        summary = report(keys, flowmas, asimov, tracked, args, (loads_start, load_average()), target)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
