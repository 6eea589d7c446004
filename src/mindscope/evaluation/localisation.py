"""Localisation on object masks, and completeness where a method has it.

The share of positive attribution inside the mask and the pointing game (Zhang et al. 2016,
"Top-down Neural Attention by Excitation Backprop"), both against a uniform random map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mindscope.attribution import Attribution
from mindscope.inputs import batch_layout, channel_axis, check_layout, unit_map


@dataclass(frozen=True, eq=False)
class LocalisationResult:
    """Per example: how much of the map falls on the object, and where its peak is."""

    mass_inside: np.ndarray  # (N,) share of positive attribution inside the mask (nan: none positive)
    pointing: np.ndarray  # (N,) bool, the top pixel lies inside the mask
    random_mass_inside: np.ndarray  # (N,) the same for a uniform random map
    random_pointing: np.ndarray  # (N,) bool
    mask_fraction: np.ndarray  # (N,) mask area / image area: a random map's expected score on both

    @property
    def mass(self) -> float:
        return float(np.nanmean(self.mass_inside)) if np.isfinite(self.mass_inside).any() else float("nan")

    @property
    def pointing_rate(self) -> float:
        return float(self.pointing.mean())

    @property
    def random_mass(self) -> float:
        return float(self.random_mass_inside.mean())

    @property
    def random_pointing_rate(self) -> float:
        return float(self.random_pointing.mean())


def _mass_and_pointing(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    flat, inside = maps.flatten(1), masks.flatten(1)  # (N, P)
    positive = flat.clamp_min(0)
    mass = (positive * inside).sum(1) / positive.sum(1)  # 0 / 0 = nan: no positive mass
    hits = inside.gather(1, flat.argmax(dim=1, keepdim=True)).squeeze(1)
    return mass, hits


def _maps_layout(attributions: object, masks: object, layout: str | None) -> str:
    """The layout of the maps: given, or by their rank (4: images, 3: sequences or per-pixel maps, 2: rows)."""
    if not isinstance(attributions, Tensor) or not 2 <= attributions.dim() <= 4:
        raise ValueError(
            f"attributions must be maps (N, ...) such as (N, C, H, W) or (N, H, W), got shape "
            f"{tuple(getattr(attributions, 'shape', ()))}"
        )
    if layout is not None:
        return check_layout(layout)  # maps shaped like x, or already one value per unit: unit_map checks which
    if attributions.dim() == 4:
        return batch_layout(attributions.shape, name="attributions")
    if attributions.dim() == 3:  # a sequence, or images' maps already summed over channels
        return "NCHW" if isinstance(masks, Tensor) and masks.dim() == 3 else "NLD"
    return "NF"


def localisation(
    attributions: Tensor, masks: Tensor, *, seed: int = 0, layout: str | None = None
) -> LocalisationResult:
    """Score maps (N, C, H, W) or (N, H, W) against object masks (N, H, W), and a random map likewise.

    The map is summed over channels; its positive part is the mass. The pointing game's
    top pixel is the map's largest value (the first, on a tie). The random map is uniform
    noise (seeded); `mask_fraction` is its expected score.

    Other batches work by their units (`mindscope.inputs`): channels-last maps (N, H, W, C)
    with layout="NHWC"; rows (N, F) against masks (N, F) of the features that matter;
    sequences (N, L, D) against masks (N, L) of the positions that do. `layout` is the maps'
    (the layout of x), read by `inputs.batch_layout`'s rule when None; a map already shaped
    like the masks passes as it is.
    """
    layout = _maps_layout(attributions, masks, layout)
    mask_dims = len(layout) - (channel_axis(layout) is not None)  # N and the units
    if not isinstance(masks, Tensor) or masks.dim() != mask_dims:
        expected = {"NF": "(N, F)", "NLD": "(N, L)"}.get(layout, "(N, H, W)")
        raise ValueError(
            f"masks must be a tensor {expected}, got shape {tuple(getattr(masks, 'shape', ()))}; "
            "use ImageSet.masks, True on the object"
        )
    if masks.dtype != torch.bool and masks.is_floating_point():
        raise TypeError(f"masks must be bool (True on the object), got {masks.dtype}; threshold them first")
    n, units = masks.shape[0], tuple(masks.shape[1:])
    maps = unit_map(attributions.detach(), n, units, layout, against="masks")  # (N, *units)
    masks = masks.to(device=maps.device, dtype=torch.bool)
    empty = (~masks.flatten(1).any(1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"the mask of example {int(empty[0])} is empty; localisation needs an object "
            "in every image, so leave such images out"
        )
    mass, hits = _mass_and_pointing(maps.to(torch.float64), masks)
    noise = torch.rand((n, *units), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    random_mass, random_hits = _mass_and_pointing(noise.to(maps.device), masks)
    as_numpy = (t.cpu().numpy() for t in (mass, hits, random_mass, random_hits, masks.flatten(1).double().mean(1)))
    return LocalisationResult(*as_numpy)


# --- completeness ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CompletenessResult:
    """How far the maps' sums miss F(x) - F(baseline), and which examples to set aside.

    An ill-conditioned example has nothing to explain (F(x) and F(baseline) nearly agree),
    so its relative error says nothing about the method: the worst error is taken over the
    well-conditioned examples only, and the ones set aside are counted.
    """

    error: np.ndarray  # (N,) |sum(map) - (F(x) - F(baseline))|
    relative_error: np.ndarray  # (N,) relative to F(x) - F(baseline), as the method reports it
    ill_conditioned: np.ndarray  # (N,) bool: nothing to explain
    converged: np.ndarray  # (N,) bool: the tolerance was met (True where the method has none)

    @property
    def set_aside(self) -> int:
        """How many ill-conditioned examples the worst error leaves out."""
        return int(self.ill_conditioned.sum())

    @property
    def not_converged(self) -> int:
        return int((~self.converged).sum())

    @property
    def worst_relative(self) -> float:
        """The largest relative error over well-conditioned examples (nan if there are none)."""
        kept = self.relative_error[~self.ill_conditioned]
        return float(np.nanmax(kept)) if np.isfinite(kept).any() else float("nan")


def completeness(result: Attribution | Tensor) -> CompletenessResult | None:
    """Collect the completeness error of a result; None where the method has none (gradient, SmoothGrad).

    `ill_conditioned` and `converged` left None by the method flag nothing.
    """
    if not isinstance(result, Attribution) or result.completeness_error is None:
        return None
    error = result.completeness_error.detach().double().cpu().numpy()
    n = error.shape[0]

    def flags(values: Tensor | None, default: bool) -> np.ndarray:
        return np.full(n, default) if values is None else values.detach().cpu().numpy().astype(bool)

    relative = result.relative_completeness_error
    return CompletenessResult(
        error,
        np.full_like(error, np.nan) if relative is None else relative.detach().double().cpu().numpy(),
        flags(result.ill_conditioned, False),
        flags(result.converged, True),
    )
