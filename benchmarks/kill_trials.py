"""Kill `mindscope train` with SIGKILL at random moments of a run's whole life; resume; compare.

Each trial starts a small run in a subprocess and kills it at a seeded random point of its
life, chosen by progress rather than by the clock (so a busy machine does not skew it): as
soon as its staging folder appears (creation), after a random share of the metric rows an
uninterrupted run writes (training), or once the final checkpoint is recorded (the final
save, before curves.png). Then it runs `mindscope train --resume` (or starts over if no run
exists yet) until the run is complete. A trial counts as identical when the resumed run has the same metric
rows, the same weight histograms at every recorded step, bit-identical snapshots of every
epoch, curves.png, and no leftovers (temp files, staging folders) beside or inside it.

    python benchmarks/kill_trials.py [--trials 30] [--seed 0]

Prints one line per trial and a summary: trials, kills that left a run, resumes, identical.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mindscope.run import load_run

ARGS = ["--epochs", "3", "--width", "8", "--train-limit", "128", "--test-limit", "32", "--batch-size", "32",
        "--log-every", "1", "--histogram-every", "2"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def mindscope(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mindscope", *args], capture_output=True, text=True, env=ENV)


def record(run_dir: Path) -> dict:
    run = load_run(run_dir)
    metrics = [(m["step"], m["epoch"], m["split"], m["name"], m["scope"], m["value"]) for m in run.metrics]
    histograms = [(h["step"], h["tensor"], h["counts"].tobytes(), h["edges"].tobytes()) for h in run.histograms()]
    weights = {e: run.state_dict_at(e) for e in run.epochs}
    return {"metrics": metrics, "histograms": histograms, "weights": weights, "epochs": run.epochs}


def same(a: dict, b: dict) -> list[str]:
    diffs = [k for k in ("metrics", "histograms", "epochs") if a[k] != b[k]]
    if a["epochs"] == b["epochs"]:
        for e in a["epochs"]:
            x, y = a["weights"][e], b["weights"][e]
            if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
                diffs.append(f"weights of epoch {e}")
    return diffs


def leftovers(run_dir: Path) -> list[str]:
    found = [p.name for p in run_dir.parent.glob(f".{run_dir.name}.*.partial")]
    for folder in (run_dir, run_dir / "snapshots", run_dir / "state"):
        found += [p.name for p in folder.glob(".*.tmp")]
    return found


def progress(out: Path) -> tuple[bool, int, int]:
    """(staging or run exists, metric rows written, checkpoints recorded), read as a reader would."""
    import sqlite3

    staged = out.exists() or any(out.parent.glob(f".{out.name}.*.partial"))
    if not (out / "metrics.sqlite").is_file():
        return staged, 0, 0
    try:
        with sqlite3.connect(f"file:{out / 'metrics.sqlite'}?mode=ro", uri=True, timeout=0.05) as db:
            rows = db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
            checkpoints = db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
    except sqlite3.Error:
        return staged, 0, 0
    return staged, rows, checkpoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    rng = np.random.default_rng(options.seed)
    with tempfile.TemporaryDirectory(prefix="mindscope-kills-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        done = mindscope("train", *ARGS, "--out", str(root / "reference"))
        life = time.perf_counter() - began
        assert done.returncode == 0, done.stderr
        reference = record(root / "reference")
        total_rows = len(reference["metrics"])
        total_checkpoints = len(reference["epochs"])
        print(f"uninterrupted run: {life:.1f} s, {total_rows} metric rows, {total_checkpoints} checkpoints")
        left_a_run = resumes = identical = 0
        for trial in range(options.trials):
            out = root / f"trial{trial:02d}"
            kind = rng.choice(["creation", "training", "final save"], p=[0.15, 0.7, 0.15])
            target = int(rng.integers(1, total_rows)) if kind == "training" else 0
            process = subprocess.Popen(
                [sys.executable, "-m", "mindscope", "train", *ARGS, "--out", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
            )  # fmt: skip
            deadline = time.monotonic() + 10 * life + 60
            while process.poll() is None and time.monotonic() < deadline:
                staged, rows, checkpoints = progress(out)
                if (
                    (kind == "creation" and staged)
                    or (kind == "training" and rows >= target)
                    or (kind == "final save" and checkpoints >= total_checkpoints)
                ):
                    break
                time.sleep(0.005)
            finished_first = process.poll() is not None
            at = f"{kind}" + (f" after {progress(out)[1]} of {total_rows} rows" if kind == "training" else "")
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            existed = out.exists()
            left_a_run += existed
            if existed:
                result = mindscope("train", "--resume", str(out))
                resumes += 1
                status = "resumed" if result.returncode == 0 else f"resume said: {result.stderr.strip()}"
            else:
                result = mindscope("train", *ARGS, "--out", str(out))
                status = "no run yet; trained anew"
            diffs = same(record(out), reference) if out.exists() else ["no run"]
            if not (out / "curves.png").is_file():
                diffs.append("curves.png missing")
            diffs += [f"leftover {name}" for name in leftovers(out)]
            identical += not diffs
            verdict = "identical" if not diffs else "DIFFERS: " + ", ".join(diffs)
            note = " (had already finished)" if finished_first else ""
            print(f"trial {trial:2d}: killed during {at}{note}; {status}; {verdict}")
        print(
            f"trials {options.trials}, kills that left a run {left_a_run}, resumes {resumes}, "
            f"runs identical to the uninterrupted one {identical} of {options.trials}"
        )
        if identical != options.trials:
            sys.exit(1)


if __name__ == "__main__":
    main()
