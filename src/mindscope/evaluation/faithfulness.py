"""Deletion and insertion (Petsiuk, Das & Saenko 2018, "RISE").

Remove the most relevant pixels first and watch the target probability fall, or insert them
into a baseline and watch it rise; compared with a random order, so each method's margin over
chance is one number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mindscope._util import positive_int
from mindscope.attribution import input_gradients_only
from mindscope.baselines import Baseline, resolve_baseline
from mindscope.evaluation.common import check_inputs, fixed_targets, pixel_map
from mindscope.inputs import spread_units, unit_name, unit_shape


def area_under(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Trapezoid area under each row of `curves` (N, S + 1) over `fractions` (S + 1,) in [0, 1]."""
    return ((curves[:, 1:] + curves[:, :-1]) / 2 * np.diff(fractions)).sum(axis=1)


@dataclass(frozen=True, eq=False)
class DeletionResult:
    """Target probability as pixels are removed from x (deletion) or put into the baseline (insertion)."""

    fractions: np.ndarray  # (S + 1,) share of pixels removed / inserted at each step
    deletion: np.ndarray  # (N, S + 1) most relevant pixels removed first
    insertion: np.ndarray  # (N, S + 1) most relevant pixels inserted first
    random_deletion: np.ndarray  # (N, S + 1) a random order (one per example, seeded)
    random_insertion: np.ndarray  # (N, S + 1)
    targets: np.ndarray  # (N,) int64 class whose probability is recorded
    unit: str = "pixels"  # what was removed: "pixels", "features" (rows) or "positions" (sequences)

    def auc(self, curves: np.ndarray) -> np.ndarray:
        return area_under(curves, self.fractions)

    @property
    def deletion_auc(self) -> float:
        """Mean area under the deletion curve: lower is more faithful."""
        return float(self.auc(self.deletion).mean())

    @property
    def insertion_auc(self) -> float:
        """Mean area under the insertion curve: higher is more faithful."""
        return float(self.auc(self.insertion).mean())

    @property
    def deletion_margin(self) -> float:
        """Random order's deletion area minus the method's: > 0 beats chance."""
        return float((self.auc(self.random_deletion) - self.auc(self.deletion)).mean())

    @property
    def insertion_margin(self) -> float:
        """The method's insertion area minus the random order's: > 0 beats chance."""
        return float((self.auc(self.insertion) - self.auc(self.random_insertion)).mean())


def deletion_insertion(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None,
    attributions: Tensor,
    *,
    baseline: Baseline = None,
    steps: int = 16,
    seed: int = 0,
    max_batch: int = 128,
    layout: str | None = None,
) -> DeletionResult:
    """Remove (insert) pixels in order of attribution and record the target's softmax probability.

    Pixels are ranked by their attribution summed over channels, highest first (ties by
    position). A removed pixel takes the baseline's value at that pixel; insertion starts
    from the baseline and puts back x's pixels. `baseline` lives in x's space: zeros unless
    given (pass `black(x, normalization)` for black pixels). Step s switches
    round(s / steps * H * W) pixels. The same runs with a random order (seeded, one per
    example). All (4 x N x (steps + 1)) images are scored in batches of `max_batch`.

    Any batch works, and "pixel" means its unit: a pixel of images in either layout
    ("NCHW", "NHWC"), a feature of rows ("NF"), a position of sequences ("NLD", all its D
    values switched at once). `layout` is x's, read by `inputs.batch_layout`'s rule when
    None: a 4-dim x whose last dim looks like colour channels is refused without it.
    """
    layout = check_inputs(x, layout)
    positive_int(steps, "steps", hint="16 is usual")
    positive_int(max_batch, "max_batch")
    n, units = x.shape[0], unit_shape(x.shape, layout)
    x = x.detach()
    scores = pixel_map(attributions, x.shape, layout=layout).flatten(1).to(x.device)  # (N, P)
    base = resolve_baseline(baseline, x)
    targets = fixed_targets(model, x, target, max_batch)
    pixels = scores.shape[1]
    generator = torch.Generator().manual_seed(seed)
    ranked = scores.argsort(dim=1, descending=True, stable=True)  # (N, P) most relevant first
    shuffled = torch.stack([torch.randperm(pixels, generator=generator) for _ in range(n)]).to(x.device)
    orders = torch.stack([ranked, ranked, shuffled, shuffled])  # (4, N, P)
    # position[k, e, p]: at which place of order k pixel p of example e is switched
    position = torch.empty_like(orders).scatter_(2, orders, torch.arange(pixels, device=x.device).expand_as(orders))
    counts = torch.round(torch.linspace(0, pixels, steps + 1, dtype=torch.float64)).long().to(x.device)
    deleting = torch.tensor([True, False, True, False], device=x.device)
    k, e, s = (
        t.flatten()
        for t in torch.meshgrid(
            torch.arange(4, device=x.device),
            torch.arange(n, device=x.device),
            torch.arange(steps + 1, device=x.device),
            indexing="ij",
        )
    )
    probabilities = []
    with input_gradients_only(model), torch.no_grad():
        for start in range(0, k.numel(), max_batch):
            kb, eb, sb = k[start : start + max_batch], e[start : start + max_batch], s[start : start + max_batch]
            switched = spread_units((position[kb, eb] < counts[sb][:, None]).view(-1, *units), layout)
            deleted = deleting[kb].view((-1,) + (1,) * (x.dim() - 1))
            before, after = torch.where(deleted, x[eb], base[eb]), torch.where(deleted, base[eb], x[eb])
            z = torch.where(switched, after, before)  # (B, ...) like x
            probabilities.append(model(z).softmax(dim=-1).gather(1, targets[eb][:, None]).squeeze(1))
    curves = torch.cat(probabilities).view(4, n, steps + 1).to(torch.float64).cpu().numpy()
    fractions = (counts.to(torch.float64) / pixels).cpu().numpy()
    return DeletionResult(
        fractions, curves[0], curves[1], curves[2], curves[3], targets.cpu().numpy(), unit_name(layout)
    )
