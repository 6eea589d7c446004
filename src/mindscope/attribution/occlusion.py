"""Occlusion: how much the score drops when a window of the input is replaced by a baseline.

Zeiler & Fergus 2014 ("Visualizing and Understanding Convolutional Networks"). A window
slides over the input; each position gives one occluded copy, and F(x) - F(copy) is
credited to every element the window covered. An element covered by several windows gets
the mean of their drops. No gradients: it works on any model that gives scores, at one
forward pass per window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mindscope._util import positive_int
from mindscope.attribution.core import (
    Attribution,
    batched_logits,
    class_probability,
    input_gradients_only,
    resolve_targets,
)

__all__ = ["occlusion", "window_starts"]

Size = int | Sequence[int]
OcclusionBaseline = float | Tensor | Callable[[Tensor], Tensor] | None


def _sizes(value: Size, what: str, shape: tuple[int, ...], whole: bool) -> tuple[int, ...]:
    """Expand a window or stride given over the trailing dims to all of `shape` (the non-batch dims).

    The dims not given are taken whole (a window) or stepped by 1 (a stride, which then never moves).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if len(shape) > 1:
            raise ValueError(
                f"{what} {value!r} is ambiguous for inputs of shape (N, {', '.join(map(str, shape))}); "
                f"give a tuple over the trailing dims, e.g. (8, 8) for 8x8 pixels of every channel"
            )
        value = (value,)
    given = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    if given is None or not given or len(given) > len(shape):
        raise ValueError(f"{what} must be a tuple of at most {len(shape)} sizes over {shape}, got {value!r}")
    for size in given:
        positive_int(size, what)
    full = tuple(shape[: len(shape) - len(given)]) if whole else (1,) * (len(shape) - len(given))
    return full + given


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Return where windows start along one dim: 0, stride, 2 stride, ... and one flush with the end.

    The last window is moved to end at `size` where the stride does not land there, so that
    every element is covered.
    """
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def _check_input(x: Tensor) -> None:
    """Occlusion needs no gradients or image layout: any non-empty float batch (N, ...) will do."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(
            f"x must be a non-empty batch (N, ...) of examples, got shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0)"
        )


def _baseline(baseline: OcclusionBaseline, x: Tensor) -> Tensor:
    if baseline is None or (isinstance(baseline, (int, float)) and not isinstance(baseline, bool)):
        return torch.full_like(x, float(baseline or 0.0))
    if callable(baseline) and not isinstance(baseline, Tensor):
        baseline = baseline(x)
    if not isinstance(baseline, Tensor):
        raise TypeError(f"baseline must be a number, a tensor or a function of x, got {type(baseline).__name__}")
    try:
        return baseline.detach().to(device=x.device, dtype=x.dtype).expand_as(x)
    except RuntimeError:
        raise ValueError(
            f"baseline of shape {tuple(baseline.shape)} does not broadcast to x's shape {tuple(x.shape)}; "
            "give one example's shape or one per example"
        ) from None


def occlusion(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    *,
    window: Size,
    stride: Size | None = None,
    baseline: OcclusionBaseline = 0.0,
    output: Callable[[Tensor], Tensor] = class_probability,
    batch_size: int = 64,
) -> Attribution:
    """Attribute F(x) to the input by occluding sliding windows with the baseline.

    `window` and `stride` are sizes over x's non-batch dims, e.g. (3, 8, 8) for images
    (N, C, H, W); given over fewer, trailing dims ((8, 8)), the leading dims are taken
    whole. `stride` defaults to `window` (no overlap). Windows start at 0, stride, ... and
    one more ends flush with each dim (`window_starts`), so every element is covered. The
    baseline is what occluded elements become: a number, a tensor shaped like x or one
    example, or a function of x. `batch_size` occluded copies go through the model per
    pass (the memory bound); the result does not depend on it. `steps` counts forward
    passes per example (windows + 1); occlusion makes no completeness claim.
    """
    _check_input(x)
    positive_int(batch_size, "batch_size")
    x = x.detach()
    shape = tuple(x.shape[1:])
    sizes = _sizes(window, "window", shape, whole=True)
    if any(w > s for w, s in zip(sizes, shape)):
        raise ValueError(f"window {sizes} is larger than one example {shape}; use a smaller window")
    strides = sizes if stride is None else _sizes(stride, "stride", shape, whole=False)
    # The windows are a grid: per dim, which elements each start covers, (starts, size) bool.
    lines = [_covered(n, w, s, x.device) for n, w, s in zip(shape, sizes, strides)]
    grid = tuple(line.shape[0] for line in lines)
    count = _outer([line.sum(0).to(x.dtype) for line in lines])  # (...) windows covering each element
    base = _baseline(baseline, x)
    n, k = x.shape[0], math.prod(grid)
    with input_gradients_only(model), torch.no_grad():
        logits = batched_logits(model, x, batch_size)
        probabilities, predictions = logits.softmax(dim=-1).max(dim=-1)
        targets = resolve_targets(target, predictions, logits.shape[1])
        scores = output(logits).gather(1, targets[:, None]).squeeze(1)  # (N,)
        total = torch.zeros_like(x)
        for start in range(0, n * k, batch_size):
            pair = torch.arange(start, min(start + batch_size, n * k), device=x.device)  # example-major
            example, index = pair // k, torch.unravel_index(pair % k, grid)
            mask = _outer([line[i] for line, i in zip(lines, index)], batched=True)  # (B, ...) occluded
            copies = torch.where(mask, base[example], x[example])
            drop = scores[example] - output(model(copies)).gather(1, targets[example][:, None]).squeeze(1)
            total.index_add_(0, example, mask * drop.view((-1,) + (1,) * len(shape)))
    steps = torch.full((n,), k + 1, dtype=torch.int64, device=x.device)
    return Attribution(total / count, targets, predictions, probabilities, steps, output=scores)


def _covered(size: int, window: int, stride: int, device: torch.device) -> Tensor:
    """Return (starts, size) bool: which elements of one dim each window start covers."""
    starts = torch.tensor(window_starts(size, window, stride), device=device)[:, None]
    position = torch.arange(size, device=device)[None, :]
    return (position >= starts) & (position < starts + window)


def _outer(factors: list[Tensor], *, batched: bool = False) -> Tensor:
    """Multiply 1-D factors (or (B, n_d) with `batched`) into one tensor over all dims, (...) or (B, ...)."""
    lead = 1 if batched else 0
    result = None
    for d, factor in enumerate(factors):
        shape = [factor.shape[0]] * lead + [1] * len(factors)
        shape[lead + d] = factor.shape[-1]
        part = factor.reshape(shape)
        result = part if result is None else result * part
    return result
