"""Benchmark `capture_activations` against a plain forward pass of the same batch.

Run:  python benchmarks/bench_activations.py [--device cpu|cuda] [--batch 64] [--width 128]

Throughput: the fastest wall time of `model(x)` under `torch.no_grad()` (eval mode) divided
by the fastest time of `capture_activations(model, x, layers)` (the medians' ratio is shown
too), measured round-robin in one process so that drift on a shared machine hits both alike.
A ratio of 1.0 means capture is free; the target for one layer is >= 0.95. Layer 9 is the last convolution, so capture
cannot stop the pass early there (the honest case); layer 3 shows the early-stop gain.
"all" hooks every module of `features` (21 outputs).

Peak memory, by three methods:
  * bytes held: the summed size of the captured tensors (exact, any device);
  * CUDA: torch.cuda.max_memory_allocated() during one call, minus the allocation before it;
  * CPU: peak-RSS (VmHWM) growth over one call in a fresh child process per case (this script with
    --child, one thread, glibc's mmap threshold fixed so freed tensors leave the RSS); the
    "plain" row is the control: one forward pass's own peak, first-call set-up included.
    tracemalloc cannot see torch's allocations, hence the child processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from mindscope.activations import capture_activations
from mindscope.model import AllConvNet

# glibc would otherwise keep freed blocks resident and hide what is live at once; with a
# fixed mmap threshold every large tensor is its own mapping, returned to the OS when freed.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
CASES = {"layer 3": "3", "layer 9": "9", "all": None}


def layers_for(model: AllConvNet, case: str) -> str | list[str]:
    spec = CASES[case]
    return spec if spec is not None else [f"features.{i}" for i in range(len(model.features))]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def setup(device: torch.device, batch: int, width: int) -> tuple[AllConvNet, torch.Tensor]:
    torch.manual_seed(0)
    model = AllConvNet(width=width).to(device).eval()
    return model, torch.randn(batch, 3, 32, 32, device=device)


def throughput(model, x, device, repeats: int) -> dict[str, float]:
    plain = lambda: model(x)  # noqa: E731
    runs = {"plain": plain} | {c: (lambda c=c: capture_activations(model, x, layers_for(model, c))) for c in CASES}
    with torch.no_grad():
        for fn in runs.values():  # warm-up: allocator, kernels, thread pools
            fn(), fn()
        times = {name: [] for name in runs}
        for _ in range(repeats):
            for name, fn in runs.items():
                with torch.no_grad():
                    times[name].append(timed(fn, device))
    best = {name: min(t) for name, t in times.items()}  # noise on a shared machine only adds time
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {name: (best["plain"] / best[name], medians["plain"] / medians[name]) for name in CASES} | {
        "plain_ms": (1e3 * best["plain"], 1e3 * medians["plain"])
    }


def captured_bytes(model, x) -> dict[str, int]:
    return {
        c: sum(t.numel() * t.element_size() for t in capture_activations(model, x, layers_for(model, c)).values())
        for c in CASES
    }


def cuda_peaks(model, x, device) -> dict[str, int]:
    peaks = {}
    for name in ("plain", *CASES):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            result = model(x) if name == "plain" else capture_activations(model, x, layers_for(model, name))
        torch.cuda.synchronize(device)
        peaks[name] = torch.cuda.max_memory_allocated(device) - before
        del result
    return peaks


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM; ru_maxrss would carry the forking parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: best effort


def child(case: str, batch: int, width: int) -> None:
    """In a fresh process: peak RSS growth over one call, from just before it."""
    torch.set_num_threads(1)
    model, x = setup(torch.device("cpu"), batch, width)
    before = peak_rss_bytes()
    with torch.no_grad():
        result = model(x) if case == "plain" else capture_activations(model, x, layers_for(model, case))
    after = peak_rss_bytes()
    del result
    print(json.dumps({"delta_bytes": after - before}))


def rss_peaks(batch: int, width: int) -> dict[str, int]:
    peaks = {}
    for case in ("plain", *CASES):
        out = subprocess.run(
            [sys.executable, __file__, "--child", case, "--batch", str(batch), "--width", str(width)],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ | MALLOC_ENV,
        )
        peaks[case] = json.loads(out.stdout.strip().splitlines()[-1])["delta_bytes"]
    return peaks


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--child", choices=["plain", *CASES], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.batch, args.width)
        return {}

    device = torch.device(args.device)
    model, x = setup(device, args.batch, args.width)
    print(
        f"AllConvNet(width={args.width}), batch {args.batch}x3x32x32, {device} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}, {args.repeats} repeats"
    )
    ratios = throughput(model, x, device, args.repeats)
    fastest, median = ratios.pop("plain_ms")
    print(f"plain forward: {fastest:.1f} ms fastest, {median:.1f} ms median")
    for case, (ratio, ratio_median) in ratios.items():
        mark = ("  (target >= 0.95: " + ("met" if ratio >= 0.95 else "MISSED") + ")") if case == "layer 9" else ""
        print(
            f"throughput ratio, capture {case:8s}: {ratio:.3f} fastest/fastest, {ratio_median:.3f} median/median{mark}"
        )
    headline = {
        "capture one layer / plain forward (throughput)": ratios["layer 9"][0],
        "capture all layers / plain forward (throughput)": ratios["all"][0],
    }
    mib = 2**20
    held = captured_bytes(model, x)
    for case, n in held.items():
        print(f"bytes held by the capture, {case:8s}: {n / mib:8.1f} MiB")
    if device.type == "cuda":
        for case, n in cuda_peaks(model, x, device).items():
            print(f"CUDA peak allocation during one call, {case:8s}: {n / mib:8.1f} MiB")
    else:
        peaks = rss_peaks(args.batch, args.width)
        for case, n in peaks.items():
            print(f"CPU peak RSS growth over one call (child process), {case:8s}: {n / mib:8.1f} MiB")
        headline["peak memory, all layers / one layer"] = peaks["all"] / max(peaks["layer 9"], 1)
    return headline


if __name__ == "__main__":
    main()
