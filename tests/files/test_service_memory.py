"""A 200 MB CSV upload in bounded memory: sha256, size and schema inference in the same single pass.

SAM 0.x peaked at 12.6x the file (2.5 GB for 200 MB, the anchor §3). Here the upload runs in a child process
(so nothing of pytest's own memory counts). After warming up, the child resets its peak-RSS counter
(``/proc/self/clear_refs``, Linux) and notes its current RSS; the peak after the upload minus that is the
growth, which must stay far below the file's size. Where the counter cannot be reset, ``ru_maxrss`` (the
peak since start) minus the current RSS before the upload is used: an over-estimate, never an under-one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

MiB = 2**20
FILE_BYTES = 200 * MiB
MAX_GROWTH = 64 * MiB

CHILD = r"""
import hashlib, json, resource, sys, time
from flowmas.files import FileService
from flowmas.files.storage import LocalStorageManager

source, store = sys.argv[1], sys.argv[2]
service = FileService(LocalStorageManager(store))
warm = service.upload_from_buffer_sync(b"a,b\n1,2\n" * 1000, "warm.csv", "s")  # imports, threads, loop
service.download_to_buffer_sync(warm["url"], "s")
def status(field):
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)

try:
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")  # reset VmHWM (the peak) to the current RSS
    reset = True
except OSError:
    reset = False
before = status("VmRSS")
started = time.monotonic()
md = service.upload_from_file_sync(source, "s")
seconds = time.monotonic() - started
after = status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
digest = hashlib.sha256()
for chunk in service.open_stream_sync(md["url"], "s"):
    digest.update(chunk)
service.close_sync()
print(json.dumps({"reset": reset, "before": before, "after": after, "seconds": seconds, "md": md,
                  "read_back": digest.hexdigest()}))
"""


def write_csv(path: Path) -> tuple[int, str]:
    """``FILE_BYTES`` of CSV (8 columns) written block by block; returns (rows, sha256)."""
    import hashlib

    rows = [f"{i},{i * 7 % 1000},{i % 13},{i % 97}.5,name{i % 50},city{i % 9},{'true' if i % 2 else 'false'},"
            f"note number {i}\n" for i in range(20_000)]
    block = "".join(rows).encode()
    header = b"id,user_id,qty,price,name,city,flag,note\n"
    digest = hashlib.sha256(header)
    count = 0
    with path.open("wb") as file:
        file.write(header)
        written = len(header)
        while written + len(block) <= FILE_BYTES:
            file.write(block)
            digest.update(block)
            written += len(block)
            count += len(rows)
    return count, digest.hexdigest()


def test_a_200_mb_csv_uploads_in_bounded_memory(tmp_path: Path) -> None:
    source = tmp_path / "big.csv"
    rows, sha256 = write_csv(source)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", CHILD, str(source), str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    growth = result["after"] - result["before"]
    md = result["md"]
    print(f"upload {result['seconds']:.1f} s, peak RSS growth {growth / MiB:.1f} MiB (reset {result['reset']}) "
          f"(total {time.monotonic() - started:.1f} s)")
    assert growth < MAX_GROWTH, f"peak RSS grew by {growth / MiB:.1f} MiB for a {FILE_BYTES / MiB:.0f} MiB CSV"
    assert md["size"] == source.stat().st_size and md["sha256"] == sha256 == result["read_back"]
    assert md["shape"] == f"{rows} rows x 8 columns", md["shape"]
    assert "flag:\n      type: boolean" in md["schema-yaml"] and "price:\n      type: number" in md["schema-yaml"]
