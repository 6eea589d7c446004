"""Baselines x' for path methods, in the same (normalised) input space as x.

A baseline is a tensor shaped like x (or broadcastable to it), a function of x, or None
for zeros. "Black" means black *pixels*: with a normalised model input that is
(0 - mean) / std, not zeros, which is why the pixel-space baselines take a `Normalization`.

x may be any batch the looks take; `layout` says where its channels are ("NCHW", "NHWC",
"NF", "NLD", read by `mindscope.inputs.batch_layout`'s rule when not given). It matters only
where a per-channel statistic is applied: a `Normalization`'s mean and std, one value per
channel (per feature of a row, per value of a sequence position). Blurring is for images only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mindscope.inputs import batch_layout, channel_axis

if TYPE_CHECKING:
    from mindscope.data import Normalization

Baseline = Tensor | Callable[[Tensor], Tensor] | None

__all__ = ["NAMES", "Baseline", "black", "blurred", "dataset_mean", "named", "resolve_baseline", "uniform_noise"]

NAMES = ("black", "mean", "noise", "blur")  # what the CLI's --baseline and a scan call them


def _statistic(values: tuple[float, ...], x: Tensor, layout: str | None, what: str) -> Tensor:
    """Return per-channel `values` shaped to broadcast over x along its channel axis."""
    layout = batch_layout(x.shape, layout)
    axis = channel_axis(layout)
    channels = x.shape[-1] if axis is None else x.shape[axis]
    if len(values) != channels:
        raise ValueError(
            f"the normalisation's {what} has {len(values)} values but x of shape {tuple(x.shape)} has "
            f"{channels} channels ({layout}); give the normalisation of this model's input, or the right layout"
        )
    shape = [1] * x.dim()
    shape[x.dim() - 1 if axis is None else axis] = channels
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(shape)


def _normalise(pixels: Tensor, normalization: Normalization, layout: str | None) -> Tensor:
    """Apply the normalisation along x's channel axis: (pixels - mean) / std."""
    mean = _statistic(tuple(normalization.mean), pixels, layout, "mean")
    return (pixels - mean) / _statistic(tuple(normalization.std), pixels, layout, "std")


def black(x: Tensor, normalization: Normalization | None = None, *, layout: str | None = None) -> Tensor:
    """Return black images (pixel value 0) in x's space: (0 - mean) / std, not zeros."""
    pixels = torch.zeros_like(x)
    return pixels if normalization is None else _normalise(pixels, normalization, layout)


def dataset_mean(
    x: Tensor, normalization: Normalization, *, mean: Sequence[float] | None = None, layout: str | None = None
) -> Tensor:
    """Return images filled with the dataset's mean pixel per channel, in x's space.

    `mean` is that pixel in [0, 1] units; by default the normalisation's mean, which is the
    data's own where the normalisation was fitted on it (a run of ours). A model trained
    elsewhere normalises with its card's statistics, or none (mean 0: black), so give `mean`.
    """
    mean = _statistic(tuple(normalization.mean if mean is None else mean), x, layout, "mean")
    return _normalise(mean.expand_as(x).contiguous(), normalization, layout)


def uniform_noise(
    x: Tensor, normalization: Normalization | None = None, *, seed: int = 0, layout: str | None = None
) -> Tensor:
    """Return images of uniform noise in [0, 1] pixel space, in x's space (seeded, device-independent)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x)
    return pixels if normalization is None else _normalise(pixels, normalization, layout)


def blurred(x: Tensor, *, sigma: float = 3.0, layout: str | None = None) -> Tensor:
    """Return a Gaussian-blurred copy of image batch x (sigma in pixels, reflected borders).

    The kernel sums to 1, so blurring commutes with per-channel normalisation.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(getattr(x, "shape", ()))
        raise ValueError(
            f"blurred needs images (N, C, H, W) or (N, H, W, C), got shape {shape}; a blur has no "
            "meaning for rows or sequences: use black (zeros) or dataset_mean there"
        )
    if not sigma > 0:
        raise ValueError(f"blurred needs sigma > 0 (in pixels), got {sigma}")
    if batch_layout(x.shape, layout) == "NHWC":
        return blurred(x.movedim(-1, 1), sigma=sigma).movedim(1, -1)
    radius = min(int(3 * sigma + 0.5), min(x.shape[-2:]) - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (K,)
    c = x.shape[1]
    out = nn.functional.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = nn.functional.pad(out, (0, 0, radius, radius), mode="reflect")
    return nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def named(
    name: str, normalization: Normalization, *, pixel_mean: Sequence[float] | None = None
) -> Callable[[Tensor], Tensor]:
    """Return x -> x' for one of NAMES, in the model's normalised input space (`pixel_mean`: as dataset_mean's)."""
    makers = {
        "black": lambda x: black(x, normalization),
        "mean": lambda x: dataset_mean(x, normalization, mean=pixel_mean),
        "noise": lambda x: uniform_noise(x, normalization),
        "blur": blurred,
    }
    if name not in makers:
        raise ValueError(f"unknown baseline {name!r}; use one of: {', '.join(NAMES)}")
    return makers[name]


def resolve_baseline(baseline: Baseline, x: Tensor) -> Tensor:
    """Return the baseline as a tensor of x's shape: zeros for None, f(x) for a function."""
    if baseline is None:
        return torch.zeros_like(x)
    if callable(baseline) and not isinstance(baseline, Tensor):
        baseline = baseline(x)
    if not isinstance(baseline, Tensor):
        raise TypeError(f"baseline must be None, a tensor or a function of x, got {type(baseline).__name__}")
    try:
        return baseline.detach().to(device=x.device, dtype=x.dtype).expand_as(x).contiguous()
    except RuntimeError:
        raise ValueError(
            f"baseline of shape {tuple(baseline.shape)} does not broadcast to x's shape "
            f"{tuple(x.shape)}; give one example {tuple(x.shape[1:])} or one per example"
        ) from None
