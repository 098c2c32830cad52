"""Benchmark of flowmas's file service (``flowmas.files``) against ``cp``, raw writes, a full metadata scan and
Solace Agent Mesh 0.2.4's file service.

Run it with ``make bench`` (which runs ``bench/assets.py``, ``bench/api.py``, then this) or directly::

    .venv/bin/python bench/files.py                      # everything, 3 repetitions (~4 min on 2 cores)
    .venv/bin/python bench/files.py --quick              # small sizes, 1 repetition: a smoke run (~30 s)
    .venv/bin/python bench/files.py --only csv,sweep --reps 5 --json /tmp/files.json
    .venv/bin/python bench/files.py --skip-sam           # flowmas and the machine's floors only

No ``PYTHONPATH`` is needed: the script puts the repository root first on ``sys.path``. Progress goes to
stderr; the summary table, the raw repetitions (and the ``--json`` file) are the output. It is a measurement,
not a test: it always exits 0 once it ran, whatever the figures (non-zero only for bad options or a crash of
the harness itself). Every ratio compares figures taken in the same run, interleaved per repetition, because
absolute figures on a shared 2-core machine move by 2x between runs (``shared/anchors/sam-file-service.md``
section 3 holds SAM's figures this reproduces).

Everything lives in one work dir on disk (``--work-parent``, default ``/tmp``; its device and filesystem are
printed: on the benchmark machine ``/tmp`` and ``/work`` are the same ext4 volume), removed afterwards unless
``--keep``. Nothing is cached between runs except SAM's venv. flowmas runs as
``FileService(LocalStorageManager(root))`` with the store's defaults (``fsync=False``: an upload is atomic
against crashes of the process, not power cuts; SAM never fsyncs either), and every large operation runs in a
fresh child process of its own (``bench/files.py --worker SPEC``; SAM's through a runner script in SAM's venv),
timed inside that process around the one call (imports and construction excluded).

1. **Large file throughput** (``--size-mb``, default 500 MB of ``os.urandom``): ``cp SRC DST`` on the same
   filesystem (wall time of the command; GNU cp 9 copies in the kernel with ``copy_file_range``) against
   flowmas ``upload_from_file`` into a store in the work dir and ``download_to_file`` back to a file beside
   it. ``os.sync()`` (untimed) before every timed operation, so none pays for the previous one's writeback;
   the source is hot in the page cache for all. Ratio: flowmas MB/s / ``cp`` MB/s, of the medians over
   ``--reps`` (target >= 0.8 for both directions). For information: two floors timed in the harness in the
   same repetition, ``shutil.copyfileobj`` with 1 MiB chunks (a user-space streaming copy) and one
   ``hashlib.sha256`` pass over the file (the hashing every upload does), and SAM's ``upload_from_file`` /
   ``download_to_file`` timed like flowmas's, with each side's peak RSS. The order of the sides (cp, the
   floors, flowmas, SAM) rotates per repetition: on the benchmark VM a user-space copy of 500 MB (``dd
   bs=1M`` as well as Python) varies 0.2-2 s depending on what was written just before, while ``cp``'s
   in-kernel copy stays at 0.15-0.3 s, so no side may always come first.
2. **CSV upload with schema and shape** (``--csv-mb``, default 200 MB: ``id,user_id,qty,price,name,city,flag,
   note``, the anchor's shape, generated from a fixed seed): ``upload_from_file`` in a fresh process per
   repetition and implementation. Time, and memory as ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the
   call (absolute peak) and *delta* = that peak minus the process's current RSS (``/proc/self/statm``) just
   before the call, after imports and construction. The delta is never an underestimate (a peak reached
   during the imports would only inflate it). Targets: SAM time / flowmas time >= 5 (medians), flowmas
   delta <= 64 MB. The shapes both services inferred are printed.
3. **1 KB upload latency**: p50 of ``await FileService.upload_from_buffer(1 KiB, "note.bin", session)`` over
   ``--small-n`` uploads after 200 untimed ones, against a raw write in the same process, interleaved in blocks
   of 100: the baseline writes the 1 KiB to ``tmp/<key>.<rand>.part`` and ``os.replace``s it into
   ``objects/<k[:2]>/<k>``, then writes ``json.dumps`` of a metadata dict with the keys flowmas returns the
   same way into ``meta/<k[:2]>/<k>.json`` (``secrets.token_hex(16)`` keys, fan-out dirs made on first use,
   fsyncs only if the flowmas store fsyncs: by default none, exactly like ``LocalStorageManager``'s data and
   metadata writes). It leaves out what flowmas does on top: its two index markers, the sha256, the
   metadata model. Target: flowmas p50 / baseline p50 <= 1.5. The ``*_sync`` twin and SAM's
   ``upload_from_buffer`` are shown for information.
4. **Expiry sweep** over ``--files`` files (default 100,000) of which 1 % have expired: the store is built by
   ``cpu_count`` processes uploading 100-byte buffers through ``FileService.upload_from_buffer`` with a
   controllable ``clock``: files ``i % 100 == r`` (``r = 1..reps``) are uploaded "earlier", so that at sweep
   time ``r`` exactly 1 % of the original files have just expired, and each repetition sweeps a fresh 1 %
   from the one store. Each repetition times first the baseline, a full scan like SAM's sweep (list every
   metadata document under ``meta/``, read and parse it, compare its ``expiration_timestamp`` with now,
   count; it deletes nothing, so it is a floor of SAM's sweep), then ``FileService.expire()`` at the same
   ``now`` (which finds the expired files through its expiry index *and deletes them*). Both run in one child
   process on a store hot in the page cache (an untimed scan warms it first). Ratio: expire / scan
   (target <= 0.1). Because the scan deletes nothing, each repetition also times the deletion floor: plain
   ``os.unlink`` of the four entries ``expire()`` removes per file (data, metadata, expiry and session
   markers; ``LocalStorageManager``'s layout) for as many *other* files (``i % 100 == 50 + r``), its order
   against ``expire()`` alternating per repetition; shown for information with expire / (scan + unlinks),
   the comparison with a sweep that scans everything and deletes what it finds, as SAM's does.

SAM 0.2.4 is installed by this script from PyPI into its own venv, kept between runs under
``~/.cache/flowmas-bench/sam-0.2.4`` (``--sam-venv``): ``python -m venv`` with this interpreter, then
``pip install solace-agent-mesh==0.2.4`` with all its dependencies (including the broker client
``solace-pubsubplus``, which ``solace_ai_connector.common``'s ``__init__`` imports). With that, SAM imports
unmodified and no stub is used. Only if that import fails (e.g. no ``solace-pubsubplus`` wheel for the
platform) does the runner stub SAM's *dependency*: it registers an empty package module for
``solace_ai_connector.common`` (skipping its ``__init__`` and the broker import; the package's real
``log.py``, all the file service needs of it, still loads from disk); the output says whether it did. SAM's
own code is never stubbed or patched. Its ``FileService(config, identifier)`` is built with ``type: volume``
on a directory of the work dir and ``expiration_check_interval`` set to a day (its expiry thread sweeps the
empty directory once at construction, then sleeps). If the install fails the reason is printed and only the
SAM rows are skipped; ``--skip-sam`` skips them on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchkit import Row, median, percentile, print_table, ratio

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MB = 1_000_000
KiB = 1024
CHUNK = 2**20
DAY = 86_400.0
SAM_VERSION = "0.2.4"
SAM_REQUIREMENTS = (f"solace-agent-mesh=={SAM_VERSION}",)
DEFAULT_SAM_VENV = Path("~/.cache/flowmas-bench") / f"sam-{SAM_VERSION}"
MEASURES = ("throughput", "csv", "small", "sweep")
WORKER_TIMEOUT = 1800.0
SMALL_WARMUP = 200
SMALL_BLOCK = 100
SWEEP_STEP = 600.0
"""Seconds between the expiry times of the groups the sweep repetitions expire (one per repetition)."""
RSS_TARGET_MB = 64.0

_STARTED = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since the start."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- helpers


def rss_now_kib() -> int:
    """The process's resident set now (``/proc/self/statm``), KiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // KiB


