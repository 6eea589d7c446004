"""What does recording weight histograms during training cost?

Trains the reference AllConvNet for a fixed number of steps in one process, three ways:
  none         no recording;
  mindscope    `weight_histograms(model)` every `--every` steps, counts and edges copied to the host
               (what the run recorder stores);
  tensorboard  `SummaryWriter.add_histogram` for every parameter at the same interval.
Runs are interleaved and repeated; each reports its median wall time as a ratio to `none`
(and its best time as a ratio to the best `none`), and the share of its own wall time spent
inside the recording calls, which a noisy shared machine disturbs far less. Finally one
recording call is timed on its own, with the overhead that implies:
call time / (every x time per training step).

    python benchmarks/bench_recording.py                 # width 32, CPU
    python benchmarks/bench_recording.py --width 128 --device cuda
    python benchmarks/bench_recording.py --width 128 --quick     # CPU: calls only
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

from mindscope.model import AllConvNet
from mindscope.weights import histogram_rows, weight_histograms


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def record_mindscope(bins: int) -> Callable[[nn.Module, int], None]:
    def record(model: nn.Module, step: int) -> None:
        histogram_rows(weight_histograms(model, bins=bins), step=step, epoch=0.0)

    return record


def record_tensorboard(writer) -> Callable[[nn.Module, int], None]:
    def record(model: nn.Module, step: int) -> None:
        for name, p in model.named_parameters():
            writer.add_histogram(name, p, step)

    return record


def train(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    every: int,
    record: Callable[[nn.Module, int], None] | None,
) -> tuple[float, float]:
    """Train for `steps` Adam steps; return (wall seconds, seconds spent inside `record`)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    device = next(model.parameters()).device
    recording = 0.0
    sync(device)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = batches[step % len(batches)]
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if record is not None and step % every == 0:
            sync(device)
            begin = time.perf_counter()
            record(model, step)
            sync(device)
            recording += time.perf_counter() - begin
    sync(device)
    return time.perf_counter() - start, recording


def time_call(call: Callable[[], None], device: torch.device, repeats: int) -> float:
    call()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    sync(device)
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=32, help="AllConvNet width (the walk-through uses 128)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--every", type=int, default=50, help="steps between recordings (recorder default)")
    parser.add_argument("--bins", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per configuration")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--quick", action="store_true", help="skip the full runs: time a few steps and the recording calls only"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from torch.utils.tensorboard import SummaryWriter

    device = torch.device(args.device)
    torch.manual_seed(0)
    initial = AllConvNet(width=args.width).to(device)
    batches = [
        (
            torch.randn(args.batch_size, 3, 32, 32, device=device),
            torch.randint(0, 10, (args.batch_size,), device=device),
        )
        for _ in range(8)
    ]
    params = sum(p.numel() for p in initial.parameters())
    print(
        f"AllConvNet(width={args.width}): {params:,} parameters in {len(list(initial.parameters()))} "
        f"tensors; {args.steps} steps of batch {args.batch_size} on {device} "
        f"({torch.get_num_threads()} threads); recording every {args.every} steps, {args.bins} bins"
    )

    with tempfile.TemporaryDirectory() as logdir:
        writer = SummaryWriter(logdir)
        configs = {"none": None, "mindscope": record_mindscope(args.bins), "tensorboard": record_tensorboard(writer)}
        warm_steps = min(args.steps, 10)
        warm, _ = train(copy.deepcopy(initial), batches, warm_steps, args.every, None)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
        for r in range(0 if args.quick else args.repeats):
            order = list(configs)[r % 3 :] + list(configs)[: r % 3]  # rotate to spread drift
            for name in order:
                times[name].append(train(copy.deepcopy(initial), batches, args.steps, args.every, configs[name]))
        model = copy.deepcopy(initial)
        call_ms = time_call(lambda: configs["mindscope"](model, 0), device, 20)
        call_tb = time_call(lambda: configs["tensorboard"](model, 0), device, 5)
        writer.close()

    if times["none"]:
        base = statistics.median(t for t, _ in times["none"])
        best = min(t for t, _ in times["none"])
        step_s = base / args.steps
        print(
            f"\n{'configuration':<13} {'median s':>9} {'ratio':>7} {'best ratio':>10} {'in recording':>12}   runs (s)"
        )
        for name, runs in times.items():
            med = statistics.median(t for t, _ in runs)
            share = sum(r for _, r in runs) / sum(t for t, _ in runs)
            print(
                f"{name:<13} {med:9.3f} {med / base:7.4f} {min(t for t, _ in runs) / best:10.4f} "
                f"{100 * share:11.3f}%   " + ", ".join(f"{t:.2f}" for t, _ in runs)
            )
    else:
        step_s = warm / warm_steps
    print(f"\none training step: {1e3 * step_s:.2f} ms")
    for name, call in (("mindscope", call_ms), ("tensorboard", call_tb)):
        print(
            f"one {name} recording of all tensors: {1e3 * call:8.3f} ms -> implied overhead "
            f"{100 * call / (args.every * step_s):.3f}% at every {args.every} steps"
        )
    print(f"add_histogram / weight_histograms per recording: {call_tb / call_ms:.1f}x")
    headline = {
        "add_histogram / mindscope (time per recording)": call_tb / call_ms,
        "mindscope recording overhead (% of training, implied)": 100 * call_ms / (args.every * step_s),
    }
    if times["none"]:
        headline["trained with mindscope / unrecorded (wall time)"] = (
            statistics.median(t for t, _ in times["mindscope"]) / base
        )
    return headline


if __name__ == "__main__":
    main()
