"""The Ray engine, on a local two-actor cluster, gives the local engine's results image for image.

Ray is started small (2 CPUs, a 100 MB object store, no dashboard, no auth token written to
HOME), under a watchdog that interrupts a hung test, and shut down in `finally`; the test then
checks that none of the processes it started is left.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mindscope.scan import LocalEngine, RayEngine, ScanOptions, ScanSource, open_scan, scan

pytest.importorskip("pyarrow")
TIMEOUT_S = 300
OPTIONS = ScanOptions(methods=("gradient", "integrated"), tolerance=0.05, max_steps=64, shard_size=16)
CARD = {"input_shape": [3, 8, 8], "pixel_range": [0, 255], "mean": [120.0, 110.0, 100.0], "std": [60.0, 50.0, 70.0],
        "classes": ["cat", "ant", "bee"]}  # fmt: skip


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


def outside_model(net: torch.nn.Module, folder: Path) -> ScanSource:
    """`net` saved as TorchScript, with 12 PNGs in 3 class folders and its card as fields, as the CLI's flags give it.

    The card says the net was trained on 0..255 pixels with a mean and std: a worker that
    opened the model without it would feed it 0..1 pixels and see other outputs.
    """
    torch.jit.trace(net, torch.zeros(1, 3, 8, 8)).save(str(folder / "net.pt"))
    rng = np.random.default_rng(5)
    for name in CARD["classes"]:
        (folder / name).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")
    return ScanSource(f"torch:{folder / 'net.pt'}", data=f"folder:{folder}", card=CARD)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own settings, read on its first use
def test_the_ray_engine_equals_the_local_engine(tiny_run, small_cnn, tmp_path, monkeypatch, one_thread):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # else Ray 2.5x writes ~/.ray/auth_token on first start
    source = ScanSource(f"run:{tiny_run}")
    local = scan(source, tmp_path / "local", options=OPTIONS, engine=LocalEngine(1))
    (tmp_path / "outside").mkdir()
    outside, small = outside_model(small_cnn, tmp_path / "outside"), replace(OPTIONS, shard_size=4)
    scan(outside, tmp_path / "outside-local", options=small, engine=LocalEngine(1))
    before = ray_processes()
    with watchdog(TIMEOUT_S):
        try:
            ray.init(num_cpus=2, object_store_memory=100 << 20, include_dashboard=False, log_to_driver=False)
            on_ray = scan(source, tmp_path / "ray", options=OPTIONS, engine=RayEngine(actors=2))
            scan(outside, tmp_path / "outside-ray", options=small, engine=RayEngine(actors=2))
        finally:
            ray.shutdown()
    assert (local.computed, on_ray.computed) == (4, 4)
    for mine, theirs, images in (("local", "ray", 64), ("outside-local", "outside-ray", 12)):
        a, b = open_scan(tmp_path / mine), open_scan(tmp_path / theirs)
        assert a.table().drop(columns="seconds").equals(b.table().drop(columns="seconds"))
        for method in OPTIONS.methods:
            assert torch.equal(a.maps(range(images), method), b.maps(range(images), method))
            assert torch.equal(a.class_maps(method).mean_abs, b.class_maps(method).mean_abs)
    # the actors used the card: without it the model sees 0..1 pixels and scores otherwise
    scan(replace(outside, card=None), tmp_path / "no-card", options=small, engine=LocalEngine(1))
    given = open_scan(tmp_path / "outside-ray").table()["output"]
    assert not np.allclose(given, open_scan(tmp_path / "no-card").table()["output"])
    assert not (home / ".ray" / "auth_token").exists()
    deadline = time.monotonic() + 30
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)  # shutdown signals them; give them a moment to exit
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left if Path(f"/proc/{p}").exists()]