def peak_rss_kib() -> int:
    """The process's peak resident set so far (``ru_maxrss``, KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {str(exc)[:400]}"


def make_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left > 0:
            chunk = os.urandom(min(8 * 2**20, left))
            out.write(chunk)
            left -= len(chunk)


CITIES = ("Berlin", "Paris", "Lisbon", "Oslo", "Zurich", "Madrid", "Vienna", "Prague", "Dublin", "Rome")
NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar")


def make_csv(path: Path, size: int, seed: int = 20250602) -> int:
    """A CSV of about ``size`` bytes in the anchor's shape (8 columns, ~92 bytes a row); returns its rows."""
    rng = random.Random(seed)
    words = [f"{a}-{b}" for a in ("lorem", "ipsum", "dolor", "sit", "amet", "elit") for b in range(40)]
    rows = 0
    written = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        header = "id,user_id,qty,price,name,city,flag,note\n"
        out.write(header)
        written += len(header)
        while written < size:
            lines = []
            for _ in range(10_000):
                rows += 1
                lines.append(f"{rows},{rng.randrange(1, 10**7)},{rng.randrange(1, 500)},"
                             f"{rng.randrange(1, 10**6) / 100:.2f},{rng.choice(NAMES)} {rng.choice(NAMES)},"
                             f"{rng.choice(CITIES)},{'true' if rng.random() < 0.5 else 'false'},"
                             f"{' '.join(rng.choices(words, k=4))}\n")
            block = "".join(lines)
            out.write(block)
            written += len(block)
    return rows


def full_scan(root: Path, now: float) -> tuple[int, int]:
    """The baseline sweep: read and parse every metadata document of the store, compare its expiry with now.

    Returns (documents, expired). SAM's ``_delete_expired_items`` does this over its directory (building a
    list of all of them first); this streams, so it is a floor of SAM's sweep."""
    documents = expired = 0
    for fan in os.scandir(root / "meta"):
        if not fan.is_dir():
            continue
        for entry in os.scandir(fan.path):
            if not entry.name.endswith(".json"):
                continue
            try:
                with open(entry.path, "rb") as handle:
                    document = json.loads(handle.read())
            except FileNotFoundError:
                continue
            documents += 1
            if document["expiration_timestamp"] <= now:
                expired += 1
    return documents, expired


def raw_write(root: Path, key: str, data: bytes, document: dict[str, Any], fsync: bool) -> None:
    """The 1 KB baseline: data then metadata, each written to ``tmp/`` and ``os.replace``d into place."""
    for final, payload in ((root / "objects" / key[:2] / key, data),
                           (root / "meta" / key[:2] / f"{key}.json", json.dumps(document).encode())):
        tmp = root / "tmp" / f"{key}.{secrets.token_hex(6)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, final)
        except FileNotFoundError:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        if fsync:
            dfd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


# ----------------------------------------------------------------------------------------------- workers
#
# Both services are driven in child processes through one protocol: ``argv[1]`` is a JSON spec file with
# ``op`` and its parameters; the child writes its result as JSON to ``spec["out"]``.

SAM_RUNNER = textwrap.dedent(
    '''
    """Solace Agent Mesh 0.2.4 side of bench/files.py (written by it; runs in SAM's venv, unmodified SAM code)."""
    import importlib.util, json, os, resource, sys, time, types
    from pathlib import Path

    spec = json.loads(Path(sys.argv[1]).read_text())
    result = {"ok": False, "stub": None, "error": None}

    def rss_now_kib():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    def peak_kib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    try:
        try:
            from solace_agent_mesh.services.file_service import FileService
        except ImportError as first:
            # Stub of a dependency only: solace_ai_connector.common's __init__ imports the broker client
            # (solace.messaging); the file service needs only its log module, loaded from the real file.
            found = importlib.util.find_spec("solace_ai_connector")
            if found is None or not found.submodule_search_locations:
                raise
            common = types.ModuleType("solace_ai_connector.common")
            common.__path__ = [os.path.join(list(found.submodule_search_locations)[0], "common")]
            sys.modules["solace_ai_connector.common"] = common
            for name in [n for n in sys.modules if n.startswith("solace_agent_mesh")]:
                del sys.modules[name]
            result["stub"] = ("empty package module for solace_ai_connector.common (its __init__ failed: "
                              f"{type(first).__name__}: {first})")
            from solace_agent_mesh.services.file_service import FileService

        config = {"type": "volume", "max_time_to_live": 86400, "expiration_check_interval": 86400,
                  "config": {"volume": {"directory": spec["store"]}}}
        service = FileService(config, identifier="bench")
        time.sleep(0.2)  # its expiry thread sweeps the (empty) store once at start, then sleeps a day
        op, session = spec["op"], "bench-session"
        if op == "roundtrip":
            result["rss_before_kib"] = rss_now_kib()
            os.sync()
            began = time.perf_counter()
            metadata = service.upload_from_file(spec["src"], session)
            result["upload_s"] = time.perf_counter() - began
            result["peak_after_upload_kib"] = peak_kib()
            os.sync()
            began = time.perf_counter()
            service.download_to_file(metadata["url"], spec["dest"], session)
            result["download_s"] = time.perf_counter() - began
            result["peak_kib"] = peak_kib()
            result["dest_size"] = os.path.getsize(spec["dest"])
        elif op == "csv":
            result["rss_before_kib"] = rss_now_kib()
            began = time.perf_counter()
            metadata = service.upload_from_file(spec["src"], session)
            result["seconds"] = time.perf_counter() - began
            result["peak_kib"] = peak_kib()
            result["shape"] = metadata.get("shape")
            result["schema"] = metadata.get("schema-yaml") or metadata.get("schema_yaml")
        elif op == "small":
            data = os.urandom(1024)
            for i in range(spec["warmup"]):
                service.upload_from_buffer(data, "note.bin", session)
            latencies = []
            for i in range(spec["n"]):
                began = time.perf_counter()
                service.upload_from_buffer(data, "note.bin", session)
                latencies.append(time.perf_counter() - began)
            result["latencies"] = latencies
        else:
            raise ValueError(f"unknown op {op}")
        result["ok"] = True
    except BaseException as exc:
        result["error"] = f"{type(exc).__module__}.{type(exc).__qualname__}: {str(exc)[:400]}"
    Path(spec["out"]).write_text(json.dumps(result))
    os._exit(0)  # SAM's expiry thread is a daemon sleeping for a day; its __del__ would join it
    '''
).lstrip()


