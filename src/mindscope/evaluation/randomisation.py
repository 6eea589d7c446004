"""Model parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

Re-initialise the layers from the output down, cascading, and measure how similar the maps
stay (Spearman rank correlation, of |map| and of the signed map). A map that does not change
when the weights are destroyed does not explain the weights.

Given the baseline, only the pixels that can carry attribution (x != baseline) are compared:
a path method gives every other pixel exactly 0 whatever the weights, and on images that
are mostly black (Fashion-MNIST: 57% of pixels) those shared zeros alone keep the rank
correlation high. The correlation over all pixels is kept beside it.

A randomised layer stays a valid layer: only learned parameters are redrawn, never a
normalisation's running statistics (see `randomise_layer`). A model that still gives NaN
(or infinite) output, or a method that gives NaN maps, never passes: the check stops there,
its correlations from that step on are NaN, and `failure` says where it happened.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mindscope._util import eval_mode
from mindscope.attribution.core import batched_logits
from mindscope.baselines import Baseline, resolve_baseline
from mindscope.evaluation.common import (
    Method,
    Progress,
    attribution_tensor,
    check_inputs,
    fixed_targets,
    pixel_map,
    spearman,
)
from mindscope.inputs import channel_axis
from mindscope.layers import resolve_layers

# A method passes the randomisation check when the mean Spearman correlation of its |map|
# with all layers randomised falls below this (1 = unchanged map, 0 = unrelated ranks).
RANDOMISATION_THRESHOLD = 0.5


def mean_of_numbers(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Mean of the values that are not NaN (a constant map's correlation); NaN where none are, silently."""
    kept = ~np.isnan(values)
    count, total = kept.sum(axis=axis), np.where(kept, values, 0.0).sum(axis=axis)
    return np.divide(total, count, out=np.full(np.shape(total), np.nan), where=count > 0)


@dataclass(frozen=True, eq=False)
class RandomisationResult:
    """Similarity of each step's maps to the original maps; row 0 is the model untouched."""

    layers: tuple[str, ...]  # (L,) randomised in this order, from the output down, cascading
    spearman_abs: np.ndarray  # (L + 1, N) rank correlation of |map| with the original, compared pixels
    spearman_signed: np.ndarray  # (L + 1, N) the same for the signed map
    threshold: float  # pass: mean spearman_abs with all layers randomised below this
    compared: np.ndarray | None = None  # (N,) share of pixels compared (x != baseline); None: all pixels
    spearman_abs_all: np.ndarray | None = None  # (L + 1, N) |map| over all pixels (None: as spearman_abs)
    spearman_signed_all: np.ndarray | None = None  # (L + 1, N) signed map over all pixels
    # why the check failed outright, e.g. "failed: model output is NaN after randomising features.6";
    # None when every step gave finite output and maps
    failure: str | None = None

    @property
    def curve(self) -> np.ndarray:
        """(L + 1,) mean rank correlation of |map| after 0, 1, ... L layers randomised."""
        return mean_of_numbers(self.spearman_abs, axis=1)

    @property
    def final_abs(self) -> float:
        return float(mean_of_numbers(self.spearman_abs[-1]))

    @property
    def final_signed(self) -> float:
        return float(mean_of_numbers(self.spearman_signed[-1]))

    @property
    def final_abs_all(self) -> float:
        """The final |map| correlation over all pixels, baseline-valued ones included."""
        values = self.spearman_abs if self.spearman_abs_all is None else self.spearman_abs_all
        return float(mean_of_numbers(values[-1]))

    @property
    def passed(self) -> bool:
        """The final |map| correlation is below the threshold, and nothing was NaN on the way."""
        return self.failure is None and self.final_abs < self.threshold

    @property
    def verdict(self) -> str:
        """One line: "pass", "FAIL", or the failure (NaN output or maps) with the layer."""
        return self.failure or ("pass" if self.passed else "FAIL")


def parameterised_layers(model: nn.Module) -> list[str]:
    """Return the dotted names of the modules that own parameters, in registration order."""
    return [name for name, m in model.named_modules() if name and next(m.parameters(recurse=False), None) is not None]


# Running statistics are estimates of the data, not learned weights; redrawing a variance
# from a normal makes it negative and the layer's output NaN. torch keeps them in buffers,
# which are never redrawn; Keras, and converters that copy its variables, keep them as
# non-trainable parameters with these names, skipped.
STATISTICS = re.compile(r"(running|moving)_(mean|var|variance)$")


def randomise_layer(module: nn.Module, generator: torch.Generator) -> None:
    """Redraw each of the module's own learned parameters from a normal with the mean and std of its values.

    Matching the first two moments keeps every layer's scale, so the signal neither dies nor
    explodes through the randomised layers: what changes is the structure the training put in.
    A normalisation keeps its running statistics as trained (buffers, and parameters named
    running_/moving_ mean/var/variance), so its variance stays positive and the layer valid.
    """
    with torch.no_grad():
        for name, p in module.named_parameters(recurse=False):
            if STATISTICS.search(name):
                continue
            values = p.detach().to(torch.float64)
            std = float(values.std()) if values.numel() > 1 else 0.0
            draw = torch.randn(p.shape, generator=generator, dtype=torch.float64) * std + float(values.mean())
            p.copy_(draw.to(p))


def _layers_top_down(model: nn.Module, layers: Sequence[str | int] | str | None) -> list[str]:
    owners = parameterised_layers(model)
    if not owners:
        raise ValueError("the model has no parameterised layers to randomise")
    chosen = owners if layers is None else resolve_layers(model, layers)
    missing = [name for name in chosen if name not in owners]
    if missing:
        raise ValueError(
            f"layer {missing[0]!r} has no parameters to randomise; parameterised layers are: {', '.join(owners)}"
        )
    rank = {name: i for i, name in enumerate(owners)}
    return sorted(chosen, key=rank.__getitem__, reverse=True)


