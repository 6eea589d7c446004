"""What every input attribution shares: its result types, targets, and gradients along a path.

`path_gradients` is the one generator behind gradients, interior gradients, fixed-rule
and adaptive integrated gradients: it yields dF/dx at baseline + a (x - baseline) for any
list of (example, a) points, in batches. `completeness_scale` is the one rule for what a
completeness error is measured against, and when there is nothing to explain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mindscope import inputs
from mindscope._util import eval_mode, frozen_parameters, positive_int
from mindscope.baselines import Baseline, resolve_baseline


def class_probability(logits: Tensor) -> Tensor:
    """F = softmax probability of each class (the walk-through's choice; the default)."""
    return logits.softmax(dim=-1)


def class_logit(logits: Tensor) -> Tensor:
    """F = the raw logit of each class (Captum's usual choice for a classifier's outputs)."""
    return logits


@dataclass(frozen=True)
class Attribution:
    """One attribution map per example, with what is known about its accuracy."""

    attributions: Tensor  # shaped like x: (N, C, H, W), (N, H, W, C), (N, F), (N, L, D), ...
    targets: Tensor  # (N,) int64 class attributed
    predictions: Tensor  # (N,) int64 class predicted at x
    probabilities: Tensor  # (N,) softmax probability of the prediction at x
    steps: Tensor  # (N,) int64 gradient evaluations spent per example
    output: Tensor | None = None  # (N,) F(x) for the target
    baseline_output: Tensor | None = None  # (N,) F(x') for the target
    completeness_error: Tensor | None = None  # (N,) |sum(attributions) - (F(x) - F(x'))|
    # (N,) completeness_error / completeness_scale(F(x), F(x')): / |F(x) - F(x')| unless ill-conditioned,
    # then / (ILL_CONDITIONING_FLOOR * max(|F(x)|, |F(x')|))
    relative_completeness_error: Tensor | None = None
    map_error: Tensor | None = None  # (N,) estimated relative L2 error of the map (tolerance mode)
    # (N,) bool, tolerance mode only: relative completeness error AND map error estimate below the
    # tolerance before max_steps ran out; None for fixed rules, which promise no accuracy
    converged: Tensor | None = None
    # (N,) bool: |F(x) - F(x')| <= ILL_CONDITIONING_FLOOR * max(|F(x)|, |F(x')|): nothing to explain,
    # the baseline already scores about F(x); the map then explains a near-zero change
    ill_conditioned: Tensor | None = None


# A change of F below 1% of F itself is nothing to explain: a baseline that the network
# already scores like x (the black image called "square" with p = 1.000, x too). A relative
# completeness error against such a change measures float rounding, not the quadrature, and
# refining it spends the step budget for nothing; it is judged against 1% of F instead.
ILL_CONDITIONING_FLOOR = 0.01


def completeness_scale(output: Tensor, baseline_output: Tensor) -> tuple[Tensor, Tensor]:
    """Return (scale, ill_conditioned), (N,) each: what a completeness error is relative to.

    With dF = F(x) - F(x') and top = max(|F(x)|, |F(x')|):
    ill_conditioned = |dF| <= ILL_CONDITIONING_FLOOR * top, and
    scale = max(|dF|, ILL_CONDITIONING_FLOOR * top), so relative error = error / scale is the
    usual error / |dF| wherever there is something to explain, and error / (1% of F) where
    there is not. scale is 0 only where F(x) = F(x') = 0.
    """
    delta = (output - baseline_output).abs()
    floor = ILL_CONDITIONING_FLOOR * torch.maximum(output.abs(), baseline_output.abs())
    return torch.maximum(delta, floor), delta <= floor


def relative_to(error: Tensor, scale: Tensor) -> Tensor:
    """Return error / scale, with 0 / 0 = 0 (no error where there is nothing at all)."""
    return torch.where(error == 0, torch.zeros_like(error), error / scale)


@dataclass(frozen=True)
class InteriorGradients:
    """Gradients at baseline + a (x - baseline) for each a, with the prediction there."""

    alphas: Tensor  # (A,) float64
    gradients: Tensor  # (A, *x.shape)
    predictions: Tensor  # (A, N) int64 class predicted at each scaled input
    probabilities: Tensor  # (A, N) softmax probability of that prediction
    target_probabilities: Tensor  # (A, N) softmax probability of the target
    gradient_norms: Tensor  # (A, N) L2 norm of each gradient: the saturation curve
    targets: Tensor  # (N,) int64
    baseline: Tensor  # shaped like x


@contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode with frozen parameters; restore both on exit."""
    with eval_mode(model), frozen_parameters(model), torch.enable_grad():
        yield model


@dataclass(frozen=True)
class Problem:
    x: Tensor  # (N, ...)
    baseline: Tensor  # shaped like x
    targets: Tensor  # (N,) int64
    predictions: Tensor  # (N,)
    probabilities: Tensor  # (N,)
    output: Tensor  # (N,) F(x)
    direction: Tensor  # x - baseline


def check_batch(x: Tensor, max_batch: int) -> None:
    """Check that x is a non-empty float batch (N, ...) of any shape and max_batch a positive int."""
    inputs.check_batch(x)
    positive_int(max_batch, "max_batch")


def batched_logits(model: nn.Module, x: Tensor, max_batch: int) -> Tensor:
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + max_batch]) for i in range(0, x.shape[0], max_batch)])
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(
            f"the model returned scores of shape {tuple(logits.shape)} for x of shape {tuple(x.shape)}; "
            f"it must return one row of scores per example, ({x.shape[0]}, classes). If x is a single "
            "example, add the batch dimension with x.unsqueeze(0); otherwise wrap the model so that "
            "it returns one row of logits per example"
        )
    return logits


def resolve_targets(target: int | Tensor | None, predictions: Tensor, num_classes: int) -> Tensor:
    """Return one int64 target per example: the predictions when `target` is None."""
    n = predictions.shape[0]
    if target is None:
        return predictions.clone()
    if isinstance(target, bool) or not isinstance(target, (int, np.integer, Tensor)):
        raise TypeError(f"target must be None, an int or an int tensor of shape (N,), got {type(target).__name__}")
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer classes, got dtype {target.dtype}")
        if target.dim() == 0:
            target = target.expand(n)
        if target.shape != (n,):
            raise ValueError(f"target must be an int or one class per example (N={n}), got shape {tuple(target.shape)}")
        targets = target.to(device=predictions.device, dtype=torch.int64)
    else:
        targets = torch.full((n,), int(target), dtype=torch.int64, device=predictions.device)
    bad = targets[(targets < 0) | (targets >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"target class {int(bad[0])} is out of range for a model with {num_classes} classes; "
            f"use 0..{num_classes - 1}"
        )
    return targets


def prepare(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None,
    baseline: Baseline,
    output: Callable[[Tensor], Tensor],
    max_batch: int,
) -> Problem:
    check_batch(x, max_batch)
    x = x.detach()
    logits = batched_logits(model, x, max_batch)  # (N, K)
    probabilities, predictions = logits.softmax(dim=-1).max(dim=-1)
    targets = resolve_targets(target, predictions, logits.shape[1])
    scores = output(logits).gather(1, targets[:, None]).squeeze(1)
    base = resolve_baseline(baseline, x)
    return Problem(x, base, targets, predictions, probabilities, scores, x - base)


def path_gradients(
    model: nn.Module,
    problem: Problem,
    example: Tensor,
    alpha: Tensor,
    *,
    output: Callable[[Tensor], Tensor],
    max_batch: int,
) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """Yield (slice of points, gradients, logits) at baseline[e] + alpha (x[e] - baseline[e])."""
    x, base, targets, direction = problem.x, problem.baseline, problem.targets, problem.direction
    shape = (-1,) + (1,) * (x.dim() - 1)
    for start in range(0, example.numel(), max_batch):
        part = slice(start, start + max_batch)
        e, a = example[part], alpha[part].to(x.dtype).view(shape)
        z = torch.addcmul(base[e], a, direction[e]).requires_grad_(True)  # (B, ...) like x
        logits = model(z)
        score = output(logits).gather(1, targets[e][:, None]).sum()
        (grad,) = torch.autograd.grad(score, z)
        yield part, grad, logits.detach()


def baseline_outputs(
    model: nn.Module, problem: Problem, *, output: Callable[[Tensor], Tensor], max_batch: int
) -> Tensor:
    """Return F(baseline) for every example, (N,), from forward passes."""
    logits = batched_logits(model, problem.baseline, max_batch)
    return output(logits).gather(1, problem.targets[:, None]).squeeze(1)
