"""The Ray engine, on a local two-actor cluster, gives the local engine's results image for image.

Ray is started small (2 CPUs, a 100 MB object store, no dashboard, no auth token written to
HOME), under a watchdog that interrupts a hung test, and shut down in `finally`; the test then
checks that none of the processes it started is left.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from mindscope.scan import LocalEngine, RayEngine, ScanOptions, ScanSource, open_scan, scan

pytest.importorskip("pyarrow")
TIMEOUT_S = 300
OPTIONS = ScanOptions(methods=("gradient", "integrated"), tolerance=0.05, max_steps=64, shard_size=16)


@contextmanager
def watchdog(seconds: int):
    """Raise TimeoutError in the test if it runs past `seconds` (pytest-timeout is not installed)."""

    def expire(_signum, _frame):
        raise TimeoutError(f"the Ray test ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def ray_processes() -> set[int]:
    """Pids of Ray's processes on this machine (raylet, GCS, workers, agents)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in command for mark in ("raylet", "gcs_server", "ray::", "ray/_private", "ray/dashboard")):
            found.add(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own settings, read on its first use
def test_the_ray_engine_equals_the_local_engine(tiny_run, tmp_path, monkeypatch, one_thread):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # else Ray 2.5x writes ~/.ray/auth_token on first start
    source = ScanSource(f"run:{tiny_run}")
    local = scan(source, tmp_path / "local", options=OPTIONS, engine=LocalEngine(1))
    before = ray_processes()
    with watchdog(TIMEOUT_S):
        try:
            ray.init(num_cpus=2, object_store_memory=100 << 20, include_dashboard=False, log_to_driver=False)
            on_ray = scan(source, tmp_path / "ray", options=OPTIONS, engine=RayEngine(actors=2))
        finally:
            ray.shutdown()
    assert (local.computed, on_ray.computed) == (4, 4)
    a, b = open_scan(tmp_path / "local"), open_scan(tmp_path / "ray")
    assert a.table().drop(columns="seconds").equals(b.table().drop(columns="seconds"))
    for method in OPTIONS.methods:
        assert torch.equal(a.maps(range(64), method), b.maps(range(64), method))
        assert torch.equal(a.class_maps(method).mean_abs, b.class_maps(method).mean_abs)
    assert not (home / ".ray" / "auth_token").exists()
    deadline = time.monotonic() + 30
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)  # shutdown signals them; give them a moment to exit
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left if Path(f"/proc/{p}").exists()]
