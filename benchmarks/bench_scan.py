"""Benchmark `mindscope scan`: images/s per engine, peak memory as the data set grows, 1M images projected.

    python benchmarks/bench_scan.py [--run RUN_DIR] [--images 384] [--skip-ray] [--memory 1000,10000]

(a) Throughput: the same scan (integrated gradients to --tolerance 0.01, black baseline,
    activation statistics of every numbered layer, shards of 64, one torch thread per worker) of the first --images test
    images of one run, with the local engine on 1 and 2 workers and the Ray engine on 2
    actors (a local cluster of 2 CPUs, started before the clock and timed apart). Each
    configuration runs in a fresh process, from no scan folder to the merged summary.
    Scaling efficiency = rate(2 workers) / (2 x rate(1 worker)); Ray's overhead = 1 -
    rate(ray, 2 actors) / rate(local, 2 workers).
(b) Peak memory (max RSS of the scanning process) for --memory images of a folder data set,
    plain gradients (the pipeline's memory, not the method's: integrated gradients keep
    one batch of steps, whatever the number of images), local engine, 1 worker.
(c) A table, computed and not run, of the time for 1,000,000 images on 1, 8 and 64 workers.

Without --run, a run is trained first (AllConvNet width 16, 2 epochs on 2,000 built-in
images, 512 test images) into a temporary folder. Loads of the machine are printed with
each figure: it may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "RAY_AUTH_MODE": "disabled"}  # no Ray token written to HOME


def child(args: argparse.Namespace) -> None:
    """One measured scan in this process; print its figures as JSON."""
    import torch

    from mindscope.scan import LocalEngine, RayEngine, ScanOptions, ScanSource, scan

    if args.load_only:  # the peak of opening the model and data alone: every test image in memory as uint8
        images = ScanSource(f"run:{args.run}", data=args.data).open().require_data("").test
        assert len(images) >= args.images
        print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return

    torch.set_num_threads(1)  # one core per worker: the 1-worker rate is a per-core cost
    ray_start = 0.0
    if args.engine == "ray":
        import ray

        began = time.perf_counter()
        ray.init(num_cpus=2, object_store_memory=100 << 20, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - began
    methods = tuple(args.methods.split(","))
    options = ScanOptions(methods=methods, tolerance=args.tolerance, shard_size=64)
    engine = LocalEngine(args.workers) if args.engine == "local" else RayEngine(actors=args.workers)
    began, load = time.perf_counter(), os.getloadavg()[0]
    busy = []  # each shard's wall time in its worker: computing and writing, not starting up
    progress = scan(ScanSource(f"run:{args.run}", data=args.data), args.out, options=options, limit=args.images,
                    engine=engine, on_shard=lambda r: busy.append(r.seconds))  # fmt: skip
    seconds = time.perf_counter() - began
    if args.engine == "ray":
        ray.shutdown()
    steps = progress.summary["methods"][methods[0]]["steps_mean"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    print(json.dumps({"seconds": seconds, "images": progress.plan.images, "steps_mean": steps, "ray_start": ray_start,
                      "peak_mib": rss, "load": [load, os.getloadavg()[0]], "busy": sum(busy)}))  # fmt: skip


def measure(run: str, out: Path, engine: str, workers: int, images: int, *, methods: str, tolerance: float,
            data: str | None = None, load_only: bool = False) -> dict:  # fmt: skip
    command = [sys.executable, __file__, "--child", "--run", run, "--out", str(out), "--engine", engine,
               "--workers", str(workers), "--images", str(images), "--methods", methods,
               "--tolerance", str(tolerance)]  # fmt: skip
    command += (["--data", data] if data else []) + (["--load-only"] if load_only else [])
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{engine} x{workers} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def train(folder: Path) -> str:
    out = folder / "run"
    args = ["train", "--width", "16", "--epochs", "2", "--train-limit", "2000", "--test-limit", "512",
            "--histogram-every", "0", "--out", str(out)]  # fmt: skip
    subprocess.run([sys.executable, "-m", "mindscope", *args], env=ENV, check=True, stdout=subprocess.DEVNULL)
    return str(out)


def noise_folder(folder: Path, images: int) -> str:
    """ROOT/train/c*/ (one image each) and ROOT/test/c*/ with `images` random 32x32 PNGs in all."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("test", images)):
        for i in range(count):
            path = folder / split / f"c{i % 10}" / f"{i:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return f"folder:{folder}"


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None)
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--methods", default="integrated")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--memory", default="1000,10000")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="local", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return {}
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = args.run or train(folder)
        rates = {}
        configs = [("local", 1), ("local", 2)] + ([] if args.skip_ray else [("ray", 2)])
        print(f"(a) {args.images} images, {args.methods} to tolerance {args.tolerance}, run {run}")
        print("| engine | workers | images/s | s | busy s per worker | steps/image | Ray start s | load before/after |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for engine, workers in configs:
            r = measure(run, folder / f"{engine}{workers}", engine, workers, args.images, methods=args.methods,
                        tolerance=args.tolerance)  # fmt: skip
            rates[(engine, workers)] = rate = r["images"] / r["seconds"]
            print(f"| {engine} | {workers} | {rate:.1f} | {r['seconds']:.1f} | {r['busy'] / workers:.1f} | "
                  f"{r['steps_mean']:.1f} | {r['ray_start']:.1f} | {r['load'][0]:.1f}/{r['load'][1]:.1f} |",
                  flush=True)  # fmt: skip
        efficiency = rates[("local", 2)] / (2 * rates[("local", 1)])
        results |= {"local images/s (1 worker)": rates[("local", 1)], "local 2-worker scaling efficiency": efficiency}
        print(f"scaling efficiency, local 2 workers: {efficiency:.0%}")
        if ("ray", 2) in rates:
            overhead = 1 - rates[("ray", 2)] / rates[("local", 2)]
            results["Ray overhead vs local (2 workers)"] = overhead
            print(f"Ray's overhead against local at 2 workers: {overhead:.0%}")
        print("\n(b) peak memory, gradient method, local engine, 1 worker")
        print("| images | peak RSS MiB | opening model and data alone | the scan's own | s | load |")
        print("| ---: | ---: | ---: | ---: | ---: | --- |")
        own = {}
        for n in (int(v) for v in args.memory.split(",")):
            data = noise_folder(folder / f"noise{n}", n)
            r = measure(run, folder / f"mem{n}", "local", 1, n, methods="gradient", tolerance=args.tolerance, data=data)
            loaded = measure(run, folder, "local", 1, n, methods="gradient", tolerance=0.01, data=data, load_only=True)
            own[n] = r["peak_mib"] - loaded["peak_mib"]
            print(f"| {n} | {r['peak_mib']:.0f} | {loaded['peak_mib']:.0f} | {own[n]:.0f} | {r['seconds']:.1f} | "
                  f"{r['load'][0]:.1f} |", flush=True)  # fmt: skip
        sizes = sorted(own)
        results["the scan's own peak memory, largest - smallest data set (MiB)"] = own[sizes[-1]] - own[sizes[0]]
        project(1 / rates[("local", 1)], efficiency)
    return results


def project(seconds_per_image: float, efficiency: float) -> None:
    """Print the 1M-image table from one worker's measured cost."""
    print(f"\n(c) 1,000,000 images, computed from {seconds_per_image * 1000:.0f} ms per image on one worker")
    print("| workers | hours | assumptions |\n| ---: | ---: | --- |")
    for workers in (1, 8, 64):
        scale = 1 if workers == 1 else workers * efficiency
        hours = 1e6 * seconds_per_image / scale / 3600
        print(f"| {workers} | {hours:.1f} | each worker one core like these; efficiency {efficiency:.0%} per added "
              "worker as measured at 2; no I/O or data-reading limit; shards, not images, are scheduled |")  # fmt: skip


if __name__ == "__main__":
    main()
