"""Benchmark Grad-CAM, layer integrated gradients and occlusion side by side with Captum's.

    python benchmarks/bench_methods.py [--run RUN_DIR] [--images 16] [--repeats 5] [--layer features.12]

Network: the `mindscope demo` recipe (AllConvNet width 32, 4 epochs on 5000 built-in
images), trained once and cached by bench_attribution.py's `cached_run` (or --run). On
the first --images test images, in one process, each pair of calls is timed in turn
--repeats times and the median is shown (the machine may be shared):
 (a) Grad-CAM of the last spatial layer: `grad_cam` (maps at layer and input resolution)
     vs Captum's LayerGradCam + LayerAttribution.interpolate (the same two maps).
 (b) Layer integrated gradients at --layer (default features.12, the output of layer 6),
     F = softmax probability of the prediction, black baseline. Both compute the same
     quantity (Captum's definition; checked equal at its default 50 steps). Error: per
     image, max of the relative completeness error and the relative L2 map error against
     a float64 Gauss-Legendre reference (REFERENCE_STEPS nodes); images with nothing to
     explain (|F(x) - F(black)| <= 1% of F) are set aside and counted. Captum at its
     default n_steps=50 and at the smallest n_steps of a ladder whose worst error is <= 1%
     (an oracle: it needs the reference); mindscope with tolerance=0.01.
 (c) Occlusion, window (3, 8, 8), stride (3, 4, 4), zero baseline, the same copies per
     forward pass: `occlusion(batch_size=N * P)` vs Captum's Occlusion(perturbations_per_eval=P).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from mindscope.attribution import (
    class_probability,
    completeness_scale,
    grad_cam,
    layer_integrated_gradients,
    occlusion,
)
from mindscope.quadrature import gauss_legendre

REFERENCE_STEPS = 256
TARGET = 0.01
LADDER = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each function, run in turn `repeats` times (after one warm-up each)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def report(label: str, times: dict[str, float], ours: str, theirs: str) -> float:
    ratio = times[theirs] / times[ours]
    print(
        f"    {label}: Captum {times[theirs] * 1e3:.1f} ms, mindscope {times[ours] * 1e3:.1f} ms, "
        f"Captum/mindscope {ratio:.2f}x"
    )
    return ratio


def bench_grad_cam(model: nn.Module, x: Tensor, repeats: int) -> float:
    from captum.attr import LayerAttribution, LayerGradCam

    ours = grad_cam(model, x)
    module = model.get_submodule(ours.layer)
    captum = LayerGradCam(model, module)

    def theirs() -> tuple[Tensor, Tensor]:
        small = captum.attribute(x, target=ours.targets, relu_attributions=True).detach()
        return small, LayerAttribution.interpolate(small, tuple(x.shape[-2:]), interpolate_mode="bilinear")

    small, big = theirs()
    gap = max(float((small[:, 0] - ours.layer_maps).abs().max()), float((big[:, 0] - ours.maps).abs().max()))
    print(f"(a) Grad-CAM of {ours.layer} {tuple(ours.layer_maps.shape[1:])}: largest difference from Captum {gap:.1e}")
    times = medians({"ours": lambda: grad_cam(model, x, ours.targets, layer=module), "theirs": theirs}, repeats)
    return report("median time", times, "ours", "theirs")


class Reference:
    """The float64 layer IG for the batch, and the errors against it of maps of the kept images."""

    def __init__(self, model: nn.Module, x: Tensor, base: Tensor, layer: str, targets: Tensor) -> None:
        began = time.perf_counter()
        fine = layer_integrated_gradients(
            copy.deepcopy(model).double(), x.double(), layer, targets, baseline=base.double(),
            rule=gauss_legendre(REFERENCE_STEPS),
        )  # fmt: skip
        scale, self.ill = completeness_scale(fine.output, fine.baseline_output)
        keep = ~self.ill
        self.map, self.scale = fine.attributions[keep], scale[keep]
        self.delta = (fine.output - fine.baseline_output)[keep]
        self.seconds = time.perf_counter() - began

    def worst(self, attributions: Tensor) -> float:
        """Max over the kept images of max(relative completeness error, relative L2 map error)."""
        a = attributions.double()
        completeness = (a.flatten(1).sum(1) - self.delta).abs() / self.scale
        mapping = (a - self.map).flatten(1).norm(dim=1) / self.map.flatten(1).norm(dim=1)
        return float(torch.maximum(completeness, mapping).max())


def bench_layer_ig(model: nn.Module, x: Tensor, base: Tensor, layer: str, repeats: int) -> dict[str, float]:
    from captum.attr import LayerIntegratedGradients

    targets = model(x).argmax(1)
    truth = Reference(model, x, base, layer, targets)
    keep = ~truth.ill
    print(
        f"(b) layer IG at {layer}: float64 reference GL{REFERENCE_STEPS} ({truth.seconds:.0f} s); "
        f"{int(keep.sum())} of {len(keep)} images kept, {int(truth.ill.sum())} set aside (nothing to explain)"
    )
    xk, bk, tk = x[keep], base[keep], targets[keep]
    captum = LayerIntegratedGradients(lambda z: class_probability(model(z)), model.get_submodule(layer))

    def theirs(n: int) -> Tensor:
        return captum.attribute(xk, bk, target=tk, n_steps=n, internal_batch_size=128)

    def ours() -> object:
        return layer_integrated_gradients(model, xk, layer, tk, baseline=bk, tolerance=TARGET)

    same = layer_integrated_gradients(model, xk, layer, tk, baseline=bk, rule=gauss_legendre(50)).attributions
    default = theirs(50)
    print(
        f"    same definition: mindscope GL50 vs Captum n_steps=50 differ by "
        f"{float((same - default).norm() / same.norm()):.1e} (relative L2); "
        f"Captum n_steps=50 worst error {truth.worst(default):.3%}"
    )
    smallest = next((n for n in LADDER if truth.worst(theirs(n)) <= TARGET), None)
    mine = ours()
    print(
        f"    mindscope tolerance={TARGET}: steps {int(mine.steps.min())}..{int(mine.steps.max())} "
        f"(total {int(mine.steps.sum())}), converged {int(mine.converged.sum())}/{len(tk)}, "
        f"true worst error {truth.worst(mine.attributions):.3%}"
    )
    fns = {"ours": ours, "captum50": lambda: theirs(50)}
    if smallest is None:
        print(f"    Captum: no n_steps in {LADDER} reached {TARGET:.0%} on every image")
    else:
        print(
            f"    Captum smallest n_steps reaching {TARGET:.0%}: {smallest} (total {smallest * len(tk)}), "
            f"worst {truth.worst(theirs(smallest)):.3%}"
        )
        fns["captum_min"] = lambda: theirs(smallest)
    times = medians(fns, repeats)
    ratios = {"layer IG: Captum n_steps=50 / mindscope 1%": report("Captum n_steps=50", times, "ours", "captum50")}
    if smallest is not None:
        ratios["layer IG: Captum smallest n_steps to 1% / mindscope 1%"] = report(
            f"Captum n_steps={smallest} (smallest to 1%)", times, "ours", "captum_min"
        )
    return ratios


def bench_occlusion(model: nn.Module, x: Tensor, per_eval: int, repeats: int) -> float:
    from captum.attr import Occlusion

    targets = model(x).argmax(1)
    captum = Occlusion(lambda z: class_probability(model(z)))

    def ours() -> Tensor:
        return occlusion(model, x, targets, window=(3, 8, 8), stride=(3, 4, 4), batch_size=x.shape[0] * per_eval)

    def theirs() -> Tensor:
        return captum.attribute(
            x, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), target=targets, perturbations_per_eval=per_eval
        )

    gap = float((ours().attributions - theirs()).abs().max())
    print(f"(c) occlusion, {x.shape[0] * per_eval} copies per pass: largest difference from Captum {gap:.1e}")
    return report("median time", medians({"ours": ours, "theirs": theirs}, repeats), "ours", "theirs")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a run directory (default: the cached demo run)")
    parser.add_argument("--cache", default="/tmp/mindscope-bench-runs")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layer", default="features.12")
    parser.add_argument("--per-eval", type=int, default=8, help="Captum's perturbations_per_eval")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.run is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_attribution import cached_run

        Path(args.cache).mkdir(parents=True, exist_ok=True)
        path = cached_run("demo", Path(args.cache))
    else:
        path = Path(args.run)
    from bench_attribution import open_for_benchmark

    device = torch.device(args.device)
    loaded, model, x, base = open_for_benchmark(path, args.images, device)
    data = loaded.data
    print(
        f"== {path.name}: {data.name}, epoch {loaded.epoch}, {x.shape[0]} test images, device {device}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} runs"
    )
    headline = {"Grad-CAM: Captum / mindscope": bench_grad_cam(model, x, args.repeats)}
    headline.update(bench_layer_ig(model, x, base, args.layer, args.repeats))
    headline["occlusion: Captum / mindscope"] = bench_occlusion(model, x, args.per_eval, args.repeats)
    print("\n".join(f"{name}: {value:.2f}x" for name, value in headline.items()))
    return headline


if __name__ == "__main__":
    main()