def _similarities(
    reference: Tensor, current: Tensor, shape: Sequence[int], layout: str, carrying: Tensor | None
) -> Tensor:
    """Return (4, N): Spearman of |map| and of the signed map, on the carrying units, then on all."""
    if current.shape != reference.shape:
        raise ValueError(
            f"the method returned maps of shape {tuple(current.shape)} for the randomised model "
            f"but {tuple(reference.shape)} for the original; it must return one shape"
        )
    signed_ref, signed = pixel_map(reference, shape, layout=layout), pixel_map(current, shape, layout=layout)
    abs_ref = pixel_map(reference.abs(), shape, layout=layout)  # (N, *units)
    abs_now = pixel_map(current.abs(), shape, layout=layout)
    everywhere = [spearman(abs_ref, abs_now), spearman(signed_ref, signed)]
    if carrying is None:
        return torch.stack(everywhere * 2)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=reference.device)
    kept = [[], []]
    for e in range(shape[0]):
        m = carrying[e]  # (*units) bool
        for k, (a, b) in enumerate(((abs_ref, abs_now), (signed_ref, signed))):
            kept[k].append(spearman(a[e][m][None], b[e][m][None])[0] if int(m.sum()) >= 2 else nan)
    return torch.stack([torch.stack(kept[0]), torch.stack(kept[1]), *everywhere])


def _not_finite(model: nn.Module, x: Tensor, maps: Tensor, max_batch: int) -> str | None:
    """Say what is NaN or infinite, the model's output on x or the maps; None if neither is."""
    with eval_mode(model):
        logits = batched_logits(model, x, max_batch)
    for what, values in (("model output is", logits), ("the method's maps hold", maps)):
        if not torch.isfinite(values).all():
            return f"{what} {'NaN' if values.isnan().any() else 'infinite values'}"
    return None


def randomisation_check(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None,
    method: Method,
    *,
    layers: Sequence[str | int] | str | None = None,
    seed: int = 0,
    threshold: float = RANDOMISATION_THRESHOLD,
    baseline: Baseline = None,
    reference: Tensor | None = None,
    max_batch: int = 128,
    progress: Progress | None = None,
    layout: str | None = None,
) -> RandomisationResult:
    """Randomise the layers from the output down, cascading; compare each step's maps with the original.

    `layers` (names or numbers; default every parameterised layer) are always taken top-down.
    x is any batch (N, ...); maps are compared per unit (`mindscope.inputs`: pixel, feature or
    position), summed over channels, and `layout` is x's (by `inputs.batch_layout`'s rule when None).
    Targets are fixed from the untouched model (its predictions when `target` is None), so
    every step explains the same class. The caller's model is never changed: a deep copy is
    randomised. `reference` may pass the method's maps on the untouched model if already
    computed. `progress(label)` is called after each attribution.

    With `baseline` (a tensor like x or a function of x), the maps are compared only on the
    pixels where x differs from it in some channel, the only ones a path method can give
    attribution; the correlations over all pixels come back too. Without it, all pixels.

    Where the model's output or the maps hold a NaN or an infinity (on the model as given, or
    after randomising a layer), the check stops: that row and the rest are NaN, and
    `failure` says so ("failed: model output is NaN after randomising features.6"); it never passes.
    """
    layout = check_inputs(x, layout)
    if not callable(method):
        raise TypeError(f"method must be a function (model, x, targets) -> Attribution, got {type(method).__name__}")
    names = _layers_top_down(model, layers)
    targets = fixed_targets(model, x, target, max_batch)
    x = x.detach()
    work = copy.deepcopy(model)
    if reference is None:
        reference = attribution_tensor(method(work, x, targets))
        if progress is not None:
            progress("original model")
    pixel_map(reference, x.shape, name="the method's maps", layout=layout)
    carrying = None
    if baseline is not None:
        differs = x != resolve_baseline(baseline, x).to(x)
        axis = channel_axis(layout)
        carrying = differs if axis is None else differs.any(dim=axis)  # (N, *units)
    generator = torch.Generator().manual_seed(seed)
    nan_row = torch.full((4, x.shape[0]), float("nan"), dtype=torch.float64)
    rows, failure = [], None
    problem = _not_finite(work, x, reference, max_batch)
    if problem is not None:
        failure = f"failed: {problem} on the model as given"
    else:
        rows.append(_similarities(reference, reference, x.shape, layout, carrying))
    for name in names if failure is None else ():
        randomise_layer(work.get_submodule(name), generator)
        maps = attribution_tensor(method(work, x, targets))
        problem = _not_finite(work, x, maps, max_batch)
        if problem is not None:
            failure = f"failed: {problem} after randomising {name}"
        else:
            rows.append(_similarities(reference, maps, x.shape, layout, carrying))
        if progress is not None:
            progress(f"randomised {name}" + (f" ({failure})" if failure else ""))
        if failure is not None:
            break
    rows += [nan_row.to(x.device)] * (len(names) + 1 - len(rows))
    table = torch.stack([row.to(x.device) for row in rows]).cpu().numpy()  # (L + 1, 4, N)
    compared = None if carrying is None else carrying.flatten(1).double().mean(1).cpu().numpy()
    return RandomisationResult(
        tuple(names), table[:, 0], table[:, 1], float(threshold), compared, table[:, 2], table[:, 3], failure
    )
