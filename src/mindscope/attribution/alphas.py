"""Where along the path from the baseline to the input the model makes up its mind.

The walk-through draws interior gradients (Sundararajan, Taly & Yan 2017) at a fixed grid
of alphas. A fixed grid can step right over the interval where the prediction flips, and a
curve drawn through it then shows a straight line where the model changed most.
`refine_alphas` keeps the given alphas and bisects, in batched forward passes, every
interval between neighbours where the prediction differs or the target probability moves
by more than `max_change`, until neighbours agree or are closer than `resolution`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mindscope._util import eval_mode, positive_int
from mindscope.attribution.core import batched_logits, check_batch, resolve_targets
from mindscope.baselines import Baseline, resolve_baseline

__all__ = ["AlphaGrid", "refine_alphas"]


@dataclass(frozen=True)
class AlphaGrid:
    """Alphas along baseline + a (x - baseline), ascending, with what the model says at each."""

    alphas: Tensor  # (A,) float64 ascending: the alphas asked for and those found by bisection
    added: Tensor  # (A,) bool: found by bisection, not asked for
    predictions: Tensor  # (A, N) int64 predicted class at each alpha
    target_probabilities: Tensor  # (A, N) float64 softmax probability of the target
    targets: Tensor  # (N,) int64 the class followed (the prediction at x unless given)

    def flips(self, example: int = 0) -> list[tuple[float, float]]:
        """The (lower, upper) alphas between which `example`'s prediction changes."""
        p = self.predictions[:, example]
        where = torch.nonzero(p[1:] != p[:-1]).flatten().tolist()
        return [(float(self.alphas[j]), float(self.alphas[j + 1])) for j in where]


def _probabilities(
    model: nn.Module, x: Tensor, base: Tensor, alphas: Tensor, targets: Tensor, max_batch: int
) -> tuple[Tensor, Tensor]:
    """Return (predictions, target probabilities), each (len(alphas), N) on the CPU, from batched passes."""
    n, k = x.shape[0], alphas.numel()
    shape = (-1,) + (1,) * (x.dim() - 1)
    a = alphas.to(device=x.device, dtype=x.dtype).repeat_interleave(n).view(shape)  # alpha-major: (K * N,)
    tile = (k,) + (1,) * (x.dim() - 1)
    points = torch.addcmul(base.repeat(tile), a, (x - base).repeat(tile))  # (K * N, ...) like x
    probs = batched_logits(model, points, max_batch).softmax(dim=-1).to(torch.float64).view(k, n, -1)
    target = probs.gather(2, targets.view(1, n, 1).expand(k, n, 1)).squeeze(2)
    return probs.argmax(dim=-1).cpu(), target.cpu()


def refine_alphas(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    *,
    alphas: Sequence[float],
    baseline: Baseline = None,
    max_change: float = 0.1,
    resolution: float = 1 / 256,
    max_points: int = 64,
    max_batch: int = 128,
) -> AlphaGrid:
    """Add alphas where the prediction flips or the target probability changes fastest.

    Starting from the sorted `alphas`, every interval between neighbours whose ends
    predict different classes (for any example), or whose target probabilities differ by
    more than `max_change`, is split at its midpoint, all such midpoints in one batched
    pass per round, until no interval wider than `resolution` qualifies or `max_points`
    alphas were added. A flip is then bracketed to within `resolution`, and the
    probability curve drawn through the grid moves by at most `max_change` between
    neighbours except across intervals narrower than `resolution` (a jump). Nothing is
    added outside [min(alphas), max(alphas)]. One alpha grid serves the whole batch.
    A prediction that flips and flips back between neighbours that agree, while the
    probability moves less than `max_change`, is not seen: sampling cannot promise that.

    The target is fixed by the prediction at x (alpha = 1) unless given, as in
    `interior_gradients`; `baseline` is zeros of x's space unless given.
    """
    check_batch(x, max_batch)
    positive_int(max_points, "max_points")
    given = np.unique(np.asarray(alphas, dtype=np.float64))
    if given.ndim != 1 or given.size == 0 or not np.isfinite(given).all():
        raise ValueError(f"alphas must be a non-empty sequence of finite numbers, got {alphas!r}")
    for name, value in (("max_change", max_change), ("resolution", resolution)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    x = x.detach()
    with eval_mode(model), torch.no_grad():
        logits = batched_logits(model, x, max_batch)
        targets = resolve_targets(target, logits.argmax(dim=-1), logits.shape[1])
        base = resolve_baseline(baseline, x).detach()
        grid = torch.as_tensor(given)
        predictions, probabilities = _probabilities(model, x, base, grid, targets, max_batch)
        added = torch.zeros(grid.numel(), dtype=torch.bool)
        while int(added.sum()) < max_points:
            flips = (predictions[1:] != predictions[:-1]).any(dim=1)  # (A - 1,)
            steep = ((probabilities[1:] - probabilities[:-1]).abs() > max_change).any(dim=1)
            wide = (grid[1:] - grid[:-1]) > resolution
            split = torch.nonzero((flips | steep) & wide).flatten()[: max_points - int(added.sum())]
            if split.numel() == 0:
                break
            middle = (grid[split] + grid[split + 1]) / 2
            pred, prob = _probabilities(model, x, base, middle, targets, max_batch)
            grid, order = torch.cat([grid, middle]).sort()
            predictions = torch.cat([predictions, pred])[order]
            probabilities = torch.cat([probabilities, prob])[order]
            added = torch.cat([added, torch.ones(middle.numel(), dtype=torch.bool)])[order]
    return AlphaGrid(grid, added, predictions, probabilities, targets.cpu())