def flowmas_worker(spec: dict[str, Any]) -> None:
    """flowmas side of the protocol (``bench/files.py --worker SPEC``), run with this venv's Python."""
    result: dict[str, Any] = {"ok": False, "error": None}
    try:
        result.update(asyncio.run(_flowmas_op(spec)))
        if spec["op"] == "small":
            result.update(_flowmas_small_sync(spec))
        result["ok"] = True
    except BaseException as exc:
        result["error"] = error_text(exc)
    Path(spec["out"]).write_text(json.dumps(result))


def _service(root: str, clock: Callable[[], float] | None = None) -> Any:
    from flowmas.files.service import FileService
    from flowmas.files.storage.local import LocalStorageManager

    if clock is None:
        return FileService(LocalStorageManager(root), max_time_to_live=DAY)
    return FileService(LocalStorageManager(root), max_time_to_live=DAY, clock=clock)


async def _flowmas_op(spec: dict[str, Any]) -> dict[str, Any]:
    op, session = spec["op"], "bench-session"
    out: dict[str, Any] = {}
    if op == "roundtrip":
        service = _service(spec["store"])
        out["rss_before_kib"] = rss_now_kib()
        os.sync()
        began = time.perf_counter()
        metadata = await service.upload_from_file(spec["src"], session)
        out["upload_s"] = time.perf_counter() - began
        out["peak_after_upload_kib"] = peak_rss_kib()
        os.sync()
        began = time.perf_counter()
        await service.download_to_file(metadata["url"], spec["dest"], session)
        out["download_s"] = time.perf_counter() - began
        out["peak_kib"] = peak_rss_kib()
        out["dest_size"] = os.path.getsize(spec["dest"])
        await service.close()
    elif op == "csv":
        service = _service(spec["store"])
        out["rss_before_kib"] = rss_now_kib()
        began = time.perf_counter()
        metadata = await service.upload_from_file(spec["src"], session)
        out["seconds"] = time.perf_counter() - began
        out["peak_kib"] = peak_rss_kib()
        out["shape"] = metadata.get("shape")
        out["schema"] = metadata.get("schema-yaml") or metadata.get("schema_yaml")
        out["schema_error"] = metadata.get("schema_error")
        await service.close()
    elif op == "small":
        out.update(await _flowmas_small(spec))
    elif op == "build":
        out.update(await _flowmas_build(spec))
    elif op == "sweep":
        out.update(await _flowmas_sweep(spec))
    else:
        raise ValueError(f"unknown op {op}")
    return out


