"""Benchmark of flowmas's asset manager against the floors of the machine and against OpenMAS 0.2.2.

Run it with ``make bench`` (which runs ``.venv/bin/python bench/assets.py``) or directly::

    .venv/bin/python bench/assets.py                        # 1 GiB, 3 repetitions (~1.5 min on 2 cores)
    .venv/bin/python bench/assets.py --size-mib 256 --reps 1 --json /tmp/bench.json
    .venv/bin/python bench/assets.py --only hub             # one measure (see --only); the others are skipped

No ``PYTHONPATH`` is needed: the script puts the repository root first on ``sys.path`` so that ``flowmas``
and ``tests.servers.http_files`` import from this checkout. Progress goes to stderr; the summary table
(and the ``--json`` file) are the output. It is a measurement, not a test: it always exits 0 once it ran,
whatever the figures (non-zero only for bad options or a crash of the harness itself).

What it measures (the numbers of ``shared/anchors/openmas-assets.md`` sections 4 and 5). One random file
(``os.urandom``, ``--size-mib``, default 1 GiB) is served by ``tests.servers.http_files.FileServer`` on
127.0.0.1 (stdlib HTTP/1.1 server, ``sendfile``, Content-Length, ETag, ranges). Everything lives in a work
dir: ``/dev/shm`` when it has enough room (tmpfs, as in the anchor's cleaner run B), else a temp dir on
disk; the choice is printed. Every ratio compares figures taken in the same run, because absolute times on
a shared 2-core machine move by 2x between runs.

1. Cold download + verify, median of ``--reps`` repetitions, interleaved per repetition:
   ``curl -s -o FILE URL`` and ``openssl dgst -sha256 FILE`` (wall time of the command, process start
   included) against flowmas ``AssetManager.download(name)`` with the sha256 checksum declared, and against
   OpenMAS ``await AssetManager.get_asset_path(name)``. Both managers run in a fresh process with a fresh
   cache dir; the time is taken inside that process around the one call (imports, manager construction
   and event-loop start excluded). One untimed ``curl`` download runs first: the first GiB written into a
   fresh work dir was often 1.5-2x slower for whichever client wrote it (the machine warming up, not the
   client). Ratios: flowmas / max(median curl, median openssl) (target <= 1.3) and flowmas / OpenMAS
   (target <= 0.33). flowmas fsyncs the file before publishing it and curl does not: free on tmpfs, a real
   cost on disk. On 2 cores the figure is CPU-bound: flowmas spends ~0.7 s of CPU per GiB on sha256 that
   curl does not, and the client threads share the two cores with the server.
2. Cache hit with a checksum declared: p50/p99 of ``get_asset_path_sync`` over ``--hit-calls`` calls
   (after 20 warm-up calls) in this process, on the entry the last cold repetition published (target
   p50 <= 1 ms); the async ``get_asset_path`` is timed the same way for information. Baseline: OpenMAS's hit
   with a checksum, which re-hashes the whole file on every call (``--openmas-hit-calls`` calls, median).
3. Single flight: 4 processes ask for the same uncached asset through one fresh cache dir, released
   together (each process imports, builds its manager, reports ready, then blocks on a byte from its stdin;
   the harness writes that byte to all four back to back). Target: the server sees exactly 1 GET and all 4
   processes return the same path with the right size. OpenMAS is run the same way as the baseline.
4. Resume: the server cuts the first GET after half the file (``drop_after(size // 2)``), then serves
   normally; the asset has ``retries: 1, retry_delay_seconds: 0``. Reported: bytes the server sent / size
   (target <= 1.55) and the re-transferred fraction (sent - size/2) / size (target <= 0.55). OpenMAS, which
   restarts from byte 0, is the baseline.

5. Hugging Face Hub: one LFS file (``--hub-size-mib``, default 256 MiB: the local Hub of
   ``tests.servers.hub`` holds its files in memory) served by that Hub on 127.0.0.1 (HEAD, then a 302 to its
   CDN origin). flowmas ``AssetManager.download(name)`` of an ``hf`` asset (metadata, one streaming pass
   that hashes, check against the Hub's sha256, publish) against ``huggingface_hub.hf_hub_download`` alone,
   which downloads without verifying anything; both in fresh processes as in 1, each with a fresh HF cache
   (so flowmas cannot link the file from one), interleaved, medians of ``--reps``. huggingface_hub is
   imported before the clock starts in both. Ratio: flowmas / hf_hub_download (information, no target).

OpenMAS 0.2.2 is installed by this script from PyPI into its own venv, kept between runs under
``~/.cache/flowmas-bench/openmas-0.2.2`` (``--openmas-venv``): ``python -m venv`` with this interpreter,
then ``pip install openmas==0.2.2 'click<8.2'`` (typer 0.15.4, which openmas pulls in, already requires
``click<8.2``; the pin only documents it). If that install fails the reason is printed and only the
OpenMAS baselines are skipped. ``--skip-openmas`` skips them on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchkit import Row, median, percentile, print_table, ratio  # noqa: E402

from flowmas.assets.manager import AssetManager  # noqa: E402 - after the sys.path line above
from flowmas.settings import FlowmasSettings, project_from_dict  # noqa: E402
from tests.servers.http_files import FileServer, drop_after  # noqa: E402
from tests.servers.hub import HubServer  # noqa: E402

MiB = 2**20
GiB = 2**30
ASSET = "blob"
FILENAME = "blob.bin"
OPENMAS_VERSION = "0.2.2"
OPENMAS_REQUIREMENTS = (f"openmas=={OPENMAS_VERSION}", "click<8.2")
DEFAULT_OPENMAS_VENV = Path("~/.cache/flowmas-bench") / f"openmas-{OPENMAS_VERSION}"
WORKER_TIMEOUT = 900.0
HIT_WARMUP = 20
PROCESSES = 4
MEASURES = ("cold", "hit", "flight", "resume", "hub")
HTTP_MEASURES = frozenset(MEASURES) - {"hub"}
HUB_REPO = "bench/model"
HUB_FILENAME = "model.safetensors"

_STARTED = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since the start."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- workers
#
# Both managers are driven in child processes through the same protocol: the spec is one JSON argument;
# the child builds its manager, writes ``spec["ready"]``, optionally waits for one byte on stdin (the
# release), makes the timed call(s) and writes its result as JSON to ``spec["out"]``.

OPENMAS_WORKER = textwrap.dedent(
    '''
    """OpenMAS 0.2.2 side of bench/assets.py (written by it; runs in the OpenMAS venv)."""
    import asyncio, json, os, sys, time
    from pathlib import Path

    spec = json.loads(sys.argv[1])
    os.environ["OPENMAS_ASSETS_DIR"] = spec["cache_dir"]
    from openmas.assets.manager import AssetManager
    from openmas.config import ProjectConfig

    config = ProjectConfig(name="bench", version="0.1.0", agents={}, assets=[spec["asset"]])
    manager = AssetManager(config)
    Path(spec["ready"]).write_text("ready")
    if spec["wait_for_go"]:
        sys.stdin.buffer.read(1)

    async def run():
        result = {"ok": False, "path": None, "size": None, "error": None, "error_type": None, "hits": []}
        started = time.perf_counter()
        try:
            path = await manager.get_asset_path(spec["asset"]["name"])
            result["seconds"] = time.perf_counter() - started
            result.update(ok=True, path=str(path), size=path.stat().st_size)
        except BaseException as exc:
            result["seconds"] = time.perf_counter() - started
            result.update(error=str(exc)[:500], error_type=f"{type(exc).__module__}.{type(exc).__qualname__}")
            return result
        for _ in range(spec["hit_calls"]):
            started = time.perf_counter()
            await manager.get_asset_path(spec["asset"]["name"])
            result["hits"].append(time.perf_counter() - started)
        return result

    Path(spec["out"]).write_text(json.dumps(asyncio.run(run())))
    '''
).lstrip()


def flowmas_worker(spec: dict[str, Any]) -> None:
    """flowmas side of the protocol (``bench/assets.py --worker SPEC``), run with this venv's Python.

    ``spec["env"]`` is set first (HF_ENDPOINT, HF_HUB_CACHE...); ``spec["preload"]`` modules are imported
    before the clock starts, as a baseline's imports are."""
    os.environ.update(spec.get("env", {}))
    for module in spec.get("preload", []):
        importlib.import_module(module)
    project = project_from_dict({"name": "bench", "assets": [spec["asset"]]}, source="<bench>")
    manager = AssetManager(project, cache_dir=Path(spec["cache_dir"]), settings=FlowmasSettings())
    Path(spec["ready"]).write_text("ready")
    if spec["wait_for_go"]:
        sys.stdin.buffer.read(1)

    async def timed_get() -> tuple[float, Path]:
        began = time.perf_counter()  # inside the loop: starting the event loop is not counted
        found = await manager.get_asset_path(ASSET)
        return time.perf_counter() - began, found

    result: dict[str, Any] = {"ok": False, "path": None, "size": None, "error": None, "error_type": None}
    started = time.perf_counter()
    try:
        fetched: bool | None = None
        if spec["call"] == "download":
            outcome = manager.download(ASSET)
            elapsed, path, fetched = time.perf_counter() - started, outcome.path, outcome.fetched
        else:
            elapsed, path = asyncio.run(timed_get())
        result.update(ok=True, seconds=elapsed, path=str(path), size=path.stat().st_size, fetched=fetched)
    except Exception as exc:
        result["seconds"] = time.perf_counter() - started
        result.update(error=str(exc)[:500], error_type=f"{type(exc).__module__}.{type(exc).__qualname__}")
    finally:
        manager.close()
    Path(spec["out"]).write_text(json.dumps(result))


