"""Benchmark of flowmas's OPACA container (``agents_api``) against a bare FastAPI route, the ``opaca`` SDK 0.0.9
and Prefect's own ``run_deployment``.

Run it with ``make bench`` (which runs ``bench/assets.py``, then this) or directly::

    .venv/bin/python bench/api.py                            # everything (~6 min on 2 cores)
    .venv/bin/python bench/api.py --access-log               # the same with every access log on
    .venv/bin/python bench/api.py --only throughput --rounds 3 --duration 5
    .venv/bin/python bench/api.py --only info,deployment --json /tmp/api.json

No ``PYTHONPATH`` is needed: the script puts the repository root first on ``sys.path`` (and on the
``PYTHONPATH`` of the servers it starts from this checkout). Progress goes to stderr; the summary table, the
raw rounds (and the ``--json`` file) are the output. It is a measurement, not a test: it always exits 0 once
it ran, whatever the figures (non-zero only for bad options or a crash of the harness itself). Every ratio
compares figures taken in the same run, interleaved, because absolute figures on a shared 2-core machine
move by 2x between runs (``shared/anchors/opaca-api.md`` section 4 and ``prefect.md`` section 6(c) hold the
figures this reproduces).

Every server is a child process in its own session on a free port of 127.0.0.1, started by this script
and stopped by it (SIGINT to its process group, SIGKILL after a grace period), also on an error or a
Ctrl-C; their logs go to the work dir (a temp dir, removed afterwards unless ``--keep``).

1. Throughput of ``POST /invoke/Add`` with the body ``{"x": 1, "y": 2}``: ``wrk -t2 -c20 -d10s --latency``
   (``--duration``) with a Lua script that makes the POST and prints wrk's summary as JSON, against three
   servers that run side by side, each its own ``uvicorn`` process with the same options
   (``--loop uvloop --http httptools``, one worker, access log off, log level warning):

   - **flowmas**: the core ``flowmas.opaca.container.Container`` with the SDK sample's agent (``Add(x: int,
     y: int) -> int`` and ``TimeConsumingAction``, the same code as on the SDK side, the sample's ``print``
     per call included) served by ``agents_api.create_app``. The sample's ``Add`` is a sync method, which
     flowmas runs on its action threads (the SDK runs it on the event loop, which is why one slow sync action
     freezes its ``/info``): ``flowmas.opaca.threads`` keeps that hop to a queue put and one
     ``call_soon_threadsafe`` (with ``run_in_executor`` on a ``ThreadPoolExecutor`` it cost about a third of
     the throughput of so small an action: 1.25x the SDK instead of 1.6x, in one run);
   - **flowmas-async**: the same, with ``Add`` written ``async def`` (in-process work that does not block,
     run on the loop): the same shape of work as the bare route, which is an ``async def`` too;
   - **bare**: a bare FastAPI ``POST /invoke/{action}`` taking a ``dict[str, Any]`` body and returning
     ``x + y`` (the anchor's baseline); target flowmas >= 0.9x its requests/s;
   - **sdk**: the same sample agent on ``opaca`` 0.0.9's ``Container`` and ``AbstractAgent``, served by the
     SDK's own ``create_routes``; target flowmas >= 1.4x its requests/s.

   Both flowmas variants are shown against both baselines, with the targets: the sync ``Add`` is the
   sample as written, the async one the same work in the form flowmas runs fastest.

   Each server is checked first (the POST must answer 200 with ``3``), then warmed up (one untimed
   2-second wrk run each), then ``--rounds`` rounds run, each hitting every server once in an order rotated
   per round. The table shows medians over rounds of requests/s and of wrk's p50 and p99 latency; the raw
   rounds follow it, with the per-round ratios (each compares runs taken seconds apart, so a slow patch of
   the machine shows as one outlying round rather than shifting a median). A round
   with socket errors or non-2xx answers is reported as such in the raw rounds. The access log is off for
   all three because the comparison is of the containers, not of logging to a file: uvicorn's access log
   costs every server the same per request, and it is a deployment choice (``--access-log`` turns it on
   for all three, with log level info). The anchor measured the SDK with its access log on, as
   ``opaca.run`` runs it, so its absolute SDK figure is a little lower than this one's.

2. ``GET /info`` while a 2-second *sync* action runs: one client invokes the sample's
   ``TimeConsumingAction`` (``time.sleep(1 + sleep_time)`` with ``sleep_time=1``) over and over while
   another probes ``/info`` ``--info-probes`` times, 50 ms apart, counting only probes sent at least 50 ms
   after an invocation was sent and before its answer (so the server is inside the sleep). Target: flowmas
   p99 <= 50 ms. The SDK, which runs sync actions on the event loop, is the baseline (the anchor measured
   1.8 s); each of its probes waits for the sleep to end, so its probes stop after ``--info-deadline``
   seconds (the count is printed). ``/info`` idle (no action running) is shown for information. p99 is
   nearest-rank: with 50 probes or fewer it is the slowest probe.

3. A deployment-backed action's round trip: one trivial flow, ``double(x) -> 2 * x`` with
   ``persist_result=True, result_serializer="json"``, against one Prefect server started for the benchmark
   (``prefect server start --no-ui`` on a free port, a temporary ``PREFECT_HOME``, SQLite; results stored
   under the work dir). Baseline: the flow served by ``flow.serve(name="baseline", limit=4)`` with
   ``PREFECT_RUNNER_POLL_FREQUENCY=1``; a client process calls ``run_deployment("double/baseline",
   parameters={"x": i}, timeout=120, poll_interval=0.2, as_subflow=False)``, then
   ``flow_run.state.result()`` (``prefect.md`` 6(c) measured a 3.86 s median this way). flowmas: the same
   flow deployed as ``double/opaca`` tagged ``opaca`` (registered, and served as ``flowmas up`` serves its
   deployments, by a second ``flow.serve`` with the same settings), and the container ``flowmas up`` runs,
   ``up.container.ContainerService`` (the Deployments agent over ``agents_api.deployments.DeploymentRuns``,
   the built-in agents, ``create_app``, uvicorn in a thread), in a child
   process of its own on a free port, with an empty project; it is ready once its ``/info`` lists the
   action ``Double``. The same client process calls ``POST /invoke/Double`` with ``{"x": i}`` over a
   keep-alive ``httpx.Client``. ``--calls`` calls each (after one untimed call each), interleaved (the
   order alternates), every answer checked (``2 * i``). Target: flowmas p50 <= 0.2x the baseline's p50.
   The baseline pays a fresh interpreter that imports Prefect per run, so its figure grows with the
   machine's load more than flowmas's does: compare the two only within one run.

The SDK runs from its own venv, kept between runs under ``~/.cache/flowmas-bench/opaca-0.0.9``
(``--opaca-venv``): ``python -m venv`` with this interpreter, then ``pip install opaca==0.0.9`` together with
the versions this repository's ``requirements.lock`` pins for the serving stack (fastapi, starlette,
pydantic, pydantic-core, uvicorn, uvloop, httptools, h11, anyio; all within the SDK's own requirements), and
its server runs with that venv's Python. So the SDK keeps an installation of its own, as its users have it,
and both containers still run on the same interpreter version with byte-for-byte the same FastAPI,
Starlette, pydantic and uvicorn: the ratio measures the containers, not a FastAPI or uvicorn upgrade. (The
other option, the SDK on flowmas's interpreter through ``PYTHONPATH`` with ``--no-deps``, would give the same
versions but mix the SDK into an environment it was not installed into.) If the pinned install fails, the
script tries ``opaca==0.0.9`` alone and says that the versions differ; if that fails too, the reason is
printed and only the SDK baselines are skipped. ``--skip-sdk`` skips them on purpose. ``wrk`` (4.1, Debian's
package) must be on ``PATH`` for 1; without it the script says how to install it (``apt-get install -y
wrk``) and skips only those rows. Nothing is downloaded at run time except the SDK venv from PyPI, once.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from benchkit import Row, median, percentile, print_table, ratio

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

OPACA_VERSION = "0.0.9"
DEFAULT_OPACA_VENV = Path("~/.cache/flowmas-bench") / f"opaca-{OPACA_VERSION}"
SERVING_STACK = ("fastapi", "starlette", "pydantic", "pydantic-core", "uvicorn", "uvloop", "httptools", "h11",
                 "anyio")
"""Packages pinned in the SDK venv to the versions of requirements.lock (the request path of both servers)."""
MEASURES = ("throughput", "info", "deployment")
SERVERS = ("flowmas", "flowmas-async", "bare", "sdk")
FLOWMAS_VARIANTS = (("flowmas", "sync Add (thread pool)"), ("flowmas-async", "async Add (on the loop)"))
ADD_BODY = '{"x": 1, "y": 2}'
WRK_THREADS = 2
WRK_CONNECTIONS = 20
WARMUP_SECONDS = 2
SLOW_SLEEP_TIME = 1  # TimeConsumingAction sleeps 1 + sleep_time seconds: 2 s
INFO_INTERVAL = 0.05
INFO_IDLE_PROBES = 20
FLOW_NAME = "double"
BASELINE_DEPLOYMENT = "baseline"
FLOWMAS_DEPLOYMENT = "opaca"
RUN_TIMEOUT = 120.0
POLL_INTERVAL = 0.2

_STARTED = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since the start."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ server sources

SAMPLE_AGENT = '''
class SampleAgent(AbstractAgent):
    """The opaca SDK's sample agent, reduced to the two actions the benchmark calls (same code on both sides)."""

    @action
    def add(self, x: int, y: int) -> int:
        """
        Adds the two numbers and returns the result.
        """
        print(f'{self.agent_id} executed add with params: {x}, {y}')
        return x + y

    @action
    def time_consuming_action(self, text: str, sleep_time: int = 0) -> str:
        """
        Returns the given text after waiting for the given time + 1 in seconds.
        """
        sleep_time = int(sleep_time)
        print(f'{self.agent_id} executing time_consuming action, taking approx {1 + sleep_time} seconds')
        sleep(1 + sleep_time)
        return text