async def _flowmas_small(spec: dict[str, Any]) -> dict[str, Any]:
    service = _service(spec["store"])
    fsync = bool(getattr(service.storage, "fsync", False)) if hasattr(service, "storage") else False
    base = Path(spec["baseline_root"])
    for name in ("objects", "meta", "tmp"):
        (base / name).mkdir(parents=True, exist_ok=True)
    data = os.urandom(KiB)
    session = "bench-session"
    template = await service.upload_from_buffer(data, "note.bin", session)

    def document() -> tuple[str, dict[str, Any]]:
        key = secrets.token_hex(16)
        now = time.time()
        doc = {**template, "url": f"amfs://{key}_note.bin", "upload_timestamp": now,
               "expiration_timestamp": now + DAY}
        return key, doc

    for _ in range(SMALL_WARMUP):
        await service.upload_from_buffer(data, "note.bin", session)
        key, doc = document()
        raw_write(base, key, data, doc, fsync)
    flowmas: list[float] = []
    baseline: list[float] = []
    for block in range(max(1, spec["n"] // SMALL_BLOCK)):
        for side in (("flowmas", "raw") if block % 2 == 0 else ("raw", "flowmas")):
            for _ in range(SMALL_BLOCK):
                if side == "flowmas":
                    began = time.perf_counter()
                    await service.upload_from_buffer(data, "note.bin", session)
                    flowmas.append(time.perf_counter() - began)
                else:
                    began = time.perf_counter()
                    key, doc = document()
                    raw_write(base, key, data, doc, fsync)
                    baseline.append(time.perf_counter() - began)
    await service.close()
    return {"latencies": flowmas, "baseline": baseline, "fsync": fsync,
            "metadata_bytes": len(json.dumps(template).encode())}


def _flowmas_small_sync(spec: dict[str, Any]) -> dict[str, Any]:
    service = _service(spec["store"])
    data = os.urandom(KiB)
    for _ in range(SMALL_WARMUP // 4):
        service.upload_from_buffer_sync(data, "note.bin", "bench-session")
    latencies: list[float] = []
    for _ in range(spec["n"] // 2):
        began = time.perf_counter()
        service.upload_from_buffer_sync(data, "note.bin", "bench-session")
        latencies.append(time.perf_counter() - began)
    close = getattr(service, "close_sync", None)
    if close is not None:
        close()
    return {"sync_latencies": latencies}


def sweep_clock(index: int, t0: float, reps: int) -> float:
    """When file ``index`` is uploaded: files ``i % 100 == r`` (1 <= r <= reps) earlier, so they expire first."""
    group = index % 100
    if 1 <= group <= reps:
        return t0 - (reps + 1 - group) * SWEEP_STEP
    return t0


def sweep_now(rep: int, t0: float, reps: int) -> float:
    """The sweep time of repetition ``rep`` (1-based): group ``rep`` expired two minutes before (its bucket has
    ended), the next group expires ``SWEEP_STEP`` - 2 minutes later."""
    return t0 + DAY - (reps + 1 - rep) * SWEEP_STEP + 120.0


async def _flowmas_build(spec: dict[str, Any]) -> dict[str, Any]:
    now = [spec["t0"]]
    service = _service(spec["store"], clock=lambda: now[0])
    data = b"x" * 100
    began = time.perf_counter()
    for index in range(spec["start"], spec["stop"]):
        now[0] = sweep_clock(index, spec["t0"], spec["reps"])
        await service.upload_from_buffer(data, f"f{index}.bin", f"session-{index % 97}")
    seconds = time.perf_counter() - began
    await service.close()
    return {"seconds": seconds, "files": spec["stop"] - spec["start"]}


async def _flowmas_sweep(spec: dict[str, Any]) -> dict[str, Any]:
    now = [spec["t0"]]
    service = _service(spec["store"], clock=lambda: now[0])
    root = Path(spec["store"])
    reps = spec["reps"]
    # untimed: the whole store hot in the page cache for both sides; picks the unlink floor's files
    spare = collect_documents(root, {FLOOR_GROUP + rep for rep in range(1, reps + 1)})
    out: dict[str, Any] = {"scan_s": [], "scan_docs": [], "scan_expired": [], "expire_s": [], "expired": [],
                           "reports": [], "index_reads": [], "floor_s": [], "floor_entries": []}
    storage = getattr(service, "storage", None)
    for rep in range(1, reps + 1):
        at = sweep_now(rep, spec["t0"], reps)
        began = time.perf_counter()
        documents, expired = full_scan(root, at)
        out["scan_s"].append(time.perf_counter() - began)
        out["scan_docs"].append(documents)
        out["scan_expired"].append(expired)
        for step in (("expire", "floor") if rep % 2 else ("floor", "expire")):
            if step == "floor":
                began = time.perf_counter()
                removed = unlink_like_expire(root, spare.get(FLOOR_GROUP + rep, []))
                out["floor_s"].append(time.perf_counter() - began)
                out["floor_entries"].append(removed)
                continue
            now[0] = at
            stats_before = dict(getattr(storage, "stats", {}) or {})
            began = time.perf_counter()
            report = await service.expire()
            out["expire_s"].append(time.perf_counter() - began)
            stats_after = dict(getattr(storage, "stats", {}) or {})
            out["index_reads"].append({k: stats_after.get(k, 0) - stats_before.get(k, 0) for k in stats_after})
            out["reports"].append(repr(report)[:300])
            out["expired"].append(_report_count(report))
    await service.close()
    return out


FLOOR_GROUP = 50
"""Files ``i % 100 == FLOOR_GROUP + rep`` (never expired during the run) are the unlink floor's of repetition rep."""


def collect_documents(root: Path, groups: set[int]) -> dict[int, list[dict[str, Any]]]:
    """One full read of the store (untimed) that keeps the metadata of the files ``f{i}.bin`` with
    ``i % 100`` in ``groups``."""
    found: dict[int, list[dict[str, Any]]] = {}
    for fan in os.scandir(root / "meta"):
        for entry in os.scandir(fan.path):
            with open(entry.path, "rb") as handle:
                document = json.loads(handle.read())
            name = str(document.get("filename", ""))
            if name.startswith("f") and name.endswith(".bin") and name[1:-4].isdigit():
                group = int(name[1:-4]) % 100
                if group in groups:
                    found.setdefault(group, []).append(document)
    return found


def unlink_like_expire(root: Path, documents: Sequence[dict[str, Any]]) -> int:
    """The deletion floor of a sweep: ``os.unlink`` of the four entries ``expire()`` removes per file (data
    object, metadata document, expiry marker, session marker; paths of ``LocalStorageManager``'s layout),
    for other files of the same store, nothing else. Returns the entries removed."""
    from flowmas.files.storage.base import bucket_of

    removed = 0
    for doc in documents:
        key, ref = doc["key"], doc["session_ref"]
        for path in (root / "objects" / key[:2] / key, root / "meta" / key[:2] / f"{key}.json",
                     root / "expiry" / bucket_of(doc["expiration_timestamp"]) / f"{key}.{ref}",
                     root / "sessions" / ref / key):
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _report_count(report: Any) -> int | None:
    """How many files a sweep removed, whatever the report calls it."""
    for name in ("expired", "deleted", "removed", "count"):
        value = getattr(report, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, list | tuple | set):
            return len(value)
    return None


# ------------------------------------------------------------------------------------------------ harness


@dataclass
class SamVenv:
    python: Path | None
    version: str | None
    note: str | None  # why it is skipped


_PROBE = ("import importlib.metadata as m, json; "
          "print(json.dumps({n: m.version(n) for n in ('solace-agent-mesh', 'solace-ai-connector', "
          "'solace-pubsubplus')}))")


def _sam_versions(python: Path) -> dict[str, str] | None:
    try:
        done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        versions = json.loads(done.stdout)
    except ValueError:
        return None
    return versions if isinstance(versions, dict) else None


def ensure_sam(venv: Path) -> tuple[SamVenv, dict[str, str]]:
    """A venv holding solace-agent-mesh 0.2.4 and its dependencies, installed on first use (kept afterwards)."""
    python = venv / "bin" / "python"
    if python.exists():
        have = _sam_versions(python)
        if have is not None and have.get("solace-agent-mesh") == SAM_VERSION:
            return SamVenv(python, SAM_VERSION, None), have
        progress(f"SAM venv at {venv} is unusable; rebuilding it")
        shutil.rmtree(venv, ignore_errors=True)
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return SamVenv(None, None, f"cannot create {venv.parent}: {exc}"), {}
    progress(f"installing {' '.join(SAM_REQUIREMENTS)} into {venv} (once; kept for later runs)")
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *SAM_REQUIREMENTS]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, check=False, timeout=1200)
        except (OSError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(venv, ignore_errors=True)
            return SamVenv(None, None, f"{' '.join(step[:4])}: {exc}"), {}
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "WARNING" not in line][-6:]
            shutil.rmtree(venv, ignore_errors=True)
            return SamVenv(None, None, f"`{' '.join(step)}` exited {done.returncode}: " + " | ".join(errors)), {}
    have = _sam_versions(python)
    if have is None or have.get("solace-agent-mesh") != SAM_VERSION:
        return SamVenv(None, None, "solace-agent-mesh is not installed after pip install"), {}
    return SamVenv(python, SAM_VERSION, None), have


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    sam: SamVenv
    sam_script: Path
    notes: list[str] = field(default_factory=list)
    sam_stub: str | None = None
    sam_stub_seen: bool = False
    _counter: int = 0

    def fresh_dir(self, label: str) -> Path:
        self._counter += 1
        path = self.work / f"{self._counter:03d}-{label}"
        path.mkdir(parents=True)
        return path

    def run(self, impl: str, spec: dict[str, Any], label: str) -> dict[str, Any]:
        """Run one worker (``flowmas`` or ``sam``) to completion; its result dict (``ok`` False on failure)."""
        return self.wait(self.start(impl, spec, label))

    def start(self, impl: str, spec: dict[str, Any], label: str) -> tuple[subprocess.Popen[bytes], Path]:
        run_dir = self.fresh_dir(f"{impl}-{label}")
        spec = {**spec, "out": str(run_dir / "result.json")}
        spec_path = run_dir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        if impl == "flowmas":
            argv = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
        else:
            assert self.sam.python is not None
            argv = [str(self.sam.python), str(self.sam_script), str(spec_path)]
        with open(run_dir / "log.txt", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=run_dir)
        return proc, run_dir

    def wait(self, started: tuple[subprocess.Popen[bytes], Path]) -> dict[str, Any]:
        proc, run_dir = started
        try:
            proc.wait(timeout=WORKER_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out = run_dir / "result.json"
        if out.exists():
            data: dict[str, Any] = json.loads(out.read_text())
        else:
            tail = (run_dir / "log.txt").read_text(errors="replace")[-600:]
            data = {"ok": False, "error": f"worker exited {proc.returncode} without a result: {tail}"}
        if not data.get("ok"):
            progress(f"  {run_dir.name} FAILED: {data.get('error')}")
        if "stub" in data:
            self.sam_stub_seen = True
            self.sam_stub = self.sam_stub or data["stub"]
        return data


def sam_skip(bench: Bench) -> str | None:
    if bench.args.skip_sam:
        return "--skip-sam was given"
    return bench.sam.note if bench.sam.python is None else None


# ----------------------------------------------------------------------------------------------- measures


@dataclass
class Throughput:
    size: int
    cp: list[float] = field(default_factory=list)
    upload: list[float] = field(default_factory=list)
    download: list[float] = field(default_factory=list)
    flowmas_peak_mb: list[float] = field(default_factory=list)
    sam_upload: list[float] = field(default_factory=list)
    sam_download: list[float] = field(default_factory=list)
    sam_peak_mb: list[float] = field(default_factory=list)
    python_copy: list[float] = field(default_factory=list)
    sha256: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def python_copy(source: Path, target: Path) -> float:
    """The user-space copy floor: ``shutil.copyfileobj`` with 1 MiB chunks (what a streaming copy in Python
    costs before any hashing); seconds."""
    began = time.perf_counter()
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)
    return time.perf_counter() - began


def sha256_pass(source: Path) -> float:
    """One read of ``source`` in 1 MiB chunks through ``hashlib.sha256``: the hashing an upload does; seconds."""
    began = time.perf_counter()
    digest = hashlib.sha256()
    with open(source, "rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    digest.hexdigest()
    return time.perf_counter() - began


def measure_throughput(bench: Bench) -> Throughput:
    size = int(bench.args.size_mb * MB)
    source = bench.work / "large.bin"
    progress(f"throughput: writing {size / MB:.0f} MB of os.urandom to {source}")
    make_random_file(source, size)
    result = Throughput(size)
    sides = ["cp", "floors", "flowmas"] + (["sam"] if sam_skip(bench) is None else [])
    for rep in range(bench.args.reps):
        order = sides[rep % len(sides):] + sides[:rep % len(sides)]  # rotated: no side always writes first
        progress(f"throughput, repetition {rep + 1}/{bench.args.reps} ({', '.join(order)}), "
                 f"load {os.getloadavg()[0]:.2f}")
        for side in order:
            if side in ("cp", "floors"):
                _floors(side, source, bench.work / "copy.bin", result)
            else:
                _roundtrip(bench, side, rep, source, result)
    source.unlink(missing_ok=True)
    return result


def _floors(side: str, source: Path, target: Path, result: Throughput) -> None:
    os.sync()
    if side == "cp":
        began = time.perf_counter()
        done = subprocess.run(["cp", str(source), str(target)], capture_output=True, check=False)
        seconds = time.perf_counter() - began
        if done.returncode == 0 and target.stat().st_size == result.size:
            result.cp.append(seconds)
            progress(f"  cp                 {seconds:7.3f} s  {result.size / MB / seconds:7.0f} MB/s")
        else:
            result.errors.append(f"cp failed ({done.returncode}): {done.stderr[-300:]!r}")
    else:
        result.python_copy.append(python_copy(source, target))
        result.sha256.append(sha256_pass(source))
        progress(f"  copyfileobj 1 MiB  {result.python_copy[-1]:7.3f} s; sha256 of the file {result.sha256[-1]:.3f} s")
    target.unlink(missing_ok=True)


def _roundtrip(bench: Bench, impl: str, rep: int, source: Path, result: Throughput) -> None:
    if impl == "flowmas":
        uploads, downloads, peaks = result.upload, result.download, result.flowmas_peak_mb
    else:
        uploads, downloads, peaks = result.sam_upload, result.sam_download, result.sam_peak_mb
    store = bench.fresh_dir(f"{impl}-store-{rep}")
    dest = bench.work / f"{impl}-download.bin"
    data = bench.run(impl, {"op": "roundtrip", "store": str(store), "src": str(source), "dest": str(dest)},
                     f"roundtrip-{rep}")
    size = result.size
    if data.get("ok") and data.get("dest_size") == size:
        uploads.append(data["upload_s"])
        downloads.append(data["download_s"])
        peaks.append(data["peak_kib"] * KiB / MB)
        progress(f"  {impl:7} upload     {data['upload_s']:7.3f} s  {size / MB / data['upload_s']:7.0f} MB/s")
        progress(f"  {impl:7} download   {data['download_s']:7.3f} s  "
                 f"{size / MB / data['download_s']:7.0f} MB/s (peak RSS {peaks[-1]:.0f} MB)")
    else:
        why = data.get("error") or f"wrong size {data.get('dest_size')}"
        result.errors.append(f"{impl} rep {rep}: {why}")
    dest.unlink(missing_ok=True)
    shutil.rmtree(store, ignore_errors=True)


@dataclass
class CsvResult:
    size: int
    rows: int
    flowmas_s: list[float] = field(default_factory=list)
    flowmas_peak_mb: list[float] = field(default_factory=list)
    flowmas_delta_mb: list[float] = field(default_factory=list)
    sam_s: list[float] = field(default_factory=list)
    sam_peak_mb: list[float] = field(default_factory=list)
    sam_delta_mb: list[float] = field(default_factory=list)
    shapes: dict[str, str | None] = field(default_factory=dict)
    schemas: dict[str, str | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def measure_csv(bench: Bench) -> CsvResult:
    size = int(bench.args.csv_mb * MB)
    source = bench.work / "table.csv"
    progress(f"csv: generating about {size / MB:.0f} MB of CSV at {source}")
    rows = make_csv(source, size)
    result = CsvResult(source.stat().st_size, rows)
    progress(f"csv: {result.size:,} bytes, {rows:,} rows x 8 columns")
    for rep in range(bench.args.reps):
        progress(f"csv, repetition {rep + 1}/{bench.args.reps}, load {os.getloadavg()[0]:.2f}")
        sides = [("flowmas", result.flowmas_s, result.flowmas_peak_mb, result.flowmas_delta_mb)]
        if sam_skip(bench) is None:
            sides.append(("sam", result.sam_s, result.sam_peak_mb, result.sam_delta_mb))
        if rep % 2 == 1:
            sides.reverse()
        for impl, times, peaks, deltas in sides:
            store = bench.fresh_dir(f"{impl}-csv-store-{rep}")
            data = bench.run(impl, {"op": "csv", "store": str(store), "src": str(source)}, f"csv-{rep}")
            if data.get("ok"):
                times.append(data["seconds"])
                peaks.append(data["peak_kib"] * KiB / MB)
                deltas.append((data["peak_kib"] - data["rss_before_kib"]) * KiB / MB)
                result.shapes[impl] = data.get("shape")
                result.schemas[impl] = data.get("schema") or data.get("schema_error")
                progress(f"  {impl:7} {data['seconds']:7.3f} s  peak RSS {peaks[-1]:7.1f} MB "
                         f"(+{deltas[-1]:.1f} MB over {data['rss_before_kib'] * KiB / MB:.1f} MB)  "
                         f"shape {data.get('shape')!r}")
            else:
                result.errors.append(f"{impl} rep {rep}: {data.get('error')}")
            shutil.rmtree(store, ignore_errors=True)
    source.unlink(missing_ok=True)
    return result


@dataclass
class SmallResult:
    flowmas: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    sync: list[float] = field(default_factory=list)
    sam: list[float] = field(default_factory=list)
    fsync: bool | None = None
    metadata_bytes: int | None = None
    errors: list[str] = field(default_factory=list)


def measure_small(bench: Bench) -> SmallResult:
    result = SmallResult()
    progress(f"1 KB uploads: {bench.args.small_n} flowmas and {bench.args.small_n} raw writes, interleaved, "
             f"load {os.getloadavg()[0]:.2f}")
    store, base = bench.fresh_dir("small-store"), bench.fresh_dir("small-raw")
    data = bench.run("flowmas", {"op": "small", "store": str(store), "baseline_root": str(base),
                                 "n": bench.args.small_n}, "small")
    if data.get("ok"):
        result.flowmas, result.baseline = data["latencies"], data["baseline"]
        result.sync = data.get("sync_latencies", [])
        result.fsync, result.metadata_bytes = data.get("fsync"), data.get("metadata_bytes")
        progress(f"  flowmas p50 {percentile(result.flowmas, 50) * 1e6:.0f} us, raw p50 "
                 f"{percentile(result.baseline, 50) * 1e6:.0f} us")
    else:
        result.errors.append(f"flowmas: {data.get('error')}")
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)
    if sam_skip(bench) is None:
        store = bench.fresh_dir("sam-small-store")
        data = bench.run("sam", {"op": "small", "store": str(store), "n": bench.args.small_n,
                                 "warmup": SMALL_WARMUP}, "small")
        if data.get("ok"):
            result.sam = data["latencies"]
            progress(f"  SAM p50 {percentile(result.sam, 50) * 1e6:.0f} us")
        else:
            result.errors.append(f"SAM: {data.get('error')}")
        shutil.rmtree(store, ignore_errors=True)
    return result


@dataclass
class SweepResult:
    files: int
    build_s: float | None = None
    scan_s: list[float] = field(default_factory=list)
    expire_s: list[float] = field(default_factory=list)
    scan_docs: list[int] = field(default_factory=list)
    scan_expired: list[int] = field(default_factory=list)
    expired: list[int | None] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    index_reads: list[dict[str, int]] = field(default_factory=list)
    floor_s: list[float] = field(default_factory=list)
    floor_entries: list[int] = field(default_factory=list)
    cleanup_s: float | None = None
    errors: list[str] = field(default_factory=list)


def measure_sweep(bench: Bench) -> SweepResult:
    files, reps = bench.args.files, bench.args.reps
    result = SweepResult(files)
    store = bench.fresh_dir("sweep-store")
    t0 = time.time()
    workers = max(1, os.cpu_count() or 1)
    progress(f"sweep: building {files:,} files with {workers} processes (FileService.upload_from_buffer, "
             f"100 bytes each; 1 % per repetition uploaded earlier through the service's clock)")
    began = time.perf_counter()
    bounds = [files * w // workers for w in range(workers + 1)]
    started = [bench.start("flowmas", {"op": "build", "store": str(store), "t0": t0, "reps": reps,
                                       "start": bounds[w], "stop": bounds[w + 1]}, f"build-{w}")
               for w in range(workers)]
    built = [bench.wait(s) for s in started]
    result.build_s = time.perf_counter() - began
    if not all(b.get("ok") for b in built):
        result.errors.extend(f"build: {b.get('error')}" for b in built if not b.get("ok"))
        shutil.rmtree(store, ignore_errors=True)
        return result
    progress(f"  built in {result.build_s:.1f} s ({files / result.build_s:,.0f} files/s)")
    progress(f"  sweeping, load {os.getloadavg()[0]:.2f}")
    data = bench.run("flowmas", {"op": "sweep", "store": str(store), "t0": t0, "reps": reps}, "sweep")
    if data.get("ok"):
        for name in ("scan_s", "expire_s", "scan_docs", "scan_expired", "expired", "reports", "index_reads",
                     "floor_s", "floor_entries"):
            setattr(result, name, data[name])
        for rep in range(len(result.scan_s)):
            progress(f"  rep {rep + 1}: full scan {result.scan_s[rep]:.3f} s ({result.scan_docs[rep]:,} documents, "
                     f"{result.scan_expired[rep]:,} expired); expire() {result.expire_s[rep]:.3f} s "
                     f"({result.expired[rep]} expired); unlink floor {result.floor_s[rep]:.3f} s "
                     f"({result.floor_entries[rep]:,} entries)")
    else:
        result.errors.append(f"sweep: {data.get('error')}")
    progress("  removing the store")
    began = time.perf_counter()
    shutil.rmtree(store, ignore_errors=True)
    result.cleanup_s = time.perf_counter() - began
    progress(f"  removed in {result.cleanup_s:.1f} s")
    return result


# ------------------------------------------------------------------------------------------------ summary


def _met(condition: bool | None) -> str:
    return "n/a" if condition is None else ("✓" if condition else "✗")


def _r(value: float | None) -> str:
    return "n/a" if value is None else (f"{value:.2e}" if value < 0.001 else f"{value:.3f}")


def _mbps(size: int, seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{size / MB / seconds:.0f} MB/s ({seconds:.3f} s)"


def _us(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:.0f} us"


def _p50(values: Sequence[float]) -> float | None:
    return percentile(values, 50) if values else None


def summarise(bench: Bench, tp: Throughput | None, csv: CsvResult | None, small: SmallResult | None,
              sweep: SweepResult | None) -> list[Row]:
    rows: list[Row] = []
    skip = sam_skip(bench)
    if tp is not None:
        cp = median(tp.cp)
        for what, values in (("upload_from_file", tp.upload), ("download_to_file", tp.download)):
            fm = median(values)
            r = ratio(cp, fm)
            rows.append(Row(f"{tp.size / MB:.0f} MB {what} throughput (median of {len(values)})", _mbps(tp.size, fm),
                            f"cp {_mbps(tp.size, cp)}", _r(r), ">= 0.8x cp", _met(None if r is None else r >= 0.8)))
        if tp.flowmas_peak_mb:
            rows.append(Row("  same, peak RSS of the process (absolute)", f"{max(tp.flowmas_peak_mb):.0f} MB",
                            f"SAM {max(tp.sam_peak_mb):.0f} MB" if tp.sam_peak_mb else f"SAM: {skip or 'n/a'}",
                            "-", "(info)", "-"))
        for what, values in (("Python copyfileobj, 1 MiB chunks", tp.python_copy),
                             ("sha256 of the file (read + hash)", tp.sha256)):
            if values:
                rows.append(Row(f"  floor: {what}", _mbps(tp.size, median(values)), f"cp {_mbps(tp.size, cp)}",
                                _r(ratio(cp, median(values))), "(info)", "-"))
        for what, values in (("upload_from_file", tp.sam_upload), ("download_to_file", tp.sam_download)):
            if values:
                sm = median(values)
                rows.append(Row(f"  SAM {SAM_VERSION} {what}", f"SAM {_mbps(tp.size, sm)}", f"cp {_mbps(tp.size, cp)}",
                                _r(ratio(cp, sm)), "(info)", "-"))
    if csv is not None:
        fm, sm = median(csv.flowmas_s), median(csv.sam_s)
        r = ratio(sm, fm)
        rows.append(Row(f"{csv.size / MB:.0f} MB CSV upload_from_file, schema+shape (median of {len(csv.flowmas_s)})",
                        "n/a" if fm is None else f"{fm:.3f} s",
                        f"SAM {sm:.3f} s" if sm is not None else f"SAM: skipped ({(skip or 'failed')[:60]})",
                        "n/a" if r is None else f"{r:.1f}x faster", ">= 5x faster",
                        _met(None if r is None else r >= 5)))
        fd, sd = median(csv.flowmas_delta_mb), median(csv.sam_delta_mb)
        rows.append(Row("  same, peak RSS delta over the RSS after imports",
                        "n/a" if fd is None else f"{fd:.1f} MB", f"SAM {sd:.0f} MB" if sd is not None else "SAM n/a",
                        _r(ratio(fd, sd)), f"<= {RSS_TARGET_MB:.0f} MB",
                        _met(None if fd is None else fd <= RSS_TARGET_MB)))
        fp, sp = median(csv.flowmas_peak_mb), median(csv.sam_peak_mb)
        rows.append(Row("  same, peak RSS absolute (ru_maxrss)", "n/a" if fp is None else f"{fp:.1f} MB",
                        f"SAM {sp:.0f} MB" if sp is not None else "SAM n/a", _r(ratio(fp, sp)), "(info)", "-"))
    if small is not None:
        fm, bl = _p50(small.flowmas), _p50(small.baseline)
        r = ratio(fm, bl)
        rows.append(Row(f"1 KB upload_from_buffer p50 ({len(small.flowmas)} uploads)", _us(fm),
                        f"raw data+meta write {_us(bl)}", _r(r), "<= 1.5x", _met(None if r is None else r <= 1.5)))
        if small.flowmas:
            rows.append(Row("  same, p99", _us(percentile(small.flowmas, 99)),
                            f"raw {_us(percentile(small.baseline, 99))}", "-", "(info)", "-"))
        if small.sync:
            rows.append(Row(f"  upload_from_buffer_sync p50 ({len(small.sync)})", _us(_p50(small.sync)),
                            f"raw {_us(bl)}", _r(ratio(_p50(small.sync), bl)), "(info)", "-"))
        if small.sam:
            rows.append(Row(f"  SAM {SAM_VERSION} upload_from_buffer p50 ({len(small.sam)})",
                            f"SAM {_us(_p50(small.sam))}", f"raw {_us(bl)}", _r(ratio(_p50(small.sam), bl)),
                            "(info)", "-"))
    if sweep is not None:
        fm, sc = median(sweep.expire_s), median(sweep.scan_s)
        r = ratio(fm, sc)
        rows.append(Row(f"expire() over {sweep.files:,} files, 1 % expired (median of {len(sweep.expire_s)})",
                        "n/a" if fm is None else f"{fm * 1000:.1f} ms",
                        "n/a" if sc is None else f"full scan {sc * 1000:.0f} ms", _r(r), "<= 0.1x",
                        _met(None if r is None else r <= 0.1)))
        fl = median(sweep.floor_s)
        if fl is not None and fm is not None and sc is not None:
            entries = median([float(n) for n in sweep.floor_entries]) or 0
            rows.append(Row(f"  same, os.unlink of the {entries:,.0f} entries expire() removes (other files)",
                            f"expire {fm * 1000:.1f} ms", f"unlinks alone {fl * 1000:.1f} ms", _r(ratio(fm, fl)),
                            "(info)", "-"))
            rows.append(Row("  same, vs a full scan that also unlinks them (a SAM-like sweep)", f"{fm * 1000:.1f} ms",
                            f"scan + unlinks {(sc + fl) * 1000:.0f} ms", _r(ratio(fm, sc + fl)), "(info)", "-"))
        if sweep.build_s:
            rows.append(Row(f"  building the {sweep.files:,} files ({os.cpu_count()} processes)",
                            f"{sweep.build_s:.1f} s ({sweep.files / sweep.build_s:,.0f} files/s)", "-", "-", "(info)",
                            "-"))
    return rows


def _list(values: Sequence[float | int | None], fmt: str = "{:.3f}") -> str:
    return "[" + ", ".join("-" if v is None else fmt.format(v) for v in values) + "]"


def print_raw(tp: Throughput | None, csv: CsvResult | None, small: SmallResult | None,
              sweep: SweepResult | None) -> None:
    if tp is not None:
        print(f"throughput, each repetition (s): cp {_list(tp.cp)}; flowmas upload {_list(tp.upload)}, download "
              f"{_list(tp.download)}; SAM upload {_list(tp.sam_upload)}, download {_list(tp.sam_download)}")
        print(f"  floors (s): copyfileobj {_list(tp.python_copy)}, sha256 {_list(tp.sha256)}")
        print(f"  peak RSS (MB): flowmas {_list(tp.flowmas_peak_mb, '{:.0f}')}, SAM {_list(tp.sam_peak_mb, '{:.0f}')}")
        for error in tp.errors:
            print(f"  error: {error}")
    if csv is not None:
        print(f"csv ({csv.size:,} bytes, {csv.rows:,} rows): flowmas s {_list(csv.flowmas_s)}, delta MB "
              f"{_list(csv.flowmas_delta_mb, '{:.1f}')}, peak MB {_list(csv.flowmas_peak_mb, '{:.1f}')}; SAM s "
              f"{_list(csv.sam_s)}, delta MB {_list(csv.sam_delta_mb, '{:.0f}')}, peak MB "
              f"{_list(csv.sam_peak_mb, '{:.0f}')}")
        for impl, shape in csv.shapes.items():
            schema = " ".join((csv.schemas.get(impl) or "").split())
            print(f"  {impl} shape {shape!r}; schema {schema[:160]!r}")
        for error in csv.errors:
            print(f"  error: {error}")
    if small is not None:
        if small.flowmas:
            print(f"1 KB: flowmas p50/p95/p99 {_us(percentile(small.flowmas, 50))}/"
                  f"{_us(percentile(small.flowmas, 95))}/{_us(percentile(small.flowmas, 99))}; raw "
                  f"{_us(percentile(small.baseline, 50))}/{_us(percentile(small.baseline, 95))}/"
                  f"{_us(percentile(small.baseline, 99))}; raw baseline fsyncs: {'yes' if small.fsync else 'none'} "
                  f"(as the flowmas store); metadata dict {small.metadata_bytes} bytes of JSON")
        if small.sam:
            print(f"  SAM p50/p95/p99 {_us(percentile(small.sam, 50))}/{_us(percentile(small.sam, 95))}/"
                  f"{_us(percentile(small.sam, 99))}")
        for error in small.errors:
            print(f"  error: {error}")
    if sweep is not None:
        print(f"sweep, each repetition: full scan s {_list(sweep.scan_s)} ({_list(sweep.scan_docs, '{:d}')} documents, "
              f"{_list(sweep.scan_expired, '{:d}')} expired); expire() s {_list(sweep.expire_s, '{:.4f}')} "
              f"(removed {_list(sweep.expired, '{:d}')}); unlink floor s {_list(sweep.floor_s, '{:.4f}')} "
              f"({_list(sweep.floor_entries, '{:d}')} entries); store built in {_list([sweep.build_s])} s, "
              f"removed in {_list([sweep.cleanup_s], '{:.1f}')} s")
        for rep, (report, reads) in enumerate(zip(sweep.reports, sweep.index_reads, strict=False)):
            print(f"  rep {rep + 1}: {report}; index reads {reads}")
        for error in sweep.errors:
            print(f"  error: {error}")


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 32 MB, 8 MB CSV, 500 small uploads, 5,000 files, 1 repetition "
                             "(explicit size options still win)")
    parser.add_argument("--only", default=",".join(MEASURES),
                        help=f"comma-separated measures to run (default all: {','.join(MEASURES)})")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; --quick 1)")
    parser.add_argument("--size-mb", type=float, default=None, help="throughput file size, MB (default 500)")
    parser.add_argument("--csv-mb", type=float, default=None, help="CSV size, MB (default 200)")
    parser.add_argument("--small-n", type=int, default=None, help="timed 1 KB uploads per side (default 2000)")
    parser.add_argument("--files", type=int, default=None, help="files in the sweep's store (default 100000)")
    parser.add_argument("--work-parent", type=Path, default=Path("/tmp"),
                        help="where the work dir is made; must be on disk (default /tmp)")
    parser.add_argument("--sam-venv", type=Path, default=DEFAULT_SAM_VENV,
                        help=f"venv for solace-agent-mesh {SAM_VERSION} (default {DEFAULT_SAM_VENV})")
    parser.add_argument("--skip-sam", action="store_true", help="do not install or run Solace Agent Mesh")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"reps": (1, 3), "size_mb": (32.0, 500.0), "csv_mb": (8.0, 200.0), "small_n": (500, 2000),
                "files": (5000, 100_000)}
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.reps < 1 or args.reps > 20 or args.size_mb <= 0 or args.csv_mb <= 0 or args.small_n < SMALL_BLOCK:
        parser.error(f"--reps must be 1..20, sizes positive, --small-n >= {SMALL_BLOCK}")
    if args.files < 100:
        parser.error("--files must be at least 100 (1 % of them expire per repetition)")
    args.only = {name.strip() for name in args.only.split(",") if name.strip()}
    if not args.only or not args.only <= set(MEASURES):
        parser.error(f"--only takes a comma-separated subset of {', '.join(MEASURES)}")
    return args


def filesystem_of(path: Path) -> str:
    """``device fstype`` of the mount holding ``path`` (from ``df``), for the output."""
    done = subprocess.run(["df", "--output=source,fstype,avail", str(path)], capture_output=True, text=True,
                          check=False)
    lines = done.stdout.strip().splitlines()
    return " ".join(lines[-1].split()) if done.returncode == 0 and len(lines) > 1 else "unknown"


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "--worker":
        flowmas_worker(json.loads(Path(argv[1]).read_text()))
        return 0
    args = parse_args(argv)
    sam = SamVenv(None, None, "--skip-sam was given")
    sam_versions: dict[str, str] = {}
    if not args.skip_sam and args.only & {"throughput", "csv", "small"}:
        sam, sam_versions = ensure_sam(args.sam_venv.expanduser())
        if sam.python is None:
            progress(f"SAM baseline SKIPPED: {sam.note}")
        else:
            progress(f"SAM {SAM_VERSION}: {sam.python} ({', '.join(f'{k} {v}' for k, v in sam_versions.items())})")
    load_before = os.getloadavg()
    args.work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="flowmas-bench-files-", dir=args.work_parent))
    fs = filesystem_of(work)
    progress(f"work dir: {work} on {fs}; {os.cpu_count()} CPUs, load average {load_before[0]:.2f}")
    sam_script = work / "sam_runner.py"
    sam_script.write_text(SAM_RUNNER)
    bench = Bench(args, work, sam, sam_script)
    tp: Throughput | None = None
    csv: CsvResult | None = None
    small: SmallResult | None = None
    sweep: SweepResult | None = None
    try:
        if "throughput" in args.only:
            tp = measure_throughput(bench)
        if "csv" in args.only:
            csv = measure_csv(bench)
        if "small" in args.only:
            small = measure_small(bench)
        if "sweep" in args.only:
            sweep = measure_sweep(bench)
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    finally:
        if args.keep:
            progress(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = summarise(bench, tp, csv, small, sweep)
    load_after = os.getloadavg()
    print()
    print(f"flowmas file service benchmark ({', '.join(m for m in MEASURES if m in args.only)}), "
          f"{args.reps} repetition(s){' (--quick)' if args.quick else ''}; work dir on {fs}; "
          f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} -> {load_after[0]:.2f}; "
          f"{time.monotonic() - _STARTED:.0f} s in all")
    print_table(rows)
    print_raw(tp, csv, small, sweep)
    if sam.python is not None and not args.skip_sam:
        stub = (f"stub used: {bench.sam_stub}" if bench.sam_stub else
                "no stub: SAM and its dependencies imported as installed" if bench.sam_stub_seen else "not run")
        print(f"SAM venv: {', '.join(f'{k} {v}' for k, v in sam_versions.items())}; {stub}")
    else:
        print(f"note: SAM baselines skipped: {sam_skip(bench)}")
    for note in bench.notes:
        print(f"note: {note}")
    if args.json is not None:
        figures = {
            "config": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                       for k, v in vars(args).items()},
            "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform(), "filesystem": fs,
                            "load_average_before": load_before, "load_average_after": load_after,
                            "sam_versions": sam_versions, "sam_stub": bench.sam_stub},
            "throughput": asdict(tp) if tp is not None else None,
            "csv": asdict(csv) if csv is not None else None,
            "small": asdict(small) if small is not None else None,
            "sweep": asdict(sweep) if sweep is not None else None,
            "summary": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        progress(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
