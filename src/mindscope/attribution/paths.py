"""One driver for every path integral: a fixed rule, or adaptive Simpson to a tolerance.

A path method states its integrand as `evaluate(example, alpha)`, a generator of
(slice of points, values) in batches, and what is known exactly about the result:
sum(weights * integral) = totals (for integrated gradients, weights = x - x' and
totals = F(x) - F(x')). `integrate_path` applies a quadrature rule once, or hands the
integrand to `quadrature.adaptive_simpson`, which bisects panels per example until the
completeness and map errors are below the tolerance. Input, layer and neuron integrated
gradients and conductance differ only in their integrand and weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mindscope._util import positive_int
from mindscope.attribution.core import relative_to
from mindscope.quadrature import Quadrature, adaptive_simpson, gauss_legendre, is_simpson, simpson

Integrand = Callable[[Tensor, Tensor], Iterator[tuple[slice, Tensor]]]


def check_integration(rule: Quadrature | None, tolerance: float | None, max_steps: int) -> None:
    """Check the options every path method shares; raise one clear error for a bad one."""
    if rule is not None and not isinstance(rule, Quadrature):
        raise TypeError(f"rule must be a Quadrature such as gauss_legendre(32), got {type(rule).__name__}")
    if tolerance is not None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 0:
            raise ValueError(f"tolerance must be a positive number such as 0.01, got {tolerance!r}")
        if rule is not None and not is_simpson(rule):
            raise ValueError(
                f"with tolerance, rule must be a Simpson rule (the panels it refines), got {rule}; "
                "pass rule=simpson(n) or drop tolerance to use a fixed rule"
            )
    positive_int(max_steps, "max_steps")


@dataclass(frozen=True)
class PathIntegral:
    """The integral of an integrand along every example's path, with what it cost."""

    integral: Tensor  # (N, ...) like weights
    steps: Tensor  # (N,) int64 integrand evaluations
    map_error: Tensor | None  # (N,) estimated relative L2 error of weights * integral (tolerance mode)


def integrate_path(
    evaluate: Integrand,
    weights: Tensor,
    totals: Tensor,
    scale: Tensor,
    ill_conditioned: Tensor,
    *,
    rule: Quadrature | None,
    tolerance: float | None,
    max_steps: int,
) -> PathIntegral:
    """Integrate over alpha in [0, 1], per example: `rule` once, or adaptively to `tolerance`.

    Without tolerance the rule (default gauss_legendre(32)) runs once, the values summed
    as they come. With it, each example starts from the Simpson rule `rule` (default
    simpson(2)) and is refined until |sum(weights * integral) - totals| < tolerance * scale
    and, except where ill-conditioned, the map error estimate is below tolerance too.
    """
    n, device = weights.shape[0], weights.device
    if tolerance is None:
        rule = gauss_legendre(32) if rule is None else rule
        k = len(rule)
        example = torch.arange(n, device=device).repeat_interleave(k)  # example-major
        alpha = torch.tensor(rule.nodes, device=device).repeat(n)
        weight = torch.tensor(rule.weights, device=device).repeat(n).to(weights.dtype)
        acc = torch.zeros_like(weights)
        shape = (-1,) + (1,) * (weights.dim() - 1)
        for part, values in evaluate(example, alpha):
            acc.index_add_(0, example[part], values * weight[part].view(shape))
        return PathIntegral(acc, torch.full((n,), k, dtype=torch.int64, device=device), None)

    def evaluate_all(example: np.ndarray, alpha: np.ndarray) -> Tensor:
        e, a = torch.as_tensor(example, device=device), torch.as_tensor(alpha, device=device)
        return torch.cat([values for _, values in evaluate(e, a)])

    integral, steps, map_error = adaptive_simpson(
        evaluate_all,
        weights,
        totals.tolist(),
        tolerance=float(tolerance),
        max_steps=max_steps,
        start=simpson(2) if rule is None else rule,
        scales=scale.tolist(),
        check_map=(~ill_conditioned).tolist(),
    )
    return PathIntegral(integral, torch.as_tensor(steps, device=device), torch.as_tensor(map_error, device=device))


def completeness_errors(
    attributions: Tensor, change: Tensor, scale: Tensor, map_error: Tensor | None, tolerance: float | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Return (|sum(attributions) - change|, that / scale, converged or None), (N,) each."""
    error = (attributions.flatten(1).sum(1) - change).abs()
    relative = relative_to(error, scale)
    converged = None if tolerance is None or map_error is None else (relative < tolerance) & (map_error < tolerance)
    return error, relative, converged