def hf_worker(spec: dict[str, Any]) -> None:
    """The Hub baseline (``bench/assets.py --hf-worker SPEC``): ``hf_hub_download`` alone, timed like flowmas."""
    os.environ.update(spec.get("env", {}))  # before the import: huggingface_hub reads HF_* once, at import
    from huggingface_hub import hf_hub_download

    Path(spec["ready"]).write_text("ready")
    result: dict[str, Any] = {"ok": False, "path": None, "size": None, "error": None, "error_type": None}
    started = time.perf_counter()
    try:
        path = Path(hf_hub_download(spec["repo_id"], spec["filename"], endpoint=spec["endpoint"],
                                    cache_dir=spec["hf_cache"], token=False))
        result.update(ok=True, seconds=time.perf_counter() - started, path=str(path), size=path.stat().st_size)
    except Exception as exc:
        result["seconds"] = time.perf_counter() - started
        result.update(error=str(exc)[:500], error_type=f"{type(exc).__module__}.{type(exc).__qualname__}")
    Path(spec["out"]).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------------ harness


@dataclass
class Bench:
    """Everything the measures share: options, work dir, the served file and the OpenMAS interpreter."""

    args: argparse.Namespace
    work: Path
    work_kind: str
    server: FileServer
    source: Path
    size: int
    sha256: str
    openmas_python: Path | None
    openmas_skip_reason: str | None
    openmas_script: Path
    _counter: int = 0

    def fresh_dir(self, label: str) -> Path:
        self._counter += 1
        path = self.work / f"{self._counter:03d}-{label}"
        path.mkdir(parents=True)
        return path

    def serve(self, route: str) -> str:
        """Register the source file under a route of its own (so request/byte counts stay separate)."""
        path = f"/{route}/{FILENAME}"
        self.server.add(path, self.source)
        return path

    def declaration(self, route_path: str, *, retries: int = 0, retry_delay: float = 5.0) -> dict[str, Any]:
        """One http asset with the sha256 declared; both OpenMAS and flowmas accept this mapping."""
        return {
            "name": ASSET,
            "version": "1",
            "asset_type": "model",
            "source": {"type": "http", "url": self.server.url_for(route_path)},
            "checksum": f"sha256:{self.sha256}",
            "retries": retries,
            "retry_delay_seconds": retry_delay,
        }


