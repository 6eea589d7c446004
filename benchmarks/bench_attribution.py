"""Benchmark integrated gradients: throughput, time to a stated accuracy, and vs the walk-through.

    python benchmarks/bench_attribution.py [--run RUN_DIR] [--images 16] [--device cpu]

On the reference network (a run directory, or a width-32 net trained here on the built-in
data) and the first `--images` test images, F = softmax probability of the predicted class,
black baseline. Prints:
 (a) per-step throughput of integrated_gradients relative to the model's raw forward +
     input-gradient at the same batch size (target >= 0.9);
 (b) time until every image has relative completeness error <= 1% AND map error <= 1%
     against a 2048-step Gauss-Legendre reference: mindscope with tolerance, Captum's
     IntegratedGradients at the smallest n_steps in 8, 16, ..., 2048 (its default rule), and
     mindscope's fixed Gauss-Legendre rule likewise (target: mindscope >= 3x faster than Captum);
 (c) the walk-through's 3000-step left Riemann sum vs mindscope at the same or better error
     (target >= 10x).
Times are the best of `--repeats` runs (the machine may be shared).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mindscope.attribution import Attribution, black, class_probability, integrated_gradients
from mindscope.quadrature import gauss_legendre, left

TARGET = 0.01  # 1% relative completeness and map error


def reference_network(run: str | None, images: int, device: torch.device) -> tuple[nn.Module, Tensor, object]:
    """Return (model, normalised test images, normalization)."""
    if run is not None:
        from mindscope.run import load_run

        loaded = load_run(run)
        data, model = loaded.data, loaded.model
    else:
        from mindscope.data import load_data
        from mindscope.model import AllConvNet
        from mindscope.train import TrainConfig, train

        print("no --run given: training AllConvNet(width=32) for 4 epochs on 10000 built-in images ...", flush=True)
        data = load_data("builtin", train_limit=10000, test_limit=512)
        model = AllConvNet(width=32)
        train(model, data, TrainConfig(epochs=4, step_test_images=100), progress=False)
        model = model.to(memory_format=torch.contiguous_format).eval()
    x = data.inputs(data.test, list(range(images)))
    return model.to(device), x.to(device), data.normalization


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def errors(attributions: Tensor, reference: Tensor, delta_f: Tensor) -> tuple[Tensor, Tensor]:
    """Per image: relative completeness error, relative L2 map error vs the reference."""
    completeness = (attributions.flatten(1).sum(1) - delta_f).abs() / delta_f.abs()
    diff = (attributions - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)
    return completeness, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="run directory of the reference network")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, x, normalization = reference_network(args.run, args.images, device)
    for p in model.parameters():
        p.requires_grad_(False)
    base = black(x, normalization)
    mb, n_img = args.max_batch, x.shape[0]
    print(f"device {device}, {torch.get_num_threads()} threads, {n_img} images, max_batch {mb}, "
          f"F = softmax probability of the predicted class, black baseline")

    # (a) per-step throughput vs raw forward + input gradient at the same batch size
    steps_a = max(1, (8 * mb) // n_img)
    targets = model(x).argmax(1)
    z0 = x.repeat((mb + n_img - 1) // n_img, 1, 1, 1)[:mb]
    t0 = targets.repeat((mb + n_img - 1) // n_img)[:mb]

    def raw() -> None:
        for _ in range(steps_a * n_img // mb):
            z = z0.clone().requires_grad_(True)
            score = model(z).softmax(-1).gather(1, t0[:, None]).sum()
            torch.autograd.grad(score, z)

    raw_time, _ = best_time(raw, args.repeats)
    ours_time, _ = best_time(lambda: integrated_gradients(model, x, baseline=base, rule=gauss_legendre(steps_a),
                                                          max_batch=mb), args.repeats)
    raw_rate = (steps_a * n_img // mb) * mb / raw_time
    ours_rate = steps_a * n_img / ours_time
    print(f"(a) throughput: raw forward+input-gradient {raw_rate:.0f} steps/s, integrated_gradients "
          f"{ours_rate:.0f} steps/s, ratio {ours_rate / raw_rate:.2f} (target >= 0.9)", flush=True)

    # (b) time to 1% completeness and map error on every image
    start = time.perf_counter()
    reference: Attribution = integrated_gradients(model, x, baseline=base, rule=gauss_legendre(2048), max_batch=mb)
    print(f"    reference: Gauss-Legendre 2048 steps in {time.perf_counter() - start:.1f} s, "
          f"completeness error max {reference.relative_completeness_error.max():.2e}", flush=True)
    delta_f = reference.output - reference.baseline_output
    ref_map = reference.attributions

    tol_time, adaptive = best_time(lambda: integrated_gradients(model, x, baseline=base, tolerance=TARGET,
                                                                max_batch=mb), args.repeats)
    c, m = errors(adaptive.attributions, ref_map, delta_f)
    ok = bool(((c <= TARGET) & (m <= TARGET)).all())
    print(f"(b) mindscope tolerance={TARGET}: {tol_time:.2f} s, steps per image {adaptive.steps.min()}..{adaptive.steps.max()} "
          f"(total {int(adaptive.steps.sum())}), max completeness {c.max():.2%}, max map error {m.max():.2%} "
          f"(estimate {adaptive.map_error.max():.2%}), all within 1%: {ok}", flush=True)

    from captum.attr import IntegratedGradients

    captum = IntegratedGradients(lambda z: class_probability(model(z)))

    def smallest(make: Callable[[int], Tensor], label: str) -> tuple[int | None, float]:
        for n in [8 * 2 ** k for k in range(9)]:
            attributions = make(n)
            c, m = errors(attributions, ref_map, delta_f)
            if bool(((c <= TARGET) & (m <= TARGET)).all()):
                seconds, _ = best_time(lambda: make(n), args.repeats)
                print(f"    {label}: n_steps={n}: {seconds:.2f} s, max completeness {c.max():.2%}, "
                      f"max map error {m.max():.2%}", flush=True)
                return n, seconds
        print(f"    {label}: no n_steps up to 2048 reached 1% on every image")
        return None, float("inf")

    _, captum_time = smallest(lambda n: captum.attribute(x, base, target=reference.targets, n_steps=n,
                                                         internal_batch_size=mb), "Captum IntegratedGradients")
    _, fixed_time = smallest(lambda n: integrated_gradients(model, x, baseline=base, rule=gauss_legendre(n),
                                                            max_batch=mb).attributions, "mindscope gauss_legendre(n)")
    print(f"    speed-up of mindscope tolerance over Captum: {captum_time / tol_time:.1f}x (target >= 3x); "
          f"over its own fixed rule: {fixed_time / tol_time:.1f}x", flush=True)

    # (c) the walk-through's 3000-step left Riemann sum vs mindscope at the same or better error
    start = time.perf_counter()
    walk = integrated_gradients(model, x, baseline=base, rule=left(3000), max_batch=mb)
    walk_time = time.perf_counter() - start
    wc, wm = errors(walk.attributions, ref_map, delta_f)
    level = float(min(wc.max(), wm.max()))
    tolerance = level
    while True:
        match_time, matched = best_time(lambda: integrated_gradients(model, x, baseline=base, tolerance=tolerance,
                                                                     max_batch=mb, max_steps=3000), args.repeats)
        mc, mm = errors(matched.attributions, ref_map, delta_f)
        if bool(((mc <= wc.max()) & (mm <= wm.max())).all()) or tolerance < level / 8:
            break
        tolerance /= 2
    print(f"(c) walk-through left Riemann 3000 steps: {walk_time:.1f} s, max completeness {wc.max():.3%}, "
          f"max map error {wm.max():.3%}")
    print(f"    mindscope tolerance={tolerance:.2g}: {match_time:.2f} s, steps {matched.steps.min()}..{matched.steps.max()}, "
          f"max completeness {mc.max():.3%}, max map error {mm.max():.3%}; "
          f"time ratio {walk_time / match_time:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