'''

SDK_APP = f'''"""The opaca {OPACA_VERSION} SDK's sample container, served by the SDK's own routes."""
from pathlib import Path
from time import sleep

from opaca import AbstractAgent, Container, action, create_routes

container = Container(str(Path(__file__).with_name("container.json")))
{SAMPLE_AGENT}

SampleAgent(container, agent_id="sampleAgent1")
app = create_routes("sample-container", container)
'''

FLOWMAS_APP = f'''"""The same sample agent on flowmas's core Container, served by agents_api's app factory."""
from time import sleep

try:
    from agents_api import create_app
except ImportError:
    from agents_api.app import create_app
from flowmas.opaca.agent import AbstractAgent, action
from flowmas.opaca.container import Container

container = Container({{"imageName": "sample-container-python"}}, environ={{}})
{SAMPLE_AGENT}

SampleAgent(container, agent_id="sampleAgent1")
app = create_app(container)
'''

FLOWMAS_ASYNC_APP = FLOWMAS_APP.replace("SampleAgent(container", """

class AsyncSampleAgent(SampleAgent):
    \"\"\"The sample agent with an async Add: in-process work that does not block, like the bare route.\"\"\"

    @action(name="Add")
    async def add(self, x: int, y: int) -> int:
        \"\"\"
        Adds the two numbers and returns the result.
        \"\"\"
        print(f'{self.agent_id} executed add with params: {x}, {y}')
        return x + y


AsyncSampleAgent(container""", 1)

BARE_APP = '''"""A bare FastAPI route of the same shape as the containers' invoke (the anchor's baseline)."""
from typing import Any

from fastapi import FastAPI

app = FastAPI()


@app.post("/invoke/{action}")
async def invoke(action: str, parameters: dict[str, Any]):
    return parameters["x"] + parameters["y"]
'''

FLOWS_MODULE = f'''"""The trivial flow of the round-trip measure; ``python bench_flows.py NAME [TAG...]`` serves it."""
import sys

from prefect import flow


@flow(persist_result=True, result_serializer="json")
def {FLOW_NAME}(x: int) -> int:
    """Twice x."""
    return 2 * x


if __name__ == "__main__":
    {FLOW_NAME}.serve(name=sys.argv[1], tags=sys.argv[2:] or None, limit=4, print_starting_message=False)
