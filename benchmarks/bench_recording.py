"""What does one recording of weight histograms cost, against what a user would write instead?

One recording = a histogram and summary of every parameter tensor of AllConvNet(width), the
weights perturbed as after some training (no all-zero biases). Every column at --bins (64)
but "tb default":

  mindscope     weight_histograms(model): counts exactly as numpy.histogram, NaN/Inf counted
                apart, mean, std, min, max, L2 norm, near-zero fraction
  +SQLite       RunRecorder.log_weights: the same, written to a run's metrics.sqlite
  tb bins=64    SummaryWriter.add_histogram(name, p, step, bins=64) for every tensor
  tb default    add_histogram with its default bins ('tensorflow', ~1500 exponential buckets)
  histc         torch.histc(p, bins) for every tensor: counts only, the floor
  histc+stats   torch.histc(p, bins), p.mean(), p.std(), p.min(), p.max() for every tensor

Timed side by side in one process, timeit-style: a warm-up round, then --repeats rounds in
which every column is called once, in a new random order each round (seeded: no column always
follows the same one, whose work would leave its caches warm or cold), the device synchronised
before and after each call. The tables give the median (and the fastest) time per call; TensorBoard's
event queue is flushed between calls, outside the timing. Then the two ratios the issue asks
about (mindscope / add_histogram at equal bins, mindscope / histc+stats) and each column as a
share of one training step (forward, backward, SGD) at batch --step-batch on 3x32x32 inputs,
timed after a warm-up step. A step that a probe at batch 8 says would take more than
--step-seconds is timed at batch 8 and scaled to --step-batch (marked ~): the cost of a
convolution grows in proportion to the batch.

--clock cpu times the process's CPU time instead of the wall clock: on a machine shared with
other work it does not count the time the process waits for a core (use it with --threads 1).

    python benchmarks/bench_recording.py                      # widths 8 32 128 512; CPU, and CUDA if present
    python benchmarks/bench_recording.py --threads 1 --clock cpu
    python benchmarks/bench_recording.py --widths 8 32 --repeats 40 --devices cpu
"""

from __future__ import annotations

import argparse
import os
import random
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

COLUMNS = ("mindscope", "+SQLite", "tb bins={bins}", "tb default", "histc", "histc+stats")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recorders(model: nn.Module, bins: int, folder: Path) -> tuple[dict[str, Callable[[int], object]], Callable]:
    """One call per column (taking the step number), a flush, and a function that closes what they opened."""
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

    names = [c.format(bins=bins) for c in COLUMNS]
    calls = dict(
        zip(
            names,
            [
                lambda step: weight_histograms(model, bins=bins),
                lambda step: recorder.log_weights(step, 0.0, model),
                lambda step: tensorboard(step, bins=bins),
                lambda step: tensorboard(step),
                lambda step: [torch.histc(p, bins=bins) for _, p in params()],
                histc_stats,
            ],
        )
    )

    def close() -> None:
        writer.close()
        recorder.close()

    return calls, writer.flush, close