@dataclass
class WorkerResult:
    ok: bool
    seconds: float | None
    path: str | None
    size: int | None
    error: str | None
    error_type: str | None
    fetched: bool | None = None
    hits: list[float] = field(default_factory=list)


def run_workers(
    bench: Bench, impl: str, specs: Sequence[dict[str, Any]], *, together: bool
) -> list[WorkerResult]:
    """Start one child per spec (flowmas or OpenMAS), release them together if asked, collect results."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for index, spec in enumerate(specs):
        run_dir = bench.fresh_dir(f"{impl}-worker{index}")
        spec = {**spec, "ready": str(run_dir / "ready"), "out": str(run_dir / "result.json"),
                "wait_for_go": together}
        if impl in ("flowmas", "hf"):
            flag = "--worker" if impl == "flowmas" else "--hf-worker"
            argv = [sys.executable, str(Path(__file__).resolve()), flag, json.dumps(spec)]
        else:
            assert bench.openmas_python is not None
            argv = [str(bench.openmas_python), str(bench.openmas_script), json.dumps(spec)]
        with open(run_dir / "log.txt", "wb") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if together else subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=run_dir)
        procs.append((proc, run_dir))
    if together:
        deadline = time.monotonic() + 120
        while not all((run_dir / "ready").exists() or proc.poll() is not None for proc, run_dir in procs):
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        for proc, _ in procs:  # back to back: the release skew is a few microseconds
            try:
                assert proc.stdin is not None
                proc.stdin.write(b"g")
                proc.stdin.flush()
            except OSError:
                pass
        for proc, _ in procs:
            if proc.stdin is not None:
                proc.stdin.close()
    results: list[WorkerResult] = []
    for proc, run_dir in procs:
        try:
            proc.wait(timeout=WORKER_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out = run_dir / "result.json"
        if out.exists():
            data = json.loads(out.read_text())
            known = {k: v for k, v in data.items() if k in WorkerResult.__annotations__}
            results.append(WorkerResult(**known))
        else:
            tail = (run_dir / "log.txt").read_text(errors="replace")[-800:]
            results.append(WorkerResult(ok=False, seconds=None, path=None, size=None,
                                        error=f"worker exited {proc.returncode} without a result: {tail}",
                                        error_type="harness"))
    return results


def run_one(bench: Bench, impl: str, spec: dict[str, Any]) -> WorkerResult:
    result = run_workers(bench, impl, [spec], together=False)[0]
    if not result.ok:
        progress(f"  {impl} FAILED: {result.error_type}: {result.error}")
    return result


def timed_command(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    started = time.perf_counter()
    completed = subprocess.run(argv, capture_output=True, check=False)
    return time.perf_counter() - started, completed


# ----------------------------------------------------------------------------------------------- measures


@dataclass
class ColdResult:
    curl: list[float] = field(default_factory=list)
    openssl: list[float] = field(default_factory=list)
    flowmas: list[float] = field(default_factory=list)
    openmas: list[float] = field(default_factory=list)
    flowmas_gets: list[int] = field(default_factory=list)
    openmas_hits: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hit_declaration: dict[str, Any] | None = None
    hit_cache_dir: str | None = None

    def medians(self) -> dict[str, float | None]:
        return {k: median(getattr(self, k)) for k in ("curl", "openssl", "flowmas", "openmas")}

    def bests(self) -> dict[str, float | None]:
        return {k: min(getattr(self, k), default=None) for k in ("curl", "openssl", "flowmas", "openmas")}


def measure_cold(bench: Bench) -> ColdResult:
    """Cold download + verify: curl, openssl, flowmas and OpenMAS, interleaved in each repetition."""
    result = ColdResult()
    curl, openssl = shutil.which("curl"), shutil.which("openssl")
    if curl:  # untimed: the first GiB written into the fresh work dir is often far slower, whoever writes it
        route = bench.serve("warm-up")
        target = bench.fresh_dir("warm-up") / FILENAME
        seconds, _ = timed_command([curl, "-s", "-o", str(target), bench.server.url_for(route)])
        progress(f"warm-up (untimed curl -o): {seconds:.3f} s")
        shutil.rmtree(target.parent, ignore_errors=True)
    for rep in range(bench.args.reps):
        progress(f"cold, repetition {rep + 1}/{bench.args.reps}")
        if curl:
            route = bench.serve(f"cold-curl-{rep}")
            target = bench.fresh_dir(f"curl-{rep}") / FILENAME
            seconds, done = timed_command([curl, "-s", "-o", str(target), bench.server.url_for(route)])
            if done.returncode == 0 and target.stat().st_size == bench.size:
                result.curl.append(seconds)
                progress(f"  curl -o          {seconds:7.3f} s")
            else:
                result.notes.append(f"curl failed (rc {done.returncode}): {done.stderr[-300:]!r}")
            if openssl and target.exists():
                seconds, done = timed_command([openssl, "dgst", "-sha256", str(target)])
                if done.returncode == 0 and bench.sha256 in done.stdout.decode():
                    result.openssl.append(seconds)
                    progress(f"  openssl dgst     {seconds:7.3f} s")
                else:
                    result.notes.append(f"openssl failed (rc {done.returncode}): {done.stderr[-300:]!r}")
            shutil.rmtree(target.parent, ignore_errors=True)

        route = bench.serve(f"cold-flowmas-{rep}")
        declaration = bench.declaration(route)
        cache = bench.fresh_dir(f"flowmas-cold-cache-{rep}")
        spec = {"asset": declaration, "cache_dir": str(cache), "call": "download", "hit_calls": 0}
        outcome = run_one(bench, "flowmas", spec)
        gets = len(bench.server.requests_for(route))
        result.flowmas_gets.append(gets)
        if outcome.ok and outcome.size == bench.size and outcome.seconds is not None:
            result.flowmas.append(outcome.seconds)
            progress(f"  flowmas download {outcome.seconds:7.3f} s ({gets} GET)")
        else:
            result.notes.append(f"flowmas cold rep {rep}: {outcome.error_type}: {outcome.error}")
        if rep == bench.args.reps - 1 and outcome.ok:
            result.hit_declaration, result.hit_cache_dir = declaration, str(cache)  # kept for measure_hit
        else:
            shutil.rmtree(cache, ignore_errors=True)

        if bench.openmas_python is not None:
            route = bench.serve(f"cold-openmas-{rep}")
            cache = bench.fresh_dir(f"openmas-cold-cache-{rep}")
            hit_calls = bench.args.openmas_hit_calls if rep == 0 else 0
            outcome = run_one(bench, "openmas", {"asset": bench.declaration(route), "cache_dir": str(cache),
                                                 "hit_calls": hit_calls})
            if outcome.ok and outcome.size == bench.size and outcome.seconds is not None:
                result.openmas.append(outcome.seconds)
                result.openmas_hits.extend(outcome.hits)
                hits = ", ".join(f"{h:.3f}" for h in outcome.hits)
                hits = f"; hits {hits} s" if hits else ""
                progress(f"  OpenMAS cold     {outcome.seconds:7.3f} s{hits}")
            else:
                result.notes.append(f"OpenMAS cold rep {rep}: {outcome.error_type}: {outcome.error}")
            shutil.rmtree(cache, ignore_errors=True)
    return result


@dataclass
class HitResult:
    calls: int
    sync_p50_ms: float
    sync_p99_ms: float
    sync_max_ms: float
    async_p50_ms: float
    async_p99_ms: float
    openmas_hit_s: float | None
    openmas_hits_s: list[float]


def measure_hit(bench: Bench, cold: ColdResult) -> HitResult | None:
    """Cache hits with the checksum declared, in this process, on the entry the last cold run published."""
    if cold.hit_declaration is None or cold.hit_cache_dir is None:
        progress("cache hit: skipped (no flowmas cold download succeeded)")
        return None
    progress(f"cache hit: {bench.args.hit_calls} calls of get_asset_path_sync, then of get_asset_path")
    project = project_from_dict({"name": "bench", "assets": [cold.hit_declaration]}, source="<bench>")
    calls = bench.args.hit_calls
    with AssetManager(project, cache_dir=Path(cold.hit_cache_dir), settings=FlowmasSettings()) as manager:
        requests_before = len(bench.server.requests)
        for _ in range(HIT_WARMUP):
            path = manager.get_asset_path_sync(ASSET)
        if path.stat().st_size != bench.size:
            progress(f"  unexpected size of {path}")
        sync_ns: list[int] = []
        for _ in range(calls):
            began = time.perf_counter_ns()
            manager.get_asset_path_sync(ASSET)
            sync_ns.append(time.perf_counter_ns() - began)

        async def async_hits() -> list[int]:
            for _ in range(HIT_WARMUP):
                await manager.get_asset_path(ASSET)
            out: list[int] = []
            for _ in range(calls):
                began = time.perf_counter_ns()
                await manager.get_asset_path(ASSET)
                out.append(time.perf_counter_ns() - began)
            return out

        async_ns = asyncio.run(async_hits())
        if len(bench.server.requests) != requests_before:
            progress("  WARNING: a cache hit reached the server")
    shutil.rmtree(cold.hit_cache_dir, ignore_errors=True)
    sync_ms = [n / 1e6 for n in sync_ns]
    async_ms = [n / 1e6 for n in async_ns]
    result = HitResult(
        calls=calls,
        sync_p50_ms=percentile(sync_ms, 50),
        sync_p99_ms=percentile(sync_ms, 99),
        sync_max_ms=max(sync_ms),
        async_p50_ms=percentile(async_ms, 50),
        async_p99_ms=percentile(async_ms, 99),
        openmas_hit_s=median(cold.openmas_hits),
        openmas_hits_s=cold.openmas_hits,
    )
    progress(f"  sync p50 {result.sync_p50_ms:.3f} ms, p99 {result.sync_p99_ms:.3f} ms; "
             f"async p50 {result.async_p50_ms:.3f} ms")
    return result


@dataclass
class FlightResult:
    gets: int
    ok: int
    same_path: bool
    sizes_ok: bool
    content_ok: bool | None
    seconds: list[float | None]
    errors: list[str]


def _flight(bench: Bench, impl: str, call: str) -> FlightResult:
    route = bench.serve(f"flight-{impl}")
    cache = bench.fresh_dir(f"{impl}-flight-cache")
    spec = {"asset": bench.declaration(route), "cache_dir": str(cache), "call": call, "hit_calls": 0}
    results = run_workers(bench, impl, [spec] * PROCESSES, together=True)
    gets = len(bench.server.requests_for(route))
    paths = {r.path for r in results if r.ok and r.path is not None}
    content_ok: bool | None = None
    if len(paths) == 1 and impl == "flowmas":
        content_ok = _sha256_file(Path(next(iter(paths)))) == bench.sha256
    shutil.rmtree(cache, ignore_errors=True)
    return FlightResult(
        gets=gets,
        ok=sum(r.ok for r in results),
        same_path=len(paths) == 1 and all(r.ok for r in results),
        sizes_ok=all(r.size == bench.size for r in results),
        content_ok=content_ok,
        seconds=[r.seconds for r in results],
        errors=[f"{r.error_type}: {(r.error or '')[:160]}" for r in results if not r.ok],
    )


def measure_single_flight(bench: Bench) -> dict[str, FlightResult]:
    """4 processes released together on one uncached asset and one fresh cache dir: how many GETs."""
    out: dict[str, FlightResult] = {}
    progress(f"single flight: {PROCESSES} flowmas processes, await get_asset_path, released together")
    out["flowmas"] = flowmas = _flight(bench, "flowmas", "get_asset_path")
    progress(f"  flowmas: {flowmas.gets} GET, {flowmas.ok}/{PROCESSES} ok, same path {flowmas.same_path}, "
             f"content ok {flowmas.content_ok}, times {_fmt_list(flowmas.seconds)} s")
    if bench.openmas_python is not None:
        progress(f"single flight: {PROCESSES} OpenMAS processes")
        out["openmas"] = openmas = _flight(bench, "openmas", "get_asset_path")
        progress(f"  OpenMAS: {openmas.gets} GET, {openmas.ok}/{PROCESSES} ok; errors: "
                 f"{sorted({e.split(':')[0] for e in openmas.errors})}")
    return out


@dataclass
class ResumeResult:
    ok: bool
    seconds: float | None
    gets: int
    ranges: list[str | None]
    bytes_sent: int
    sent_over_size: float
    retransferred_fraction: float
    error: str | None


def _resume(bench: Bench, impl: str) -> ResumeResult:
    route = bench.serve(f"resume-{impl}")
    bench.server.script(route, drop_after(bench.size // 2))
    cache = bench.fresh_dir(f"{impl}-resume-cache")
    spec = {"asset": bench.declaration(route, retries=1, retry_delay=0.0), "cache_dir": str(cache),
            "call": "download", "hit_calls": 0}
    outcome = run_one(bench, impl, spec)
    sent = bench.server.bytes_sent(route)
    requests = bench.server.requests_for(route)
    shutil.rmtree(cache, ignore_errors=True)
    return ResumeResult(
        ok=outcome.ok and outcome.size == bench.size,
        seconds=outcome.seconds,
        gets=len(requests),
        ranges=[r.range for r in requests],
        bytes_sent=sent,
        sent_over_size=sent / bench.size,
        retransferred_fraction=(sent - bench.size / 2) / bench.size,
        error=None if outcome.ok else f"{outcome.error_type}: {outcome.error}",
    )


def measure_resume(bench: Bench) -> dict[str, ResumeResult]:
    """A drop at 50 % then a retry: how many bytes the server had to send in all."""
    out: dict[str, ResumeResult] = {}
    for impl in ("flowmas", "openmas"):
        if impl == "openmas" and bench.openmas_python is None:
            continue
        progress(f"resume: {impl}, first GET cut after {bench.size // 2} bytes, retries=1, delay 0")
        out[impl] = res = _resume(bench, impl)
        progress(f"  {impl}: ok {res.ok}, {res.gets} GET (Range {res.ranges}), sent/size "
                 f"{res.sent_over_size:.3f}, re-transferred {res.retransferred_fraction:.3f}"
                 + (f"; {res.error}" if res.error else ""))
    return out


@dataclass
class HubResult:
    size: int
    hf_hub_download: list[float] = field(default_factory=list)
    flowmas: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def medians(self) -> dict[str, float | None]:
        return {"hf_hub_download": median(self.hf_hub_download), "flowmas": median(self.flowmas)}


def measure_hub(bench: Bench) -> HubResult:
    """One LFS file from the local Hub: flowmas (download + verify) against ``hf_hub_download`` alone."""
    size = bench.args.hub_size_mib * MiB
    result = HubResult(size=size)
    progress(f"hub: {bench.args.hub_size_mib} MiB of random data into the local Hub (in memory)")
    with HubServer() as hub:
        hub.add_repo(HUB_REPO, {HUB_FILENAME: os.urandom(size)})
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        declaration = {"name": ASSET, "version": "1", "asset_type": "model",
                       "source": {"type": "hf", "repo_id": HUB_REPO, "filename": HUB_FILENAME}}
        for rep in range(bench.args.reps):
            progress(f"hub, repetition {rep + 1}/{bench.args.reps}")
            for impl in ("hf", "flowmas"):
                run_dir = bench.fresh_dir(f"hub-{impl}-{rep}")
                hf_cache = run_dir / "hf-cache"
                spec: dict[str, Any] = {
                    "env": {**env, "HF_HOME": str(run_dir / "hf-home"), "HF_HUB_CACHE": str(hf_cache)},
                    "hf_cache": str(hf_cache), "endpoint": hub.url, "repo_id": HUB_REPO, "filename": HUB_FILENAME,
                    "asset": declaration, "cache_dir": str(run_dir / "cache"), "call": "download", "hit_calls": 0,
                    "preload": ["huggingface_hub", "huggingface_hub.errors", "httpx2"],
                }
                outcome = run_one(bench, impl, spec)
                times = result.hf_hub_download if impl == "hf" else result.flowmas
                if outcome.ok and outcome.size == size and outcome.seconds is not None:
                    times.append(outcome.seconds)
                    progress(f"  {'hf_hub_download' if impl == 'hf' else 'flowmas download'} {outcome.seconds:7.3f} s")
                else:
                    result.notes.append(f"hub {impl} rep {rep}: {outcome.error_type}: {outcome.error}")
                shutil.rmtree(run_dir, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------------------------- setup


def choose_work_dir(requested: Path | None, size: int) -> tuple[Path, str]:
    """``--work-dir`` if given; else /dev/shm when it has room for ~3 copies; else a temp dir on disk."""
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="flowmas-bench-", dir=requested)), f"given ({requested})"
    shm = Path("/dev/shm")
    needed = max(3 * GiB, 3 * size + 256 * MiB)
    if shm.is_dir() and os.access(shm, os.W_OK):
        stat = os.statvfs(shm)
        free = stat.f_bavail * stat.f_frsize
        if free > needed:
            return Path(tempfile.mkdtemp(prefix="flowmas-bench-", dir=shm)), (
                f"tmpfs /dev/shm ({free / GiB:.1f} GiB free)")
        progress(f"/dev/shm has only {free / GiB:.1f} GiB free (< {needed / GiB:.1f} GiB): "
                 "using a temp dir on disk")
    return Path(tempfile.mkdtemp(prefix="flowmas-bench-")), "temp dir on disk"


def make_source(path: Path, size: int) -> str:
    """Write ``size`` random bytes; returns their sha256."""
    digest = hashlib.sha256()
    chunk = 16 * MiB
    with open(path, "wb") as out:
        left = size
        while left:
            data = os.urandom(min(chunk, left))
            digest.update(data)
            out.write(data)
            left -= len(data)
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        while data := file.read(16 * MiB):
            digest.update(data)
    return digest.hexdigest()


def ensure_openmas(venv: Path) -> tuple[Path | None, str | None]:
    """The Python of a venv holding openmas 0.2.2, installing it on first use; or (None, why not)."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('openmas'))"]
    if python.exists():
        done = subprocess.run(probe, capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip() == OPENMAS_VERSION:
            return python, None
        progress(f"OpenMAS venv at {venv} is unusable; rebuilding it")
        shutil.rmtree(venv, ignore_errors=True)
    progress(f"installing {' '.join(OPENMAS_REQUIREMENTS)} into {venv} (once; cached for later runs)")
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return None, f"cannot create {venv.parent}: {exc}"
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *OPENMAS_REQUIREMENTS],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, check=False, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(venv, ignore_errors=True)
            return None, f"{' '.join(step[:4])}: {exc}"
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            errors = [line for line in done.stderr.splitlines() if "WARNING" not in line][-6:]
            return None, f"`{' '.join(step)}` exited {done.returncode}: " + " | ".join(errors)
    done = subprocess.run(probe, capture_output=True, text=True, check=False)
    if done.returncode != 0 or done.stdout.strip() != OPENMAS_VERSION:
        return None, f"openmas not importable after install: {done.stderr.strip()[-300:]}"
    return python, None