'''

WRK_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{ADD_BODY}'
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {{"requests": %.0f, "duration_us": %.0f, "connect": %.0f, "read": %.0f, "write": %.0f, ' ..
    '"status": %.0f, "timeout": %.0f, "p50_us": %.0f, "p99_us": %.0f, "max_us": %.0f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


# ----------------------------------------------------------------------------------------------- processes

_CHILDREN: list[subprocess.Popen[bytes]] = []
"""Every child started (servers, workers): stopped by atexit too, so none is orphaned by a crash."""


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGINT to each child's process group (its own session) at once, SIGKILL to any left after ``grace`` s."""
    live = [p for p in processes if p.poll() is None]
    for process in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    for process in live:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # whatever a child left in its group
            os.killpg(process.pid, signal.SIGKILL)
        if process in _CHILDREN:
            _CHILDREN.remove(process)


def _stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    stop_processes([process], grace)


def _stop_all_children() -> None:
    stop_processes(list(reversed(_CHILDREN)), grace=5.0)


atexit.register(_stop_all_children)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def spawn(argv: Sequence[str], *, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN.append(process)
    return process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, chars: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip()
    except OSError:
        return ""


@dataclass
class Server:
    """One child server on 127.0.0.1 (uvicorn, ``prefect server start``, ``flow.serve``)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: Callable[[], bool] | None = None, timeout: float = 60.0) -> None:
        """Start it and return once ``ready()`` (default: any HTTP answer on ``/``); RuntimeError otherwise."""
        self.process = spawn(self.argv, env=self.env, cwd=self.cwd, log=self.log)
        check = ready or self._answers
        deadline = time.monotonic() + timeout
        while not check():
            if (code := self.process.poll()) is not None:
                self.stop()
                raise RuntimeError(f"{self.name} exited with code {code} while starting: {log_tail(self.log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} was not ready within {timeout:.0f} s: {log_tail(self.log)}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            httpx.get(self.url + "/", timeout=2.0)
        except httpx.HTTPError:
            return False
        return True

    def stop(self) -> None:
        stop_servers([self])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def stop_servers(servers: Sequence[Server]) -> None:
    """Stop ``servers`` together (a few seconds in all, rather than one after the other)."""
    processes = [server.process for server in servers if server.process is not None]
    for server in servers:
        server.process = None
    stop_processes(processes)


def uvicorn_server(name: str, python: Path | str, module: str, work: Path, env: dict[str, str],
                   access_log: bool) -> Server:
    """``python -m uvicorn module:app`` with the options every server of this benchmark shares."""
    port = free_port()
    argv = [str(python), "-m", "uvicorn", f"{module}:app", "--app-dir", str(work), "--host", "127.0.0.1",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--workers", "1",
            "--log-level", "info" if access_log else "warning", "--access-log" if access_log else "--no-access-log"]
    return Server(name, argv, env, work, port, work / f"{name}.log")


def base_env(*, repo: bool) -> dict[str, str]:
    """The environment of a child: ours without PYTHONPATH/proxies; the checkout first on the path if ``repo``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                        "all_proxy")}
    env.pop("PYTHONUNBUFFERED", None)  # any value means unbuffered: a write per print of the sample's Add
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if repo:
        env["PYTHONPATH"] = str(REPO_ROOT)
    return env


# ------------------------------------------------------------------------------------------------- helpers


def check_add(url: str) -> str | None:
    """None if ``POST /invoke/Add`` answers 200 with 3, else what it answered."""
    try:
        response = httpx.post(f"{url}/invoke/Add", content=ADD_BODY, headers={"Content-Type": "application/json"},
                              timeout=30.0)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status_code != 200 or response.text.strip() != "3":
        return f"HTTP {response.status_code}: {response.text[:300]}"
    return None


# ---------------------------------------------------------------------------------------------- the SDK venv


def lock_pins(names: Sequence[str]) -> list[str]:
    """``name==version`` for each of ``names`` as requirements.lock pins it (missing ones are left out)."""
    wanted = {n.lower() for n in names}
    pins: list[str] = []
    lock = REPO_ROOT / "requirements.lock"
    with contextlib.suppress(OSError):
        for line in lock.read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", line)
            if match and match.group(1).lower().replace("_", "-") in wanted:
                pins.append(f"{match.group(1).lower()}=={match.group(2)}")
    return pins


@dataclass
class SdkVenv:
    python: Path | None
    versions: dict[str, str]
    note: str | None  # why it is skipped, or how its versions differ


_PROBE = ("import importlib.metadata as m, json, sys; "
          "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")


def _venv_versions(python: Path, names: Sequence[str]) -> dict[str, str] | None:
    try:
        done = subprocess.run([str(python), "-c", _PROBE, *names], capture_output=True, text=True, check=False,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        versions = json.loads(done.stdout)
    except ValueError:
        return None
    return versions if isinstance(versions, dict) else None


def ensure_sdk(venv: Path) -> SdkVenv:
    """A venv holding opaca 0.0.9 with the lock's serving stack, installed on first use (kept afterwards)."""
    python = venv / "bin" / "python"
    pins = lock_pins(SERVING_STACK)
    names = ["opaca", *SERVING_STACK]
    want = {"opaca": OPACA_VERSION, **{p.split("==")[0]: p.split("==")[1] for p in pins}}
    if python.exists():
        have = _venv_versions(python, names)
        if have is not None and have.get("opaca") == OPACA_VERSION:
            if all(have.get(k) == v for k, v in want.items()):
                return SdkVenv(python, have, None)
            progress(f"SDK venv at {venv} differs from the lock's serving stack; rebuilding it")
        else:
            progress(f"SDK venv at {venv} is unusable; rebuilding it")
        shutil.rmtree(venv, ignore_errors=True)
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return SdkVenv(None, {}, f"cannot create {venv.parent}: {exc}")
    failures: list[str] = []
    for requirements in ([f"opaca=={OPACA_VERSION}", *pins], [f"opaca=={OPACA_VERSION}"]):
        progress(f"installing {' '.join(requirements)} into {venv} (once; kept for later runs)")
        error = _build_venv(venv, python, requirements)
        if error is None:
            have = _venv_versions(python, names)
            if have is None or have.get("opaca") != OPACA_VERSION:
                error = "opaca is not importable after the install"
            else:
                differs = {k: f"{have.get(k)} (lock {v})" for k, v in want.items() if have.get(k) != v}
                note = None if not differs else (
                    f"the pinned install failed ({failures[0] if failures else '?'}); the SDK venv has "
                    + ", ".join(f"{k} {v}" for k, v in differs.items()))
                return SdkVenv(python, have, note)
        failures.append(error)
        shutil.rmtree(venv, ignore_errors=True)
    return SdkVenv(None, {}, " / ".join(failures))


def _build_venv(venv: Path, python: Path, requirements: Sequence[str]) -> str | None:
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, check=False, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(step[:4])}: {exc}"
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "WARNING" not in line][-6:]
            return f"`{' '.join(step)}` exited {done.returncode}: " + " | ".join(errors)
    return None


# ------------------------------------------------------------------------------------------ the bench state


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    sdk: SdkVenv
    wrk: str | None
    servers: dict[str, Server] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # server -> why it is not measured
    notes: list[str] = field(default_factory=list)

    def container_server(self, name: str) -> Server | None:
        """The server ``name`` (flowmas, bare, sdk), started on first use; None (reason in ``broken``)."""
        if name in self.servers:
            return self.servers[name]
        if name in self.broken:
            return None
        try:
            server = self._make(name)
        except (ImportError, RuntimeError, OSError) as exc:
            self.broken[name] = str(exc)
            return None
        if server is None:
            return None
        progress(f"starting {name} on {server.url}")
        try:
            server.start()
        except RuntimeError as exc:
            self.broken[name] = str(exc)
            progress(f"  {name} did not start: {exc}")
            return None
        if (problem := check_add(server.url)) is not None:
            self.broken[name] = f"POST /invoke/Add did not answer 200 with 3: {problem}"
            progress(f"  {name}: {self.broken[name]}")
            server.stop()
            return None
        self.servers[name] = server
        return server

    def _make(self, name: str) -> Server | None:
        access_log = bool(self.args.access_log)
        if name == "sdk":
            if self.sdk.python is None:
                self.broken[name] = f"not installed: {self.sdk.note}"
                return None
            (self.work / "container.json").write_text(json.dumps({"imageName": "sample-container-python"}))
            (self.work / "sdk_app.py").write_text(SDK_APP)
            return uvicorn_server("sdk", self.sdk.python, "sdk_app", self.work, base_env(repo=False), access_log)
        if name == "bare":
            (self.work / "bare_app.py").write_text(BARE_APP)
            return uvicorn_server("bare", sys.executable, "bare_app", self.work, base_env(repo=False), access_log)
        missing = flowmas_missing()
        if missing:
            self.broken[name] = f"not built yet: {missing}"
            return None
        module = name.replace("-", "_") + "_app"
        (self.work / f"{module}.py").write_text(FLOWMAS_ASYNC_APP if name == "flowmas-async" else FLOWMAS_APP)
        return uvicorn_server(name, sys.executable, module, self.work, base_env(repo=True), access_log)

    def stop_all(self) -> None:
        stop_servers(list(self.servers.values()))
        self.servers.clear()


def flowmas_missing(*names: str) -> str | None:
    """What of the flowmas container the benchmark needs does not exist (yet), or None."""
    import importlib

    needs = {"flowmas.opaca.container": ("Container",), "flowmas.opaca.agent": ("AbstractAgent", "action"),
             "agents_api.app": ("create_app",)}
    for extra in names:
        module, _, attr = extra.rpartition(":")
        needs.setdefault(module, ())
        needs[module] = (*needs[module], attr)
    missing: list[str] = []
    for module, attrs in needs.items():
        try:
            loaded = importlib.import_module(module)
        except Exception as exc:  # a module being written may fail in any way
            missing.append(f"{module} ({type(exc).__name__}: {exc})")
            continue
        missing += [f"{module}.{attr}" for attr in attrs if not hasattr(loaded, attr)]
    return ", ".join(missing) or None


# -------------------------------------------------------------------------------------- 1. throughput (wrk)


@dataclass
class WrkRun:
    server: str
    round: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int  # socket errors (connect, read, write, timeout)
    non_2xx: int


def run_wrk(wrk: str, script: Path, url: str, seconds: int, server: str, round_: int) -> WrkRun | str:
    argv = [wrk, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script),
            f"{url}/invoke/Add"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        return "wrk did not finish"
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        return f"wrk exited {done.returncode}: {(done.stderr or done.stdout)[-300:]}"
    data = json.loads(line[len("BENCH "):])
    seconds_taken = data["duration_us"] / 1e6
    return WrkRun(server=server, round=round_, requests_per_s=data["requests"] / seconds_taken,
                  p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000, max_ms=data["max_us"] / 1000,
                  requests=int(data["requests"]),
                  errors=int(data["connect"] + data["read"] + data["write"] + data["timeout"]),
                  non_2xx=int(data["status"]))


@dataclass
class ThroughputResult:
    runs: list[WrkRun] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def of(self, server: str) -> list[WrkRun]:
        return [r for r in self.runs if r.server == server]

    def medians(self, server: str) -> dict[str, float | None]:
        runs = self.of(server)
        return {k: median([getattr(r, k) for r in runs]) for k in ("requests_per_s", "p50_ms", "p99_ms")}

    def round_ratios(self, a: str, b: str) -> list[float]:
        by_round = {(r.server, r.round): r.requests_per_s for r in self.runs}
        rounds = sorted({r.round for r in self.runs})
        return [by_round[(a, n)] / by_round[(b, n)] for n in rounds if (a, n) in by_round and (b, n) in by_round]


def measure_throughput(bench: Bench) -> ThroughputResult:
    """wrk against the three servers, interleaved rounds, after one untimed warm-up each."""
    result = ThroughputResult()
    if bench.wrk is None:
        result.skipped = {name: "wrk is not installed" for name in SERVERS}
        return result
    live: list[str] = []
    for name in SERVERS:
        if bench.container_server(name) is None:
            result.skipped[name] = bench.broken.get(name, "not started")
        else:
            live.append(name)
    if not live:
        return result
    script = bench.work / "post_add.lua"
    script.write_text(WRK_SCRIPT)
    for name in live:
        progress(f"throughput: warm-up {name} ({WARMUP_SECONDS} s, untimed)")
        run_wrk(bench.wrk, script, bench.servers[name].url, WARMUP_SECONDS, name, -1)
    for round_ in range(bench.args.rounds):
        order = live[round_ % len(live):] + live[:round_ % len(live)]
        progress(f"throughput: round {round_ + 1}/{bench.args.rounds} ({', '.join(order)})")
        for name in order:
            server = bench.servers[name]
            if not server.alive():
                result.skipped.setdefault(name, f"the server died: {log_tail(server.log)}")
                continue
            outcome = run_wrk(bench.wrk, script, server.url, bench.args.duration, name, round_)
            if isinstance(outcome, str):
                bench.notes.append(f"throughput round {round_ + 1}, {name}: {outcome}")
                progress(f"  {name}: {outcome}")
                continue
            result.runs.append(outcome)
            flag = f", {outcome.errors} socket errors, {outcome.non_2xx} non-2xx" if (
                outcome.errors or outcome.non_2xx) else ""
            progress(f"  {name:8} {outcome.requests_per_s:8.0f} req/s  p50 {outcome.p50_ms:6.2f} ms  "
                     f"p99 {outcome.p99_ms:7.2f} ms{flag}")
    return result


# ------------------------------------------------------------------------------------ 2. /info while blocked


@dataclass
class InfoResult:
    server: str
    idle_ms: list[float] = field(default_factory=list)
    busy_ms: list[float] = field(default_factory=list)
    action_s: list[float] = field(default_factory=list)
    action_errors: list[str] = field(default_factory=list)
    info_errors: list[str] = field(default_factory=list)
    deadline_hit: bool = False

    def summary(self) -> dict[str, float | int | None]:
        return {
            "probes": len(self.busy_ms),
            "busy_p50_ms": percentile(self.busy_ms, 50) if self.busy_ms else None,
            "busy_p99_ms": percentile(self.busy_ms, 99) if self.busy_ms else None,
            "busy_max_ms": max(self.busy_ms, default=None),
            "idle_p50_ms": percentile(self.idle_ms, 50) if self.idle_ms else None,
            "action_median_s": median(self.action_s),
        }


def probe_info(url: str, name: str, probes: int, deadline: float) -> InfoResult:
    """``GET /info`` ``probes`` times while another client keeps the 2-second sync action running."""
    result = InfoResult(name)
    with httpx.Client(base_url=url, timeout=60.0) as probe:
        for _ in range(INFO_IDLE_PROBES):
            began = time.perf_counter()
            answer = probe.get("/info")
            result.idle_ms.append((time.perf_counter() - began) * 1000)
            if answer.status_code != 200:
                result.info_errors.append(f"idle /info: HTTP {answer.status_code}")
        stop = threading.Event()
        sent_at: list[float | None] = [None]  # when the invocation in flight was sent, None between them

        def invoker() -> None:
            body = {"text": "done", "sleep_time": SLOW_SLEEP_TIME}
            with httpx.Client(base_url=url, timeout=120.0) as client:
                while not stop.is_set():
                    began = time.perf_counter()
                    sent_at[0] = began
                    try:
                        answer = client.post("/invoke/TimeConsumingAction", json=body)
                        ok = answer.status_code == 200 and answer.json() == "done"
                        if not ok:
                            result.action_errors.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
                    except (httpx.HTTPError, ValueError) as exc:
                        result.action_errors.append(f"{type(exc).__name__}: {exc}")
                        ok = False
                    sent_at[0] = None
                    if ok:
                        result.action_s.append(time.perf_counter() - began)
                    else:
                        stop.wait(0.5)

        thread = threading.Thread(target=invoker, name=f"invoke-{name}", daemon=True)
        thread.start()
        end = time.monotonic() + deadline
        try:
            while len(result.busy_ms) < probes and not (len(result.action_errors) > 5):
                if time.monotonic() > end:
                    result.deadline_hit = True
                    break
                since = sent_at[0]
                if since is None or time.perf_counter() - since < INFO_INTERVAL:
                    time.sleep(0.005)
                    continue
                began = time.perf_counter()
                answer = probe.get("/info")
                elapsed = time.perf_counter() - began
                if answer.status_code != 200:
                    result.info_errors.append(f"HTTP {answer.status_code}")
                else:  # sent at least INFO_INTERVAL after the invocation, before its answer came back
                    result.busy_ms.append(elapsed * 1000)
                time.sleep(INFO_INTERVAL)
        finally:
            stop.set()
            thread.join(timeout=30)
    return result


def measure_info(bench: Bench) -> dict[str, InfoResult | str]:
    out: dict[str, InfoResult | str] = {}
    for name in ("flowmas", "sdk"):
        server = bench.container_server(name)
        if server is None:
            out[name] = bench.broken.get(name, "not started")
            continue
        deadline = bench.args.info_deadline
        progress(f"info: {name}, {bench.args.info_probes} probes of GET /info while TimeConsumingAction "
                 f"({1 + SLOW_SLEEP_TIME} s, sync) runs (at most {deadline:.0f} s)")
        res = probe_info(server.url, name, bench.args.info_probes, deadline)
        out[name] = res
        s = res.summary()
        progress(f"  {name}: {s['probes']} probes, p50 {_fmt_ms(s['busy_p50_ms'])}, p99 {_fmt_ms(s['busy_p99_ms'])}"
                 f"; idle p50 {_fmt_ms(s['idle_p50_ms'])}; action {_fmt_s(s['action_median_s'])}"
                 + (f"; errors {res.action_errors[:2]} {res.info_errors[:2]}"
                    if res.action_errors or res.info_errors else ""))
    return out


# ----------------------------------------------------------------------------- 3. deployment round trip


@dataclass
class DeploymentResult:
    baseline_s: list[float] = field(default_factory=list)
    flowmas_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    flowmas_skipped: str | None = None
    baseline_skipped: str | None = None
    action: str | None = None

    def medians(self) -> dict[str, float | None]:
        return {"baseline": median(self.baseline_s), "flowmas": median(self.flowmas_s)}


def _prefect_env(api_url: str, home: Path, storage: Path) -> dict[str, str]:
    env = base_env(repo=True)
    env.update({"PREFECT_API_URL": api_url, "PREFECT_HOME": str(home),
                "PREFECT_LOCAL_STORAGE_PATH": str(storage), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    for var in ("PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        env.pop(var, None)
    return env


def start_prefect_server(bench: Bench) -> Server:
    home = bench.work / "prefect-server"
    home.mkdir()
    env = base_env(repo=False)
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    env.pop("PREFECT_API_URL", None)
    port = free_port()
    server = Server("prefect-server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                       "--port", str(port), "--no-ui"], env, home, port, bench.work / "prefect.log")

    def healthy() -> bool:
        try:
            return httpx.get(f"{server.url}/api/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    progress(f"deployment: starting `prefect server start` on {server.url} (temporary PREFECT_HOME)")
    began = time.monotonic()
    server.start(ready=healthy, timeout=180.0)
    progress(f"  Prefect server healthy after {time.monotonic() - began:.1f} s")
    return server


def deployment_exists(api_url: str, name: str) -> bool:
    try:
        return httpx.get(f"{api_url}/deployments/name/{FLOW_NAME}/{name}", timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


def measure_deployment(bench: Bench) -> DeploymentResult:
    result = DeploymentResult()
    started: list[Server] = []
    try:
        _deployment(bench, result, started)
    except RuntimeError as exc:
        result.errors.append(str(exc))
        progress(f"  deployment measure stopped: {exc}")
    finally:  # the clients of the Prefect server first (they tell it they stop), then the server
        stop_servers([server for server in started if server.name != "prefect-server"])
        stop_servers([server for server in started if server.name == "prefect-server"])
    return result


def _deployment(bench: Bench, result: DeploymentResult, started: list[Server]) -> None:
    prefect = start_prefect_server(bench)
    started.append(prefect)
    api_url = f"{prefect.url}/api"
    client_home, storage = bench.work / "prefect-client", bench.work / "prefect-storage"
    client_home.mkdir()
    storage.mkdir()
    env = _prefect_env(api_url, client_home, storage)
    (bench.work / "bench_flows.py").write_text(FLOWS_MODULE)

    serve = Server("flow.serve", [sys.executable, "bench_flows.py", BASELINE_DEPLOYMENT], env, bench.work,
                   prefect.port, bench.work / "flow-serve.log")
    progress("deployment: serving the baseline with flow.serve (PREFECT_RUNNER_POLL_FREQUENCY=1, limit=4)")
    serve.start(ready=lambda: deployment_exists(api_url, BASELINE_DEPLOYMENT), timeout=180.0)
    started.append(serve)

    container = start_flowmas_deployments(bench, result, env, api_url, started)
    spec = {"deployment": f"{FLOW_NAME}/{BASELINE_DEPLOYMENT}", "calls": bench.args.calls,
            "container": container.url if container is not None else None, "action": result.action,
            "timeout": RUN_TIMEOUT, "poll_interval": POLL_INTERVAL, "out": str(bench.work / "deployment.json")}
    progress(f"deployment: {bench.args.calls} calls each, interleaved, after one untimed call each")
    worker = spawn([sys.executable, str(Path(__file__).resolve()), "--deployment-worker", json.dumps(spec)],
                   env=env, cwd=bench.work, log=bench.work / "deployment-worker.log")
    try:
        worker.wait(timeout=(bench.args.calls + 1) * 2 * (RUN_TIMEOUT + 10))
    except subprocess.TimeoutExpired:
        result.errors.append("the client process did not finish in time")
    finally:
        _stop_process(worker, grace=3.0)  # a client: nothing of its own to shut down
    out = Path(spec["out"])
    if not out.exists():
        raise RuntimeError(f"the client process left no result: {log_tail(bench.work / 'deployment-worker.log')}")
    data = json.loads(out.read_text())
    result.baseline_s, result.flowmas_s = data["baseline"], data["flowmas"]
    result.errors += data["errors"]


def start_flowmas_deployments(bench: Bench, result: DeploymentResult, env: dict[str, str], api_url: str,
                              started: list[Server]) -> Server | None:
    """The flowmas side: the flow deployed tagged ``opaca``, then the container ``flowmas up`` would run.

    The deployment is registered (and served, as ``flowmas up`` serves its deployments) by a second
    ``flow.serve`` process; the container is ``up.container.ContainerService`` (the Deployments agent over
    ``agents_api.deployments.DeploymentRuns``, the built-in agents, and
    ``create_app``, uvicorn in a thread) in a child process of its own, on a free port.
    """
    missing = flowmas_missing("agents_api.deployments:DeploymentsAgent", "up.container:ContainerService")
    if missing:
        result.flowmas_skipped = f"not built yet: {missing}"
        progress(f"  flowmas side skipped: {result.flowmas_skipped}")
        return None
    tagged = Server("flow.serve-opaca", [sys.executable, "bench_flows.py", FLOWMAS_DEPLOYMENT, "opaca"], env,
                    bench.work, 0, bench.work / "flow-serve-opaca.log")
    progress(f"deployment: registering {FLOW_NAME}/{FLOWMAS_DEPLOYMENT} tagged opaca (served by flow.serve too)")
    tagged.start(ready=lambda: deployment_exists(api_url, FLOWMAS_DEPLOYMENT), timeout=180.0)
    started.append(tagged)

    project = bench.work / "flowmas.yaml"
    project.write_text(json.dumps({"name": "bench", "version": "1", "assets": [], "agents": {}}))
    container_env = {**env, "FLOWMAS_HOME": str(bench.work / "flowmas-home"), "FLOWMAS_PROJECT": str(project)}
    port = free_port()
    spec = {"port": port, "project": str(project), "code_root": str(bench.work)}
    container = Server("flowmas-container", [sys.executable, str(Path(__file__).resolve()), "--container-worker",
                                             json.dumps(spec)], container_env, bench.work, port,
                       bench.work / "flowmas-container.log")
    action_name = pascal_case(FLOW_NAME)

    def lists_action() -> bool:
        try:
            info = httpx.get(f"{container.url}/info", timeout=5.0).json()
        except (httpx.HTTPError, ValueError):
            return False
        names = {a.get("name") for agent in info.get("agents", []) for a in agent.get("actions", [])}
        return action_name in names

    progress("deployment: starting the flowmas container (up.container.ContainerService) against that server")
    try:
        container.start(ready=lists_action, timeout=120.0)
    except RuntimeError as exc:
        result.flowmas_skipped = f"the container did not list action {action_name}: {exc}"
        progress(f"  flowmas side skipped: {result.flowmas_skipped}")
        return None
    started.append(container)
    result.action = action_name
    progress(f"  container at {container.url} lists action {action_name}")
    return container


def pascal_case(name: str) -> str:
    """``double`` -> ``Double``, ``download-assets`` -> ``DownloadAssets`` (the Deployments agent's naming)."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", name) if part)


def container_worker(spec: dict[str, Any]) -> None:
    """The flowmas container of measure 3, as ``flowmas up`` assembles it, until SIGINT or SIGTERM."""
    from up.container import ContainerService

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    service = ContainerService(host="127.0.0.1", port=spec["port"], project_file=Path(spec["project"]),
                               code_roots=(Path(spec["code_root"]), REPO_ROOT))
    service.start()
    print(f"container serving at {service.url}", flush=True)
    try:
        stop.wait()
    finally:
        service.stop()


def deployment_worker(spec: dict[str, Any]) -> None:
    """The client process of measure 3: baseline and flowmas calls, interleaved; writes spec["out"]."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    out: dict[str, Any] = {"baseline": [], "flowmas": [], "errors": []}
    client = httpx.Client(base_url=spec["container"], timeout=spec["timeout"] + 10) if spec["container"] else None

    def baseline(x: int) -> float | None:
        began = time.perf_counter()
        try:
            flow_run = run_deployment(spec["deployment"], parameters={"x": x}, timeout=spec["timeout"],
                                      poll_interval=spec["poll_interval"], as_subflow=False)
            if not isinstance(flow_run, FlowRun):  # the sync dispatch, as here outside an event loop
                raise TypeError(f"run_deployment returned {type(flow_run).__name__}")
            state = flow_run.state
            value = state.result() if state is not None and state.is_completed() else None
        except Exception as exc:
            out["errors"].append(f"baseline x={x}: {type(exc).__name__}: {exc}")
            return None
        elapsed = time.perf_counter() - began
        if value != 2 * x:
            out["errors"].append(f"baseline x={x}: state {state.type if state else None}, result {value!r}")
            return None
        return elapsed

    def flowmas(x: int) -> float | None:
        assert client is not None
        began = time.perf_counter()
        try:
            answer = client.post(f"/invoke/{spec['action']}", json={"x": x})
        except httpx.HTTPError as exc:
            out["errors"].append(f"flowmas x={x}: {type(exc).__name__}: {exc}")
            return None
        elapsed = time.perf_counter() - began
        if answer.status_code != 200 or answer.text.strip() != str(2 * x):
            out["errors"].append(f"flowmas x={x}: HTTP {answer.status_code}: {answer.text[:300]}")
            return None
        return elapsed

    sides: list[tuple[str, Callable[[int], float | None]]] = [("baseline", baseline)]
    if client is not None:
        sides.append(("flowmas", flowmas))
    for call in range(spec["calls"] + 1):
        for name, fn in sides if call % 2 == 0 else list(reversed(sides)):
            seconds = fn(call)
            if call > 0 and seconds is not None:  # call 0 is the untimed warm-up
                out[name].append(seconds)
            print(f"{name} x={call}: {seconds}", flush=True)
    if client is not None:
        client.close()
    Path(spec["out"]).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------------------ summary


def _fmt_s(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _fmt_ms(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _fmt_rps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} req/s"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2e}" if value < 0.001 else f"{value:.3f}"


def _fmt_list(values: Sequence[float | None], digits: int = 2) -> str:
    return "[" + ", ".join("-" if v is None else f"{v:.{digits}f}" for v in values) + "]"


def _met(condition: bool | None) -> str:
    return "n/a" if condition is None else ("yes" if condition else "NO")


def summarise(bench: Bench, throughput: ThroughputResult | None, info: dict[str, InfoResult | str] | None,
              deployment: DeploymentResult | None) -> list[Row]:
    rows: list[Row] = []
    if throughput is not None:
        _throughput_rows(rows, bench, throughput)
    if info is not None:
        _info_rows(rows, info)
    if deployment is not None:
        _deployment_rows(rows, bench, deployment)
    return rows


def _throughput_rows(rows: list[Row], bench: Bench, tp: ThroughputResult) -> None:
    label = f"POST /invoke/Add, wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{bench.args.duration}s"
    for variant, shape in FLOWMAS_VARIANTS:
        fm = tp.medians(variant)
        n = len(tp.of(variant))
        for base, target, limit in (("bare", "bare FastAPI", 0.9), ("sdk", f"opaca {OPACA_VERSION}", 1.4)):
            bm = tp.medians(base)
            r = ratio(fm["requests_per_s"], bm["requests_per_s"])
            baseline = (f"{target} {_fmt_rps(bm['requests_per_s'])}" if bm["requests_per_s"] is not None
                        else f"{target}: skipped ({tp.skipped.get(base, 'no run')[:60]})")
            flowmas = (_fmt_rps(fm["requests_per_s"]) if fm["requests_per_s"] is not None
                       else f"skipped ({tp.skipped.get(variant, 'no run')[:60]})")
            rows.append(Row(f"{label}, {shape} (median of {n})" if base == "bare" else "  same, vs the SDK",
                            flowmas, baseline, _fmt_ratio(r), f">= {limit}x",
                            _met(None if r is None else r >= limit)))
        for key, what in (("p50_ms", "p50"), ("p99_ms", "p99")) if tp.of(variant) else ():
            bare, sdk = tp.medians("bare")[key], tp.medians("sdk")[key]
            rows.append(Row(f"  same, {what} latency (median over rounds)", _fmt_ms(fm[key]),
                            f"bare {_fmt_ms(bare)}, SDK {_fmt_ms(sdk)}",
                            f"{_fmt_ratio(ratio(fm[key], bare))} / {_fmt_ratio(ratio(fm[key], sdk))}", "(info)",
                            "-"))


def _info_rows(rows: list[Row], info: dict[str, InfoResult | str]) -> None:
    fm, sdk = info.get("flowmas"), info.get("sdk")
    fs = fm.summary() if isinstance(fm, InfoResult) else None
    ss = sdk.summary() if isinstance(sdk, InfoResult) else None
    flowmas_cell = (f"{_fmt_ms(fs['busy_p99_ms'])} ({fs['probes']} probes)" if fs is not None
                    else f"skipped ({str(fm)[:60]})")
    sdk_cell = (f"SDK {_fmt_ms(ss['busy_p99_ms'])} ({ss['probes']} probes)" if ss is not None
                else f"SDK: skipped ({str(sdk)[:60]})")
    f99 = fs["busy_p99_ms"] if fs is not None else None
    s99 = ss["busy_p99_ms"] if ss is not None else None
    rows.append(Row(f"GET /info p99 while a {1 + SLOW_SLEEP_TIME} s sync action runs", flowmas_cell, sdk_cell,
                    _fmt_ratio(ratio(f99, s99)), "<= 50 ms", _met(None if f99 is None else f99 <= 50.0)))
    if fs is not None or ss is not None:
        f50 = fs["busy_p50_ms"] if fs is not None else None
        s50 = ss["busy_p50_ms"] if ss is not None else None
        rows.append(Row("  same, p50", _fmt_ms(f50), f"SDK {_fmt_ms(s50)}", _fmt_ratio(ratio(f50, s50)),
                        "(info)", "-"))
        fi = fs["idle_p50_ms"] if fs is not None else None
        si = ss["idle_p50_ms"] if ss is not None else None
        rows.append(Row(f"GET /info p50, idle ({INFO_IDLE_PROBES} probes)", _fmt_ms(fi), f"SDK {_fmt_ms(si)}",
                        _fmt_ratio(ratio(fi, si)), "(info)", "-"))


def _deployment_rows(rows: list[Row], bench: Bench, dep: DeploymentResult) -> None:
    m = dep.medians()
    r = ratio(m["flowmas"], m["baseline"])
    flowmas = (f"{_fmt_s(m['flowmas'])} ({len(dep.flowmas_s)} ok)" if m["flowmas"] is not None
               else f"skipped ({(dep.flowmas_skipped or 'no successful call')[:60]})")
    baseline = (f"run_deployment {_fmt_s(m['baseline'])} ({len(dep.baseline_s)} ok)" if m["baseline"] is not None
                else "run_deployment: no successful call")
    rows.append(Row(f"deployment-backed action round trip p50 ({bench.args.calls} calls)", flowmas, baseline,
                    _fmt_ratio(r), "<= 0.2x", _met(None if r is None else r <= 0.2)))


def print_raw(throughput: ThroughputResult | None, info: dict[str, InfoResult | str] | None,
              deployment: DeploymentResult | None) -> None:
    if throughput is not None and throughput.runs:
        print("throughput, each round (req/s; p50/p99 ms):")
        for name in SERVERS:
            runs = throughput.of(name)
            if runs:
                cells = [f"{r.requests_per_s:.0f} ({r.p50_ms:.2f}/{r.p99_ms:.1f})"
                         + (f" [{r.errors} err, {r.non_2xx} non-2xx]" if r.errors or r.non_2xx else "")
                         for r in runs]
                print(f"  {name:8} " + ", ".join(cells))
        for a, b in (("flowmas", "bare"), ("flowmas", "sdk"), ("flowmas-async", "bare"), ("flowmas-async", "sdk")):
            if ratios := throughput.round_ratios(a, b):
                print(f"  {a}/{b} per round: {_fmt_list(ratios, 3)} (median {statistics.median(ratios):.3f})")
    if info is not None:
        for name, res in info.items():
            if isinstance(res, InfoResult) and res.busy_ms:
                tail = sorted(res.busy_ms)[-5:]
                print(f"info, {name}: {len(res.busy_ms)} probes while busy, slowest {_fmt_list(tail, 1)} ms"
                      + (" (stopped at the deadline)" if res.deadline_hit else "")
                      + f"; action round trips {_fmt_list(res.action_s[:8])} s")
    if deployment is not None and (deployment.baseline_s or deployment.flowmas_s):
        print(f"deployment, each call (s): run_deployment {_fmt_list(deployment.baseline_s)}; "
              f"flowmas {_fmt_list(deployment.flowmas_s)}")


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--only", default=",".join(MEASURES),
                        help=f"comma-separated measures to run (default all: {','.join(MEASURES)})")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved wrk rounds per server (default 5)")
    parser.add_argument("--info-probes", type=int, default=50, help="GET /info probes while busy (default 50)")
    parser.add_argument("--info-deadline", type=float, default=40.0,
                        help="seconds the /info probes of one server may take at most (default 40)")
    parser.add_argument("--calls", type=int, default=10,
                        help="deployment round trips per side, after one untimed call (default 10)")
    parser.add_argument("--access-log", action="store_true",
                        help="run every uvicorn server with its access log on (default off for all)")
    parser.add_argument("--opaca-venv", type=Path, default=DEFAULT_OPACA_VENV,
                        help=f"venv for opaca {OPACA_VERSION} (default {DEFAULT_OPACA_VENV})")
    parser.add_argument("--skip-sdk", action="store_true", help="do not install or run the opaca SDK")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs) afterwards")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1 or args.info_probes < 1 or args.calls < 1 or args.info_deadline <= 0:
        parser.error("--duration, --rounds, --info-probes, --calls and --info-deadline must be positive")
    args.only = {name.strip() for name in args.only.split(",") if name.strip()}
    if not args.only or not args.only <= set(MEASURES):
        parser.error(f"--only takes a comma-separated subset of {', '.join(MEASURES)}")
    return args


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] in ("--deployment-worker", "--container-worker"):
        (deployment_worker if argv[0] == "--deployment-worker" else container_worker)(json.loads(argv[1]))
        return 0
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    for var in ("NO_PROXY", "no_proxy"):  # every request of this script goes to 127.0.0.1
        os.environ[var] = ",".join(filter(None, ("127.0.0.1,localhost", os.environ.get(var))))
    wrk = shutil.which("wrk") if "throughput" in args.only else None
    if "throughput" in args.only and wrk is None:
        progress("wrk is not installed: the throughput rows are skipped. Install it with `apt-get install -y wrk`.")
    sdk = SdkVenv(None, {}, "--skip-sdk was given" if args.skip_sdk else "not needed by --only")
    if not args.skip_sdk and ("info" in args.only or ("throughput" in args.only and wrk is not None)):
        sdk = ensure_sdk(args.opaca_venv.expanduser())
        if sdk.python is None:
            progress(f"opaca SDK baseline SKIPPED: {sdk.note}")
        else:
            progress(f"opaca {OPACA_VERSION}: {sdk.python}" + (f" ({sdk.note})" if sdk.note else ""))

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="flowmas-bench-api-"))
    progress(f"work dir: {work}; {os.cpu_count()} CPUs, load average {load_before[0]:.2f}")
    bench = Bench(args, work, sdk, wrk)
    throughput: ThroughputResult | None = None
    info: dict[str, InfoResult | str] | None = None
    deployment: DeploymentResult | None = None
    try:
        if "throughput" in args.only:
            throughput = measure_throughput(bench)
        if "info" in args.only:
            info = measure_info(bench)
        bench.stop_all()
        if "deployment" in args.only:
            deployment = measure_deployment(bench)
    except KeyboardInterrupt:
        progress("interrupted: stopping the servers")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave servers behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.stop_all()
        _stop_all_children()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _on_sigterm)
        if args.keep:
            progress(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = summarise(bench, throughput, info, deployment)
    load_after = os.getloadavg()
    print()
    print(f"flowmas OPACA API benchmark ({', '.join(sorted(args.only, key=MEASURES.index))}) on 127.0.0.1: "
          f"uvicorn --loop uvloop --http httptools, access log {'on' if args.access_log else 'off'} for all; "
          f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}; {time.monotonic() - _STARTED:.0f} s in all")
    print_table(rows)
    print_raw(throughput, info, deployment)
    if sdk.python is not None:
        print("SDK venv: " + ", ".join(f"{k} {v}" for k, v in sdk.versions.items())
              + (f" ({sdk.note})" if sdk.note else ""))
    elif args.only & {"throughput", "info"}:
        print(f"note: opaca SDK baselines skipped: {sdk.note}")
    if "throughput" in args.only and wrk is None:
        print("note: wrk is not installed, so the throughput rows were skipped: `apt-get install -y wrk`")
    for name, why in bench.broken.items():
        if name != "sdk" or sdk.python is not None:  # else said just above
            print(f"note: {name} server not measured: {why}")
    if deployment is not None:
        if deployment.flowmas_skipped:
            print(f"note: flowmas deployment side skipped: {deployment.flowmas_skipped}")
        for error in deployment.errors[:10]:
            print(f"note: deployment: {error}")
    for note in bench.notes:
        print(f"note: {note}")

    if args.json is not None:
        figures = {
            "config": {"measures": sorted(args.only, key=MEASURES.index), "duration_s": args.duration,
                       "rounds": args.rounds, "wrk": f"-t{WRK_THREADS} -c{WRK_CONNECTIONS}",
                       "info_probes": args.info_probes, "info_deadline_s": args.info_deadline,
                       "calls": args.calls, "access_log": args.access_log},
            "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform(), "load_average_before": load_before,
                            "load_average_after": load_after, "wrk": wrk, "sdk_versions": sdk.versions,
                            "sdk_note": sdk.note},
            "throughput": ({"runs": [asdict(r) for r in throughput.runs], "skipped": throughput.skipped,
                            "medians": {s: throughput.medians(s) for s in SERVERS},
                            "round_ratios": {f"{a}/{b}": throughput.round_ratios(a, b)
                                             for a, _ in FLOWMAS_VARIANTS for b in ("bare", "sdk")}}
                           if throughput is not None else None),
            "info": ({k: ({**asdict(v), "summary": v.summary()} if isinstance(v, InfoResult) else {"skipped": v})
                      for k, v in info.items()} if info is not None else None),
            "deployment": ({**asdict(deployment), "medians": deployment.medians()}
                           if deployment is not None else None),
            "not_measured": bench.broken,
            "notes": bench.notes,
            "summary": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        progress(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
