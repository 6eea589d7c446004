"""What the trust checks share: a method's type, its map as a tensor, fixed targets, rank correlation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mindscope.attribution import Attribution, InteriorGradients, check_batch, input_gradients_only, resolve_targets

Method = Callable[[nn.Module, Tensor, Tensor], "Attribution | Tensor"]
Progress = Callable[[str], None]


def attribution_tensor(result: Attribution | InteriorGradients | Tensor) -> Tensor:
    """Return the map of a method's result, (N, C, H, W) or (N, H, W), detached."""
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


def check_images(x: Tensor) -> None:
    check_batch(x, 1)


def pixel_map(
    attributions: Tensor, shape: Sequence[int], *, name: str = "attributions", against: str = "images"
) -> Tensor:
    """Sum a map over channels to one value per pixel, (N, H, W); check it fits images of `shape`."""
    n, _, h, w = shape
    if not isinstance(attributions, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(attributions).__name__}")
    if attributions.dim() == 4 and (attributions.shape[0], *attributions.shape[2:]) == (n, h, w):
        return attributions.sum(dim=1)
    if attributions.dim() == 3 and tuple(attributions.shape) == (n, h, w):
        return attributions
    raise ValueError(
        f"{name} of shape {tuple(attributions.shape)} do not fit the {against} (N={n}, H={h}, "
        f"W={w}); give one map per image, (N, C, H, W) or (N, H, W)"
    )


def fixed_targets(model: nn.Module, x: Tensor, target: int | Tensor | None, max_batch: int) -> Tensor:
    with input_gradients_only(model), torch.no_grad():
        logits = torch.cat([model(x[i : i + max_batch]) for i in range(0, x.shape[0], max_batch)])
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
    scipy.stats.spearmanr does. A constant example has no ranking: its correlation is nan.
    """
    if a.shape != b.shape:
        raise ValueError(f"spearman needs maps of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2 or a[0].numel() < 2:
        raise ValueError(
            f"spearman needs a batch (N, ...) of at least 2 values per example, got shape {tuple(a.shape)}"
        )
    ra, rb = rankdata(a.flatten(1)), rankdata(b.flatten(1))  # (N, D)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / ((ra * ra).sum(1) * (rb * rb).sum(1)).sqrt()
