"""What does one recording of weight histograms cost, against what a user would write instead?

One recording = a histogram and summary of every parameter tensor of AllConvNet(width), the
weights perturbed as after some training (no all-zero biases). Columns, at --bins (64) unless
named otherwise:

  mindscope     weight_histograms(model): counts exactly as numpy.histogram, NaN/Inf counted
                apart, mean, std, min, max, L2 norm, near-zero fraction
  +SQLite       RunRecorder.log_weights: the same, written to a run's metrics.sqlite
  tb bins=64    SummaryWriter.add_histogram(name, p, step, bins=64) for every tensor
  tb default    add_histogram with its default bins ('tensorflow', ~1500 exponential buckets)
  histc         torch.histc(p, bins) for every tensor: counts only, the floor
  histc+stats   torch.histc(p, bins), p.mean(), p.std(), p.min(), p.max() for every tensor

The columns are timed side by side in one process, interleaved in a rotating order, each call
with the device synchronised before and after; the table gives the best of --repeats calls and
the median. TensorBoard's event queue is flushed between calls, outside the timing. Then each
column as a multiple of mindscope's time, and as a share of one training step (Adam, batch
--step-batch) at that width: one step is timed after a small warm-up step.

    python benchmarks/bench_recording.py                        # widths 32 128 512, CPU
    python benchmarks/bench_recording.py --device cuda
    python benchmarks/bench_recording.py --widths 8 32 --repeats 40
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mindscope.model import AllConvNet
from mindscope.run import Run, RunRecorder
from mindscope.weights import weight_histograms


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recorders(model: nn.Module, bins: int, folder: Path) -> tuple[dict[str, Callable[[int], object]], Callable]:
    """One call per column (taking the step number), and a function that closes what they opened."""
    from torch.utils.tensorboard import SummaryWriter

    run = Run.create(folder / "run", {"benchmark": "recording"}, model, {})
    recorder = RunRecorder(run, bins=bins)
    writer = SummaryWriter(str(folder / "tb"))

    def params():  # every column walks the model itself, as weight_histograms does
        return ((name, p.detach()) for name, p in model.named_parameters())

    def tensorboard(step: int, **bins_arg) -> None:
        for name, p in params():
            writer.add_histogram(name, p, step, **bins_arg)

    def histc_stats(step: int) -> None:
        for _, p in params():
            torch.histc(p, bins=bins), p.mean(), p.std(), p.min(), p.max()

    calls = {
        "mindscope": lambda step: weight_histograms(model, bins=bins),
        "+SQLite": lambda step: recorder.log_weights(step, 0.0, model),
        f"tb bins={bins}": lambda step: tensorboard(step, bins=bins),
        "tb default": lambda step: tensorboard(step),
        "histc": lambda step: [torch.histc(p, bins=bins) for _, p in params()],
        "histc+stats": histc_stats,
    }

    def close() -> None:
        writer.close()
        recorder.close()

    calls["flush"] = lambda step: writer.flush()
    return calls, close


def time_interleaved(
    calls: dict[str, Callable[[int], object]], device: torch.device, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each column, `repeats` rounds, the order rotated every round."""
    names = [n for n in calls if n != "flush"]
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats + 1):  # round 0 warms up
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            began = time.perf_counter()
            calls[name](r)
            sync(device)
            if r:
                times[name].append(time.perf_counter() - began)
            calls["flush"](r)  # TensorBoard's writer thread drains here, outside the timing
    return times


def step_seconds(model: nn.Module, batch: int, device: torch.device) -> float:
    """Wall time of one Adam training step at `batch`, after a warm-up step at batch 8."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    result = 0.0
    for n in (8, batch):
        x = torch.randn(n, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (n,), device=device)
        sync(device)
        began = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        sync(device)
        result = time.perf_counter() - began
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 128, 512], help="AllConvNet widths")
    parser.add_argument("--bins", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per column and width")
    parser.add_argument("--step-batch", type=int, default=128, help="batch of the training step (0: skip it)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"one recording of every parameter tensor of AllConvNet, {args.bins} bins, on {device} "
        f"({torch.get_num_threads()} threads); best of {args.repeats} interleaved calls, median in brackets"
    )
    columns = ["mindscope", "+SQLite", f"tb bins={args.bins}", "tb default", "histc", "histc+stats"]
    best: dict[int, dict[str, float]] = {}
    steps: dict[int, float] = {}
    print(f"\n{'width':>5} {'params':>11}" + "".join(f"{name:>17}" for name in columns) + f"{'train step':>12}")
    for width in args.widths:
        torch.manual_seed(0)
        model = AllConvNet(width=width).to(device)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.01)
        with tempfile.TemporaryDirectory() as folder:
            calls, close = recorders(model, args.bins, Path(folder))
            try:
                times = time_interleaved(calls, device, args.repeats)
            finally:
                close()
        best[width] = {name: min(t) for name, t in times.items()}
        steps[width] = step_seconds(model, args.step_batch, device) if args.step_batch else float("nan")
        cells = "".join(
            f"{1e3 * min(t):>8.2f} ({1e3 * statistics.median(t):>6.2f})" for t in (times[n] for n in columns)
        )
        params = sum(p.numel() for p in model.parameters())
        print(f"{width:>5} {params:>11,}{cells}{1e3 * steps[width]:>9.0f} ms", flush=True)

    print("\ntime per recording / mindscope's (best times)")
    print(f"{'width':>5}" + "".join(f"{name:>13}" for name in columns))
    for width, row in best.items():
        print(f"{width:>5}" + "".join(f"{row[n] / row['mindscope']:>12.2f}x" for n in columns))
    print(f"\nshare of one training step (Adam, batch {args.step_batch})")
    print(f"{'width':>5}" + "".join(f"{name:>13}" for name in columns))
    for width, row in best.items():
        print(f"{width:>5}" + "".join(f"{100 * row[n] / steps[width]:>12.3f}%" for n in columns))

    headline: dict[str, float] = {}
    for width, row in best.items():
        headline[f"add_histogram(bins={args.bins}) / mindscope, time per recording, width {width}"] = (
            row[f"tb bins={args.bins}"] / row["mindscope"]
        )
        headline[f"mindscope / naive histc+mean/std/min/max, width {width}"] = row["mindscope"] / row["histc+stats"]
        headline[f"mindscope + SQLite, % of one training step (batch {args.step_batch}), width {width}"] = (
            100 * row["+SQLite"] / steps[width]
        )
    return headline


if __name__ == "__main__":
    main()