# ------------------------------------------------------------------------------------------------ summary


def _fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2e}" if value < 0.001 else f"{value:.3f}"


def _fmt_list(values: Sequence[float | None]) -> str:
    return "[" + ", ".join("-" if v is None else f"{v:.2f}" for v in values) + "]"


def _met(condition: bool | None) -> str:
    return "n/a" if condition is None else ("yes" if condition else "NO")


def summarise(
    bench: Bench,
    cold: ColdResult | None,
    hit: HitResult | None,
    flight: dict[str, FlightResult] | None,
    resume: dict[str, ResumeResult] | None,
    hub: HubResult | None = None,
) -> list[Row]:
    """The table: one row per target (plus informational rows), for the measures that ran."""
    rows: list[Row] = []
    if cold is not None:
        _cold_rows(rows, bench, cold, hit)
    if flight is not None:
        _flight_rows(rows, flight)
    if resume is not None:
        _resume_rows(rows, resume)
    if hub is not None:
        m = hub.medians()
        label = f"{hub.size / GiB:g} GiB" if hub.size >= GiB else f"{hub.size // MiB} MiB"
        rows.append(Row(f"Hub LFS download+verify {label} (median of {len(hub.flowmas)})", _fmt_s(m["flowmas"]),
                        f"hf_hub_download {_fmt_s(m['hf_hub_download'])}",
                        _fmt_ratio(ratio(m["flowmas"], m["hf_hub_download"])), "(info)", "-"))
    return rows


