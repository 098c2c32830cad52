"""One download per asset, however many coroutines, threads or processes ask; crashes leave no debris."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from flowmas.errors import LockTimeoutError
from tests.servers.http_files import slow

DATA = os.urandom(8 * 2**20)
DIGEST = hashlib.sha256(DATA).hexdigest()
REPO = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from flowmas import AssetManager, load_project
    project_file, cache_dir, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    manager = AssetManager(load_project(project_file), cache_dir=cache_dir)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    result = manager.download("model")
    print(json.dumps({"path": str(result.path), "fetched": result.fetched}), flush=True)
""")


def asset(url: str, **extra: object) -> dict:
    return {"name": "model", "source": {"type": "http", "url": url}, "checksum": f"sha256:{DIGEST}",
            "progress_report": False, **extra}


def spawn(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WORKER, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


async def test_concurrent_coroutines_share_one_download(http_server, make_manager):
    http_server.add("/model.bin", DATA)
    http_server.script("/model.bin", slow(32 * 2**20))
    manager = make_manager([asset(http_server.url_for("/model.bin"))])

    paths = await asyncio.gather(*(manager.get_asset_path("model") for _ in range(8)))

    assert len(set(paths)) == 1 and paths[0].read_bytes() == DATA
    assert len(http_server.requests_for("/model.bin")) == 1


def test_concurrent_threads_share_one_download(http_server, make_manager):
    http_server.add("/model.bin", DATA)
    http_server.script("/model.bin", slow(32 * 2**20))
    manager = make_manager([asset(http_server.url_for("/model.bin"))])
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(manager.get_asset_path_sync("model")))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and len(set(results)) == 1
    assert len(http_server.requests_for("/model.bin")) == 1


def test_four_processes_cause_one_get(http_server, make_manager, tmp_path, cache_dir):
    http_server.add("/model.bin", DATA)
    http_server.script("/model.bin", slow(32 * 2**20))
    make_manager([asset(http_server.url_for("/model.bin"))])
    go = tmp_path / "go"
    workers = [spawn([str(tmp_path / "flowmas.yaml"), str(cache_dir), str(go)]) for _ in range(4)]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
    go.touch()
    outputs = [json.loads(worker.communicate(timeout=60)[0]) for worker in workers]

    assert all(worker.returncode == 0 for worker in workers)
    assert len(http_server.requests_for("/model.bin")) == 1
    assert sorted(o["fetched"] for o in outputs) == [False, False, False, True]
    assert len({o["path"] for o in outputs}) == 1
    assert Path(outputs[0]["path"]).read_bytes() == DATA


def test_sigkill_mid_download_leaves_a_consistent_cache_and_the_next_call_resumes(
    http_server, make_manager, tmp_path, cache_dir
):
    http_server.add("/model.bin", DATA)
    http_server.script("/model.bin", slow(2 * 2**20, chunk=64 * 1024))
    manager = make_manager([asset(http_server.url_for("/model.bin"))])
    part = manager.cache.part_path(manager.asset("model"))
    go = tmp_path / "go"
    go.touch()
    worker = spawn([str(tmp_path / "flowmas.yaml"), str(cache_dir), str(go)])
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size >= 2 * 2**20):
        assert time.monotonic() < deadline and worker.poll() is None, "the download never got going"
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    assert manager.status("model").status == "not cached"
    assert not manager.cache.entry_dir(manager.asset("model")).exists()
    assert sorted(p.name for p in part.parent.iterdir()) == [part.name, part.name + ".json"]
    kept = part.stat().st_size

    path = manager.download("model").path

    assert path.read_bytes() == DATA
    resume = http_server.requests_for("/model.bin")[-1]
    assert resume.status == 206 and resume.range == f"bytes={kept}-"
    assert not part.exists()


def test_waiting_for_another_process_times_out_with_a_clear_error(http_server, make_manager, tmp_path, caplog):
    http_server.add("/model.bin", DATA)
    manager = make_manager([asset(http_server.url_for("/model.bin"))], lock_timeout_seconds=1.5,
                           lock_log_interval_seconds=0.5)
    lock_path = manager.cache.lock_path(manager.asset("model").key)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import filelock, sys, time; l = filelock.FileLock(sys.argv[1]); l.acquire(); "
         "print('held', flush=True); time.sleep(60)"), str(lock_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        caplog.set_level(logging.INFO, logger="flowmas.assets")
        with pytest.raises(LockTimeoutError, match="FLOWMAS_LOCK_TIMEOUT_SECONDS") as info:
            manager.download("model")
        assert str(lock_path) in str(info.value)
        assert "Waiting for model/model/latest" in caplog.text
        assert http_server.requests == []
    finally:
        holder.kill()
        holder.wait()
    assert manager.download("model").fetched  # the lock died with its holder
