"""Model parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

Re-initialise the layers from the output down, cascading, and measure how similar the maps
stay (Spearman rank correlation, of |map| and of the signed map). A map that does not change
when the weights are destroyed does not explain the weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mindscope.evaluation.common import (
    Method,
    Progress,
    attribution_tensor,
    check_images,
    fixed_targets,
    pixel_map,
    spearman,
)
from mindscope.layers import resolve_layers

# A method passes the randomisation check when the mean Spearman correlation of its |map|
# with all layers randomised falls below this (1 = unchanged map, 0 = unrelated ranks).
RANDOMISATION_THRESHOLD = 0.5


@dataclass(frozen=True, eq=False)
class RandomisationResult:
    """Similarity of each step's maps to the original maps; row 0 is the model untouched."""

    layers: tuple[str, ...]  # (L,) randomised in this order, from the output down, cascading
    spearman_abs: np.ndarray  # (L + 1, N) rank correlation of |map| with the original
    spearman_signed: np.ndarray  # (L + 1, N) the same for the signed map
    threshold: float  # pass: mean spearman_abs with all layers randomised below this

    @property
    def curve(self) -> np.ndarray:
        """(L + 1,) mean rank correlation of |map| after 0, 1, ... L layers randomised."""
        return np.nanmean(self.spearman_abs, axis=1)

    @property
    def final_abs(self) -> float:
        return float(np.nanmean(self.spearman_abs[-1]))

    @property
    def final_signed(self) -> float:
        return float(np.nanmean(self.spearman_signed[-1]))

    @property
    def passed(self) -> bool:
        return self.final_abs < self.threshold


def parameterised_layers(model: nn.Module) -> list[str]:
    """Return the dotted names of the modules that own parameters, in registration order."""
    return [name for name, m in model.named_modules() if name and next(m.parameters(recurse=False), None) is not None]


def randomise_layer(module: nn.Module, generator: torch.Generator) -> None:
    """Redraw each of the module's own parameters from a normal with the mean and std of its values.

    Matching the first two moments keeps every layer's scale, so the signal neither dies nor
    explodes through the randomised layers: what changes is the structure the training put in.
    """
    with torch.no_grad():
        for p in module.parameters(recurse=False):
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


def _similarities(reference: Tensor, current: Tensor, shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    if current.shape != reference.shape:
        raise ValueError(
            f"the method returned maps of shape {tuple(current.shape)} for the randomised model "
            f"but {tuple(reference.shape)} for the original; it must return one shape"
        )
    signed_ref, signed = pixel_map(reference, shape), pixel_map(current, shape)  # (N, H, W)
    abs_ref = reference.abs().sum(1) if reference.dim() == 4 else reference.abs()
    abs_now = current.abs().sum(1) if current.dim() == 4 else current.abs()
    return spearman(abs_ref, abs_now), spearman(signed_ref, signed)


def randomisation_check(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None,
    method: Method,
    *,
    layers: Sequence[str | int] | str | None = None,
    seed: int = 0,
    threshold: float = RANDOMISATION_THRESHOLD,
    reference: Tensor | None = None,
    max_batch: int = 128,
    progress: Progress | None = None,
) -> RandomisationResult:
    """Randomise the layers from the output down, cascading; compare each step's maps with the original.

    `layers` (names or numbers; default every parameterised layer) are always taken top-down.
    Targets are fixed from the untouched model (its predictions when `target` is None), so
    every step explains the same class. The caller's model is never changed: a deep copy is
    randomised. `reference` may pass the method's maps on the untouched model if already
    computed. `progress(label)` is called after each attribution.
    """
    check_images(x)
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
    pixel_map(reference, x.shape, name="the method's maps")
    generator = torch.Generator().manual_seed(seed)
    rows = [_similarities(reference, reference, x.shape)]
    for name in names:
        randomise_layer(work.get_submodule(name), generator)
        rows.append(_similarities(reference, attribution_tensor(method(work, x, targets)), x.shape))
        if progress is not None:
            progress(f"randomised {name}")
    return RandomisationResult(
        tuple(names),
        torch.stack([r[0] for r in rows]).cpu().numpy(),
        torch.stack([r[1] for r in rows]).cpu().numpy(),
        float(threshold),
    )