def _cold_rows(rows: list[Row], bench: Bench, cold: ColdResult, hit: HitResult | None) -> None:
    m = cold.medians()
    floor = max((v for v in (m["curl"], m["openssl"]) if v is not None), default=None)
    size_label = f"{bench.size / GiB:g} GiB" if bench.size >= GiB else f"{bench.size // MiB} MiB"
    r_floor = ratio(m["flowmas"], floor)
    rows.append(Row(f"cold download+verify {size_label} (median of {bench.args.reps})", _fmt_s(m["flowmas"]),
                    f"max(curl {_fmt_s(m['curl'])}, openssl {_fmt_s(m['openssl'])})", _fmt_ratio(r_floor),
                    "<= 1.3", _met(None if r_floor is None else r_floor <= 1.3)))
    r_om = ratio(m["flowmas"], m["openmas"])
    om_cold = (f"OpenMAS {_fmt_s(m['openmas'])}" if m["openmas"] is not None
               else "OpenMAS: skipped (see note)")
    rows.append(Row("cold download+verify vs OpenMAS", _fmt_s(m["flowmas"]), om_cold, _fmt_ratio(r_om),
                    "<= 0.33", _met(None if r_om is None else r_om <= 0.33)))

    if hit is not None:
        om_hit = (f"OpenMAS hit {_fmt_s(hit.openmas_hit_s)}" if hit.openmas_hit_s is not None
                  else "OpenMAS: n/a")
        om_ms = hit.openmas_hit_s * 1000 if hit.openmas_hit_s is not None else None
        for label, value, target, met in (
            (f"cache hit p50, get_asset_path_sync ({hit.calls} calls)", hit.sync_p50_ms, "p50 <= 1 ms",
             _met(hit.sync_p50_ms <= 1.0)),
            ("cache hit p99, get_asset_path_sync", hit.sync_p99_ms, "(info)", "-"),
            ("cache hit p50, async get_asset_path", hit.async_p50_ms, "(info)", "-"),
        ):
            rows.append(Row(label, f"{value:.3f} ms", om_hit, _fmt_ratio(ratio(value, om_ms)), target, met))
    elif "hit" in bench.args.only:
        rows.append(Row("cache hit p50, get_asset_path_sync", "n/a", "", "", "p50 <= 1 ms", "n/a"))


