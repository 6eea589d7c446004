"""Alphas found by bisection: against a closed form and a brute-force fine grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mindscope.attribution import WALKTHROUGH_ALPHAS
from mindscope.attribution.alphas import refine_alphas


class Linear2(nn.Module):
    """logits = [w . x + b, 0]: the class-0 probability is sigmoid(w . x + b)."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(b, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.w).flatten(1).sum(1) + self.b
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_the_flip_of_a_linear_model_is_bracketed_where_the_closed_form_puts_it() -> None:
    # From a zero baseline, class 0's score is 10 a - 3.1: the prediction flips at a = 0.31,
    # which the walk-through's grid (0.1, then 0.5) steps over.
    w = torch.full((1, 1, 2, 2), 2.5, dtype=torch.float64)
    model, x = Linear2(w, -3.1), torch.ones(1, 1, 2, 2, dtype=torch.float64)
    grid = refine_alphas(model, x, alphas=WALKTHROUGH_ALPHAS, max_change=0.1, resolution=1 / 256)
    alphas = grid.alphas.numpy()
    assert np.all(np.diff(alphas) > 0)
    assert set(WALKTHROUGH_ALPHAS) <= set(alphas.tolist())
    assert not grid.added[np.isin(alphas, WALKTHROUGH_ALPHAS)].any() and grid.added.sum() > 0
    (lower, upper), *more = grid.flips(0)
    assert more == [] and lower < 0.31 < upper and upper - lower <= 1 / 256
    p = 1 / (1 + np.exp(-(10 * alphas - 3.1)))  # closed form, target class 0
    np.testing.assert_allclose(grid.target_probabilities[:, 0].numpy(), p, rtol=1e-12)
    assert np.all(np.abs(np.diff(p)) <= 0.1)  # no step of the curve hides more than 10 points
    assert grid.predictions[:, 0].tolist() == [int(a < 0.31) for a in alphas]


def test_every_flip_on_a_brute_force_fine_grid_is_found_for_a_conv_net() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ELU(), nn.Conv2d(6, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).double()
    x = 3 * torch.randn(2, 3, 5, 5, dtype=torch.float64)
    base = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    grid = refine_alphas(net, x, alphas=[0.0, 0.5, 1.0], baseline=base, max_change=0.1, resolution=1 / 256)

    def forward(alphas: np.ndarray) -> np.ndarray:  # (A, N, K) probabilities, one plain pass
        a = torch.as_tensor(alphas).view(-1, 1, 1, 1, 1)
        with torch.no_grad():
            return net((base + a * (x - base)).flatten(0, 1)).softmax(-1).view(len(alphas), 2, -1).numpy()

    fine = np.linspace(0, 1, 4097)
    probs = forward(fine)
    targets = probs[-1].argmax(-1)
    predicted = probs.argmax(-1)  # (4097, N)
    for i in range(2):
        changes = np.flatnonzero(predicted[1:, i] != predicted[:-1, i])
        assert changes.size >= 1  # the net was chosen (seed 3) to change its mind on the way
        brackets = grid.flips(i)
        assert len(brackets) == changes.size
        for j, (lower, upper) in zip(changes, brackets):
            assert lower <= fine[j + 1] and fine[j] <= upper and upper - lower <= 1 / 256
    at_grid = forward(grid.alphas.numpy())
    target_p = at_grid[:, np.arange(2), targets]  # (A, N)
    np.testing.assert_allclose(grid.target_probabilities.numpy(), target_p, rtol=1e-10)
    gaps = np.diff(grid.alphas.numpy())
    jumps = np.abs(np.diff(target_p, axis=0)).max(axis=1)
    assert np.all((jumps <= 0.1) | (gaps <= 1 / 256))
    # where the brute-force curve is steepest, the grid is at least as fine as the rule asks
    steepest = np.abs(np.diff(probs[:, np.arange(2), targets], axis=0)).max(axis=1).argmax()
    k = np.searchsorted(grid.alphas.numpy(), fine[steepest], side="right") - 1
    assert jumps[min(k, len(jumps) - 1)] <= 0.1 or gaps[min(k, len(gaps) - 1)] <= 1 / 256


def test_refinement_stops_at_max_points_and_rejects_bad_input() -> None:
    w = torch.full((1, 1, 2, 2), 2.5, dtype=torch.float64)
    model, x = Linear2(w, -3.0), torch.ones(1, 1, 2, 2, dtype=torch.float64)
    grid = refine_alphas(model, x, alphas=[0.0, 1.0], max_points=3)
    assert int(grid.added.sum()) == 3 and grid.alphas.numel() == 5
    with pytest.raises(ValueError, match="alphas must be a non-empty"):
        refine_alphas(model, x, alphas=[])
    with pytest.raises(ValueError, match="max_change must be a positive number"):
        refine_alphas(model, x, alphas=[0.0, 1.0], max_change=0)
    with pytest.raises(ValueError, match="max_points must be a positive integer"):
        refine_alphas(model, x, alphas=[0.0, 1.0], max_points=0)
