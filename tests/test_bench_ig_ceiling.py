"""The ceiling benchmark's own arithmetic: the Gauss-Kronrod constants, and its per-image step count."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_ig_ceiling as ceiling  # noqa: E402


def test_kronrod_15_is_exact_to_degree_23_and_its_gauss_7_to_degree_13() -> None:
    nodes, kronrod, gauss = ceiling.kronrod_rule()
    assert np.all(np.diff(nodes) > 0) and nodes[0] > 0 and nodes[-1] < 1
    t = 2 * nodes - 1  # on [-1, 1]: the mean of t**d is 1 / (d + 1) for even d, 0 for odd d
    exact = [(1 + (-1) ** d) / 2 / (d + 1) for d in range(26)]
    moments = [abs((kronrod * t**d).sum() - exact[d]) for d in range(26)]
    assert max(moments[:24]) < 1e-14 and moments[24] > 1e-10
    moments = [abs((gauss * t**d).sum() - exact[d]) for d in range(16)]
    assert max(moments[:14]) < 1e-14 and moments[14] > 1e-5
    assert np.count_nonzero(gauss) == 7


def test_the_per_image_loop_counts_the_steps_integrated_gradients_takes_and_told_takes_no_more() -> None:
    from bench_attribution import Truth
    from mindscope.attribution import class_probability, integrated_gradients

    generator = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ELU(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10).requires_grad_(False)  # sharp enough to take several rounds: 17-33 steps
    x = torch.randn(4, 1, 6, 6, generator=generator)
    base = torch.zeros_like(x)
    truth = Truth(model, x, base, 64, None, "probability", 256)
    kept = torch.nonzero(~truth.ill).flatten().tolist()
    assert kept
    library = integrated_gradients(model, x[kept], truth.targets[kept], baseline=base[kept], tolerance=0.01,
                                   output=class_probability)  # fmt: skip

    def image(i: int) -> ceiling.Image:
        return ceiling.Image(model, class_probability, x[i], base[i], int(truth.targets[i]), truth, i, 64)

    own = [ceiling.simpson_steps(image(i), told=False) for i in kept]
    told = [ceiling.simpson_steps(image(i), told=True) for i in kept]
    assert own == library.steps.tolist()
    assert all(t <= o for t, o in zip(told, own))