def time_interleaved(
    calls: dict[str, Callable[[int], object]],
    flush: Callable[[], None],
    device: torch.device,
    repeats: int,
    clock: Callable[[], float],
) -> dict[str, list[float]]:
    """Seconds per call of each column: a warm-up round, then `repeats` rounds, each in a new random order."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    order = random.Random(0)
    for r in range(repeats + 1):  # round 0 warms up
        for name in order.sample(names, len(names)):
            sync(device)
            began = clock()
            calls[name](r)
            sync(device)
            if r:
                times[name].append(clock() - began)
            flush()  # TensorBoard's writer thread drains here, outside the timing
    return times


def step_seconds(
    model: nn.Module, batch: int, device: torch.device, budget: float, clock: Callable[[], float]
) -> tuple[float, bool]:
    """Seconds of one SGD training step at `batch` (after a warm-up step at batch 2), and whether it
    was scaled from a step at batch 8 because a probe said it would take more than `budget` seconds."""
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)

    def one_step(n: int) -> float:
        x = torch.randn(n, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (n,), device=device)
        sync(device)
        began = clock()
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        sync(device)
        return clock() - began

    one_step(2)
    probe = min(8, batch)
    seconds = one_step(probe)
    if seconds * batch / probe > budget:
        return seconds * batch / probe, True
    return one_step(batch), False


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 32, 128, 512], help="AllConvNet widths")
    parser.add_argument("--bins", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per column and width")
    parser.add_argument("--step-batch", type=int, default=128, help="batch of the training step (0: skip it)")
    parser.add_argument("--step-seconds", type=float, default=20.0, help="longest training step timed in full")
    default_devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    parser.add_argument("--devices", nargs="+", default=default_devices)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: the process's CPU time")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    columns = [c.format(bins=args.bins) for c in COLUMNS]
    tb_equal = columns[2]
    load_before = os.getloadavg()
    headline: dict[str, float] = {}
    for device in map(torch.device, args.devices):
        clock = time.process_time if args.clock == "cpu" and device.type == "cpu" else time.perf_counter
        print(
            f"\none recording of every parameter tensor of AllConvNet, {args.bins} bins, on {device} "
            f"({torch.get_num_threads()} threads, {'CPU time' if clock is time.process_time else 'wall clock'}); "
            f"median of {args.repeats} interleaved calls, fastest in brackets, ms"
        )
        print(f"\n{'width':>5} {'params':>11}" + "".join(f"{name:>18}" for name in columns) + f"{'train step':>13}")
        medians: dict[int, dict[str, float]] = {}
        steps: dict[int, tuple[float, bool]] = {}
        for width in args.widths:
            torch.manual_seed(0)
            model = AllConvNet(width=width).to(device)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p), alpha=0.01)
            with tempfile.TemporaryDirectory() as folder:
                calls, flush, close = recorders(model, args.bins, Path(folder))
                try:
                    times = time_interleaved(calls, flush, device, args.repeats, clock)
                finally:
                    close()
            medians[width] = {n: statistics.median(t) for n, t in times.items()}
            steps[width] = (
                step_seconds(model, args.step_batch, device, args.step_seconds, clock)
                if args.step_batch
                else (float("nan"), False)
            )
            cells = "".join(f"{1e3 * medians[width][n]:>9.2f} ({1e3 * min(times[n]):>6.2f})" for n in columns)
            params = sum(p.numel() for p in model.parameters())
            step, scaled = steps[width]
            print(f"{width:>5} {params:>11,}{cells}{'~' if scaled else ' ':>4}{step:>7.2f} s", flush=True)

        print(f"\nmindscope / add_histogram(bins={args.bins}) and mindscope / histc+stats (medians)")
        for width, row in medians.items():
            print(
                f"{width:>5}  {row['mindscope'] / row[tb_equal]:>6.2f}x  {row['mindscope'] / row['histc+stats']:>6.2f}x"
            )
        print(f"\nshare of one training step (SGD, batch {args.step_batch}; ~: scaled from batch 8)")
        print(f"{'width':>5}" + "".join(f"{name:>13}" for name in columns))
        for width, row in medians.items():
            step, scaled = steps[width]
            print(f"{width:>4}{'~' if scaled else ' '}" + "".join(f"{100 * row[n] / step:>12.3f}%" for n in columns))

        where = "" if device.type == "cpu" else f" on {device.type}"
        for width, row in medians.items():
            headline[f"mindscope / add_histogram(bins={args.bins}), time per recording{where}, width {width}"] = (
                row["mindscope"] / row[tb_equal]
            )
            headline[f"mindscope / naive histc+mean/std/min/max{where}, width {width}"] = (
                row["mindscope"] / row["histc+stats"]
            )
            headline[f"mindscope + SQLite, % of one SGD step (batch {args.step_batch}){where}, width {width}"] = (
                100 * row["+SQLite"] / steps[width][0]
            )
    load_after = os.getloadavg()
    print(
        f"\nload average (1/5/15 min) before {'/'.join(f'{v:.2f}' for v in load_before)}, "
        f"after {'/'.join(f'{v:.2f}' for v in load_after)}; {os.cpu_count()} CPUs"
    )
    return headline


if __name__ == "__main__":
    main()
