"""How hard is the built-in dataset (shapes10), and how long does an epoch take?

1. A linear classifier: multinomial logistic regression on the raw normalised pixels
   (3 x 32 x 32 = 3072 inputs, 10 outputs), fitted full-batch with L-BFGS. Its weight decay is
   chosen on a validation split held out of the training set, then it is refitted on all of it.
2. AllConvNet(width=32) trained with `mindscope.training.train` (the default Adam schedule) for
   `--epochs` epochs on the same images.
Both report accuracy on the same test images. Then seconds per epoch: width 32 from the
epochs just trained; width 128 by timing `--steps` training steps of batch 64 (and a slice of
the test evaluation) and extrapolating to one epoch of the training set.

    python benchmarks/bench_builtin.py                      # 8000 train / 2000 test, CPU
    python benchmarks/bench_builtin.py --device cuda
    python benchmarks/bench_builtin.py --train 2000 --test 500 --epochs 1   # a quick look
    python benchmarks/bench_builtin.py --threads 1          # a CPU shared with other work

The machine may be shared: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F

from mindscope.data import DataSplits, load_data
from mindscope.model import AllConvNet
from mindscope.training import TrainConfig, evaluate, make_optimizer, train


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} CPUs"


def fit_logistic(x: torch.Tensor, y: torch.Tensor, weight_decay: float, *, iterations: int) -> torch.nn.Linear:
    """Multinomial logistic regression, mean cross-entropy + weight_decay/2 * |W|^2, by L-BFGS."""
    linear = torch.nn.Linear(x.shape[1], 10, dtype=x.dtype, device=x.device)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(
        linear.parameters(),
        lr=1.0,
        max_iter=iterations,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), y) + 0.5 * weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear


def accuracy(linear: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (linear(x).argmax(1) == y).double().mean().item()


def linear_baseline(data: DataSplits, device: torch.device, *, iterations: int) -> dict[str, float]:
    x = data.inputs(data.train).flatten(1).to(device)  # (N, 3072) normalised pixels
    y = data.train.labels.to(device)
    xt, yt = data.inputs(data.test).flatten(1).to(device), data.test.labels.to(device)
    cut = int(0.85 * len(y))  # validation: the last 15 %
    scores = {}
    for weight_decay in (1e-3, 1e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0):
        fitted = fit_logistic(x[:cut], y[:cut], weight_decay, iterations=iterations)
        scores[weight_decay] = accuracy(fitted, x[cut:], y[cut:])
        print(f"  linear, weight decay {weight_decay:g}: validation accuracy {100 * scores[weight_decay]:.1f}%")
    best = max(scores, key=scores.get)
    fitted = fit_logistic(x, y, best, iterations=iterations)
    return {"weight_decay": best, "train": accuracy(fitted, x, y), "test": accuracy(fitted, xt, yt)}


def time_steps(
    data: DataSplits, width: int, device: torch.device, *, steps: int, batch: int = 64, eval_images: int = 256
) -> tuple[float, float]:
    """Seconds per training step (as in `train`: channels_last, Adam) and per evaluated test image."""
    torch.manual_seed(0)
    model = AllConvNet(width=width).to(device=device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, TrainConfig())
    model.train()

    def step(i: int) -> None:
        idx = torch.arange(i * batch, (i + 1) * batch) % len(data.train)
        x = data.inputs(data.train, idx).to(device, memory_format=torch.channels_last)  # (B, 3, 32, 32)
        loss = F.cross_entropy(model(x), data.train.labels[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(2):  # warm-up
        step(i)
    sync(device)
    began = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    per_step = (time.perf_counter() - began) / steps
    began = time.perf_counter()
    evaluate(model, data, data.test, limit=eval_images)
    sync(device)
    per_image = (time.perf_counter() - began) / min(eval_images, len(data.test))
    return per_step, per_image


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=8000, help="training images")
    parser.add_argument("--test", type=int, default=2000, help="test images")
    parser.add_argument("--epochs", type=int, default=4, help="epochs for AllConvNet(width=32)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps at width 128")
    parser.add_argument("--iterations", type=int, default=300, help="L-BFGS iterations")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op CPU threads (default: torch's; 1 is faster on a busy machine)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; {load()}")
    began = time.perf_counter()
    data = load_data("builtin", seed=args.seed, train_limit=args.train, test_limit=args.test)
    print(
        f"shapes10: {len(data.train)} train / {len(data.test)} test images, "
        f"generated in {time.perf_counter() - began:.1f} s"
    )

    began = time.perf_counter()
    linear = linear_baseline(data, device, iterations=args.iterations)
    print(
        f"linear classifier (weight decay {linear['weight_decay']:g}): train accuracy "
        f"{100 * linear['train']:.1f}%, test accuracy {100 * linear['test']:.1f}% "
        f"({time.perf_counter() - began:.0f} s)"
    )

    config = TrainConfig(epochs=args.epochs, seed=args.seed, device=args.device)
    torch.manual_seed(args.seed)
    history = train(
        AllConvNet(width=32),
        data,
        config,
        progress=False,
        on_epoch=lambda r: print(
            f"  width 32, epoch {r['epoch']}: train accuracy "
            f"{100 * r['train_accuracy']:.1f}%, test accuracy "
            f"{100 * r['test_accuracy']:.1f}%, {r['seconds']:.1f} s"
        ),
    )
    last = history[-1]
    print(
        f"AllConvNet(width=32), {args.epochs} epochs: test accuracy {100 * last['test_accuracy']:.1f}% "
        f"vs linear {100 * linear['test']:.1f}%"
    )
    seconds32 = [r["seconds"] for r in history]
    print(
        f"width 32: {sum(seconds32) / len(seconds32):.1f} s per epoch measured "
        f"(min {min(seconds32):.1f}, max {max(seconds32):.1f}; {len(data.train)} images in batches of "
        f"{config.batch_size}, plus evaluating {len(data.test)} test images)"
    )

    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    per_step, per_image = time_steps(data, 128, device, steps=args.steps, batch=config.batch_size)
    estimate = steps_per_epoch * per_step + len(data.test) * per_image
    print(
        f"width 128: {per_step:.3f} s per step of batch {config.batch_size} (timed over {args.steps} steps), "
        f"{1000 * per_image:.2f} ms per test image; extrapolated to {steps_per_epoch} steps + "
        f"{len(data.test)} test images: {estimate:.0f} s per epoch (an estimate, not a measured epoch)"
    )
    print(load())
    return {
        "linear classifier test accuracy (%)": 100 * linear["test"],
        "AllConvNet(width=32) test accuracy (%)": 100 * last["test_accuracy"],
        "seconds per epoch, width 32": sum(seconds32) / len(seconds32),
        "seconds per epoch, width 128 (extrapolated)": estimate,
    }


if __name__ == "__main__":
    main()
