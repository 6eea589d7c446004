"""A scan killed with SIGKILL at random moments, then run again, holds every image exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mindscope.scan import ScanOptions, ScanSource, open_scan, scan
from mindscope.scan.files import leftovers
from mindscope.scan.merge import SUMMARY

pytest.importorskip("pyarrow")

ARGS = ["--methods", "gradient,integrated", "--tolerance", "0.05", "--max-steps", "64", "--shard-size", "8"]
OPTIONS = ScanOptions(methods=("gradient", "integrated"), tolerance=0.05, max_steps=64, shard_size=8)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
KILLS = 4
DEADLINE_S = 180


def shards_done(out: Path) -> int:
    return len(list((out / "shards").glob("*.parquet"))) if (out / "shards").is_dir() else 0


def kill_at(out: Path, run: str, done: int, extra_s: float) -> int | None:
    """Start the scan; SIGKILL it `extra_s` after `done` shards are written; return the shards done then.

    None: the scan finished (or failed) before the kill.
    """
    process = subprocess.Popen([sys.executable, "-m", "mindscope", "scan", run, "--out", str(out), *ARGS],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + DEADLINE_S
    try:
        while process.poll() is None and shards_done(out) < done and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(extra_s)
        if process.poll() is not None:
            assert process.returncode == 0, process.stderr.read()
            return None
        process.send_signal(signal.SIGKILL)
        return shards_done(out)
    finally:
        process.wait(timeout=60)


@pytest.mark.slow
def test_a_scan_killed_at_random_moments_finishes_with_every_image_once(tiny_run, tmp_path, one_thread):
    out = tmp_path / "scan"
    rng = random.Random(15)
    killed_at = []
    for _ in range(KILLS):  # bounded: each start is killed once, or finishes
        before = shards_done(out)
        killed_at.append(kill_at(out, str(tiny_run), rng.randint(before + 1, 8), rng.uniform(0.0, 0.3)))
    assert any(k is not None and 0 < k < 8 for k in killed_at), killed_at  # killed in the middle at least once
    # What a kill in the middle of a write leaves (rare at random moments, so made here too): temp files
    # of a shard and of the merged table, unlocked since their writer is dead.
    (out / "shards" / ".000003.parquet.k1ll3d.tmp").write_bytes(b"PAR1 half a table")
    (out / ".images.parquet.k1ll3d.tmp").write_bytes(b"PAR1 half a table")
    finished = subprocess.run([sys.executable, "-m", "mindscope", "scan", str(tiny_run), "--out", str(out), *ARGS],
                              env=ENV, capture_output=True, text=True, timeout=DEADLINE_S)  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert (out / SUMMARY).exists()
    assert leftovers([out, out / "shards"]) == []  # no partial file left behind
    table = open_scan(out).table()
    for method in ("gradient", "integrated"):
        assert sorted(table[table["method"] == method]["index"]) == list(range(64))  # every image exactly once
    whole = tmp_path / "whole"
    scan(ScanSource(f"run:{Path(tiny_run).resolve()}"), whole, options=OPTIONS)
    reference = open_scan(whole).table().drop(columns="seconds")
    assert table.drop(columns="seconds").equals(reference)