def _flight_rows(rows: list[Row], flight: dict[str, FlightResult]) -> None:
    fl, om_fl = flight["flowmas"], flight.get("openmas")
    good = fl.gets == 1 and fl.ok == PROCESSES and fl.same_path and fl.sizes_ok and fl.content_ok is not False
    same = "yes" if fl.same_path and fl.sizes_ok else "no"
    om_flight = (f"OpenMAS: {om_fl.gets} GET, {om_fl.ok}/{PROCESSES} ok" if om_fl is not None
                 else "OpenMAS: n/a")
    rows.append(Row(f"{PROCESSES} processes, 1 uncached asset",
                    f"{fl.gets} GET, {fl.ok}/{PROCESSES} ok, same path+size: {same}", om_flight, "-",
                    f"1 GET, {PROCESSES}/{PROCESSES} ok", _met(good)))


def _resume_rows(rows: list[Row], resume: dict[str, ResumeResult]) -> None:
    fr, om_res = resume["flowmas"], resume.get("openmas")
    failed = "" if fr.ok else " (FAILED)"
    for label, value, baseline, limit in (
        ("resume after 50% drop: bytes sent / size", fr.sent_over_size,
         om_res.sent_over_size if om_res else None, 1.55),
        ("resume: re-transferred fraction", fr.retransferred_fraction,
         om_res.retransferred_fraction if om_res else None, 0.55),
    ):
        rows.append(Row(label, f"{value:.3f}{failed}", f"OpenMAS {baseline:.3f}" if baseline is not None
                        else "OpenMAS: n/a", _fmt_ratio(ratio(value, baseline)), f"<= {limit}",
                        _met(fr.ok and value <= limit)))


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the served file (default 1024)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the cold measures (median)")
    parser.add_argument("--hit-calls", type=int, default=2000, help="flowmas cache-hit calls (default 2000)")
    parser.add_argument("--openmas-hit-calls", type=int, default=3,
                        help="OpenMAS cache-hit calls, each re-hashing the file (default 3)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="parent of the work dir (default: /dev/shm if roomy, else the system temp dir)")
    parser.add_argument("--openmas-venv", type=Path, default=DEFAULT_OPENMAS_VENV,
                        help=f"venv for openmas {OPENMAS_VERSION} (default {DEFAULT_OPENMAS_VENV})")
    parser.add_argument("--skip-openmas", action="store_true", help="do not install or run OpenMAS")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (worker logs) afterwards")
    parser.add_argument("--only", default=",".join(MEASURES),
                        help=f"comma-separated measures to run (default all: {','.join(MEASURES)}); "
                             "hit needs cold")
    parser.add_argument("--hub-size-mib", type=int, default=256,
                        help="size of the Hub measure's LFS file, held in memory by the local Hub (default 256)")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.reps < 1 or args.hit_calls < 1 or args.openmas_hit_calls < 0 \
            or args.hub_size_mib < 1:
        parser.error("--size-mib, --hub-size-mib, --reps and --hit-calls must be >= 1, --openmas-hit-calls >= 0")
    args.only = {name.strip() for name in args.only.split(",") if name.strip()}
    if not args.only or not args.only <= set(MEASURES):
        parser.error(f"--only takes a comma-separated subset of {', '.join(MEASURES)}")
    if "hit" in args.only and "cold" not in args.only:
        parser.error("--only hit needs cold too: the hits read the entry the last cold repetition published")
    return args


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] in ("--worker", "--hf-worker"):
        (flowmas_worker if argv[0] == "--worker" else hf_worker)(json.loads(argv[1]))
        return 0
    args = parse_args(argv)
    http = bool(args.only & HTTP_MEASURES)
    size = args.size_mib * MiB if http else 0
    openmas_python: Path | None = None
    skip_reason: str | None = "--skip-openmas was given" if args.skip_openmas else "not needed by --only"
    if not args.skip_openmas and http:
        openmas_python, skip_reason = ensure_openmas(args.openmas_venv.expanduser())
        if openmas_python is None:
            progress(f"OpenMAS baseline SKIPPED: {skip_reason}")
        else:
            progress(f"OpenMAS {OPENMAS_VERSION}: {openmas_python}")

    load_before = os.getloadavg()
    work, work_kind = choose_work_dir(args.work_dir, max(size, args.hub_size_mib * MiB if "hub" in args.only else 0))
    progress(f"work dir: {work} [{work_kind}]; {os.cpu_count()} CPUs, load average {load_before[0]:.2f}")
    server = FileServer().start()
    try:
        source = work / "source.bin"
        sha256 = ""
        if http:
            progress(f"writing {args.size_mib} MiB of random data")
            sha256 = make_source(source, size)
        openmas_script = work / "openmas_worker.py"
        openmas_script.write_text(OPENMAS_WORKER)
        bench = Bench(args, work, work_kind, server, source, size, sha256, openmas_python, skip_reason,
                      openmas_script)

        cold = measure_cold(bench) if "cold" in args.only else None
        hit = measure_hit(bench, cold) if cold is not None and "hit" in args.only else None
        flight = measure_single_flight(bench) if "flight" in args.only else None
        resume = measure_resume(bench) if "resume" in args.only else None
        hub = measure_hub(bench) if "hub" in args.only else None
        rows = summarise(bench, cold, hit, flight, resume, hub)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            progress(f"work dir kept: {work}")

    load_after = os.getloadavg()
    print()
    sizes = [f"{args.size_mib} MiB"] if http else []
    sizes += [f"Hub {args.hub_size_mib} MiB"] if hub is not None else []
    print(f"flowmas asset benchmark ({', '.join(sorted(args.only, key=MEASURES.index))}): {', '.join(sizes)} over "
          f"127.0.0.1, {args.reps} rep(s), work dir on {work_kind}; load average {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}; {time.monotonic() - _STARTED:.0f} s in all")
    print_table(rows)
    if cold is not None:
        best = cold.bests()
        best_floor = max((v for v in (best["curl"], best["openssl"]) if v is not None), default=None)
        print(f"cold, best of {args.reps} (the noise check; the table uses medians): "
              f"flowmas {_fmt_s(best['flowmas'])}, curl {_fmt_s(best['curl'])}, "
              f"openssl {_fmt_s(best['openssl'])}, "
              f"OpenMAS {_fmt_s(best['openmas'])}; "
              f"flowmas/max(curl,openssl) {_fmt_ratio(ratio(best['flowmas'], best_floor))}, "
              f"flowmas/OpenMAS {_fmt_ratio(ratio(best['flowmas'], best['openmas']))}")
        print("cold, each repetition: " + "; ".join(
            f"{k} {_fmt_list(getattr(cold, k))}" for k in ("curl", "openssl", "flowmas", "openmas")))
    if hub is not None:
        print(f"hub, each repetition: hf_hub_download {_fmt_list(hub.hf_hub_download)}; "
              f"flowmas {_fmt_list(hub.flowmas)}")
    if openmas_python is None and http:
        print(f"note: OpenMAS baselines skipped: {skip_reason}")
    for note in [*(cold.notes if cold is not None else []), *(hub.notes if hub is not None else [])]:
        print(f"note: {note}")
    if flight is not None and flight["flowmas"].errors:
        print(f"note: flowmas single-flight errors: {flight['flowmas'].errors}")

    if args.json is not None:
        figures = {
            "config": {"size_bytes": size, "reps": args.reps, "hit_calls": args.hit_calls,
                       "openmas_hit_calls": args.openmas_hit_calls, "work_dir_kind": work_kind,
                       "measures": sorted(args.only, key=MEASURES.index), "hub_size_bytes": args.hub_size_mib * MiB},
            "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform(), "load_average_before": load_before,
                            "load_average_after": load_after,
                            "openmas": OPENMAS_VERSION if openmas_python else None,
                            "openmas_skip_reason": None if openmas_python else skip_reason},
            "cold_seconds": ({**asdict(cold), "medians": cold.medians(), "bests": cold.bests()}
                             if cold is not None else None),
            "hit": asdict(hit) if hit is not None else None,
            "single_flight": {k: asdict(v) for k, v in flight.items()} if flight is not None else None,
            "resume": {k: asdict(v) for k, v in resume.items()} if resume is not None else None,
            "hub_seconds": {**asdict(hub), "medians": hub.medians()} if hub is not None else None,
            "summary": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        progress(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
