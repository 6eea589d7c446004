"""What the trust checks share: a method's type, its map as a tensor, fixed targets, rank correlation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mindscope.attribution import Attribution, InteriorGradients, check_batch, input_gradients_only, resolve_targets
from mindscope.attribution.core import batched_logits
from mindscope.inputs import batch_layout, unit_map, unit_shape

Method = Callable[[nn.Module, Tensor, Tensor], "Attribution | Tensor"]
Progress = Callable[[str], None]


def attribution_tensor(result: Attribution | InteriorGradients | Tensor) -> Tensor:
    """Return the map of a method's result, shaped like x or one value per unit, detached."""
    if isinstance(result, Attribution):
        return result.attributions.detach()
    if isinstance(result, InteriorGradients):
        if result.alphas.numel() != 1:
            raise ValueError(
                f"interior gradients at {result.alphas.numel()} alphas give several maps; "
                "evaluate one alpha at a time, e.g. interior_gradients(..., alphas=[0.5])"
            )
        return result.gradients[0].detach()
    if isinstance(result, Tensor):
        return result.detach()
    raise TypeError(f"a method must return an Attribution or a tensor, got {type(result).__name__}")


def check_inputs(x: Tensor, layout: str | None) -> str:
    """Check that x is a non-empty float batch and return its layout (`inputs.batch_layout`'s rule)."""
    check_batch(x, 1)
    return batch_layout(x.shape, layout)


def pixel_map(
    attributions: Tensor,
    shape: Sequence[int],
    *,
    name: str = "attributions",
    against: str | None = None,
    layout: str | None = None,
) -> Tensor:
    """Sum a map over channels to one value per unit, (N, *units); check it fits a batch of `shape`.

    Units are the pixels (N, H, W) of images in either layout, the features (N, F) of rows,
    the positions (N, L) of sequences. `layout` is x's, by `inputs.batch_layout`'s rule when
    None. A map already shaped like the units passes as it is.
    """
    layout = batch_layout(shape, layout)
    return unit_map(attributions, int(shape[0]), unit_shape(shape, layout), layout, name=name, against=against)


def fixed_targets(model: nn.Module, x: Tensor, target: int | Tensor | None, max_batch: int) -> Tensor:
    with input_gradients_only(model):
        logits = batched_logits(model, x, max_batch)
    return resolve_targets(target, logits.argmax(dim=-1), logits.shape[-1])


def rankdata(values: Tensor) -> Tensor:
    """Rank each row (last dimension) from 1, tied values sharing their average rank; float64."""
    v = values.detach().to(torch.float64)
    flat = v.reshape(-1, v.shape[-1])  # (R, n)
    rows, n = flat.shape
    ordered, order = flat.sort(dim=1, stable=True)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # each row starts a new group too
    group = starts.flatten().cumsum(0) - 1  # (R * n,) tie group of each slot
    position = torch.arange(1, n + 1, dtype=torch.float64, device=v.device).repeat(rows)
    total = torch.zeros(int(group[-1]) + 1, dtype=torch.float64, device=v.device).index_add_(0, group, position)
    average = (total / torch.bincount(group).to(torch.float64))[group].view(rows, n)
    return torch.empty_like(average).scatter_(1, order, average).view(v.shape)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each example of a with the same example of b, (N,) float64.

    Each example (everything after dim 0) is one ranked sample; ties get average ranks, as
    scipy.stats.spearmanr does. A constant example has no ranking, and one holding a NaN or
    an infinity no meaningful one: the correlation of either is nan.
    """
    if a.shape != b.shape:
        raise ValueError(f"spearman needs maps of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2 or a[0].numel() < 2:
        raise ValueError(
            f"spearman needs a batch (N, ...) of at least 2 values per example, got shape {tuple(a.shape)}"
        )
    ra, rb = rankdata(a.flatten(1)), rankdata(b.flatten(1))  # (N, D)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    rho = (ra * rb).sum(1) / ((ra * ra).sum(1) * (rb * rb).sum(1)).sqrt()
    finite = torch.isfinite(a.flatten(1)).all(1) & torch.isfinite(b.flatten(1)).all(1)
    return torch.where(finite, rho, torch.full_like(rho, float("nan")))
