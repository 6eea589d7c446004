"""Run every benchmark in one process and print one table of ratios, plus the demo's wall time.

    python benchmarks/run.py [--quick] [--skip-demo]

Each `bench_*.py` here has `main(argv) -> {headline: value}`; this script calls them in
turn with the arguments below, then times `mindscope demo` end to end in a fresh
folder (a subprocess, as a user would run it), and prints the table with the date,
the machine and the load, ready to paste into the README.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_activations  # noqa: E402
import bench_attribution  # noqa: E402
import bench_builtin  # noqa: E402
import bench_methods  # noqa: E402
import bench_recording  # noqa: E402


def demo_seconds() -> float:
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "mindscope", "demo", "--out", str(Path(folder) / "demo")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - began


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument(
        "--run", default=None, help="one run for the attribution benchmark (default: its cached demo, fashion, long)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    suites = {
        "recording (vs TensorBoard add_histogram)": (
            bench_recording.main,
            ["--repeats", "5" if quick else "15", "--widths", "8", "32", "128", *([] if quick else ["512"])],
        ),
        "activations (vs plain forward)": (
            bench_activations.main,
            ["--repeats", "5" if quick else "15", "--width", "32" if quick else "128"],
        ),
        "attribution (vs raw gradients, Captum)": (
            bench_attribution.main,
            (["--run", args.run] if args.run else ["--runs", "demo" if quick else "demo,fashion-mnist,long,light"])
            + ["--repeats", "1" if quick else "3"],
        ),
        "Grad-CAM, layer IG, occlusion (vs Captum)": (
            bench_methods.main,
            (["--run", args.run] if args.run else []) + ["--repeats", "3" if quick else "5"],
        ),
        "built-in dataset (vs linear classifier)": (
            bench_builtin.main,
            ["--train", "4000" if quick else "8000", "--epochs", "3" if quick else "4"],
        ),
    }
    rows: list[tuple[str, str, float]] = []
    for suite, (run, suite_args) in suites.items():
        print(f"\n=== {suite}: {' '.join(suite_args)}", flush=True)
        for name, value in run(suite_args).items():
            rows.append((suite, name, value))
    if not args.skip_demo:
        print("\n=== mindscope demo, end to end", flush=True)
        rows.append(("demo", "mindscope demo wall time (s)", demo_seconds()))

    load = os.getloadavg()
    print(
        f"\n{datetime.date.today()} · {platform.machine()} · {os.cpu_count()} CPUs · torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) · load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}\n"
    )
    print("| suite | figure | value |\n| --- | --- | ---: |")
    for suite, name, value in rows:
        print(f"| {suite} | {name} | {value:.3g} |")


if __name__ == "__main__":
    main()
