"""Input attributions: gradients, interior gradients, integrated gradients, SmoothGrad.

Integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep
Networks") attribute F(x) - F(x') to the inputs as (x - x') * integral_0^1 g(a) da, with
g(a) the input gradient of F at x' + a (x - x'). The integral is a quadrature over
interior gradients; with `tolerance` it is refined per example by bisecting panels
where the integrand changes, until completeness and the map itself have converged.
SmoothGrad (Smilkov et al. 2017) averages any of these over noisy copies of the input.

x is any float batch (N, ...): images channels first or last, tabular rows (N, F),
sequences (N, L, D); the model must return one row of scores per example, and every map
comes back shaped like x. None of them needs to know the layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from mindscope._util import positive_int
from mindscope.attribution.core import (
    Attribution,
    InteriorGradients,
    Problem,
    baseline_outputs,
    batched_logits,
    check_batch,
    class_probability,
    completeness_scale,
    input_gradients_only,
    path_gradients,
    prepare,
    resolve_targets,
)
from mindscope.attribution.paths import check_integration, completeness_errors, integrate_path
from mindscope.baselines import Baseline
from mindscope.quadrature import Quadrature

WALKTHROUGH_ALPHAS: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.1, 0.5, 0.6, 0.7, 0.8, 1.0)


def gradients(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    *,
    output: Callable[[Tensor], Tensor] = class_probability,
    max_batch: int = 128,
) -> Attribution:
    """Return the plain input gradient dF_target/dx (saliency), one step per example."""
    with input_gradients_only(model):
        problem = prepare(model, x, target, None, output, max_batch)
        n = x.shape[0]
        grads = _gradients_at(
            model,
            problem,
            torch.arange(n, device=x.device),
            torch.ones(n, dtype=torch.float64, device=x.device),
            output=output,
            max_batch=max_batch,
        )
    return Attribution(
        grads,
        problem.targets,
        problem.predictions,
        problem.probabilities,
        torch.ones(n, dtype=torch.int64, device=x.device),
        output=problem.output,
    )


def interior_gradients(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    *,
    alphas: Sequence[float] = WALKTHROUGH_ALPHAS,
    baseline: Baseline = None,
    output: Callable[[Tensor], Tensor] = class_probability,
    max_batch: int = 128,
) -> InteriorGradients:
    """Return the gradient, prediction and target probability at baseline + a (x - baseline) per a.

    The target is fixed by the prediction at x (a = 1) unless given, so that the
    saturation curve follows one class while the prediction at small a may differ.
    """
    alpha = torch.as_tensor(np.asarray(alphas, dtype=np.float64))
    if alpha.dim() != 1 or alpha.numel() == 0 or not torch.isfinite(alpha).all():
        raise ValueError(f"alphas must be a non-empty sequence of finite numbers, got {alphas!r}")
    with input_gradients_only(model):
        problem = prepare(model, x, target, baseline, output, max_batch)
        n, k = x.shape[0], alpha.numel()
        example = torch.arange(n, device=x.device).repeat(k)  # alpha-major: (A * N,)
        alpha_of = alpha.to(x.device).repeat_interleave(n)
        grads, logits = [], []
        for _, g, lg in path_gradients(model, problem, example, alpha_of, output=output, max_batch=max_batch):
            grads.append(g)
            logits.append(lg)
    grad = torch.cat(grads).view(k, *x.shape)  # (A, *x.shape)
    probs = torch.cat(logits).softmax(dim=-1).view(k, n, -1)  # (A, N, K)
    top, predicted = probs.max(dim=-1)
    target_probs = probs.gather(2, problem.targets.view(1, n, 1).expand(k, n, 1)).squeeze(2)
    return InteriorGradients(
        alpha, grad, predicted, top, target_probs, grad.flatten(2).norm(dim=2), problem.targets, problem.baseline
    )


def _gradients_at(
    model: nn.Module,
    problem: Problem,
    example: Tensor,
    alpha: Tensor,
    *,
    output: Callable[[Tensor], Tensor],
    max_batch: int,
) -> Tensor:
    """Return the input gradients at the given path points, (J, ...) like x[0]."""
    return torch.cat(
        [g for _, g, _ in path_gradients(model, problem, example, alpha, output=output, max_batch=max_batch)]
    )


def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    *,
    baseline: Baseline = None,
    rule: Quadrature | None = None,
    tolerance: float | None = None,
    max_steps: int = 2048,
    max_batch: int = 128,
    output: Callable[[Tensor], Tensor] = class_probability,
) -> Attribution:
    """Attribute F_target(x) - F_target(baseline) to the inputs with integrated gradients.

    F is `output(model(.))[target]`: the softmax probability by default, or pass
    `output=class_logit`. The baseline is zeros of x's space unless given (use
    `black(x, normalization)` for black pixels).

    Without `tolerance`, the integral is `rule` (default gauss_legendre(32)) applied once:
    len(rule) gradient steps per example.
    With `tolerance`, each example starts from the Simpson rule `rule` (default
    simpson(2), 5 steps) and bisects, per example, the panels whose estimated error is
    largest (where the integrand changes), until the relative completeness error AND the
    map error estimate are both below `tolerance`, or `max_steps` gradients were spent.
    Bisection nests Simpson's rule, so no gradient is thrown away.

    Completeness is relative to `completeness_scale(F(x), F(baseline))`: |F(x) - F(baseline)|,
    except where that is at most 1% (ILL_CONDITIONING_FLOOR) of max(|F(x)|, |F(baseline)|).
    Such an example is `ill_conditioned` (nothing to explain: the baseline already scores
    about F(x)); its error is judged against 1% of F, and tolerance mode refines it only
    until that is met, not for the map, whose error estimate is still reported.

    Guarantees: `completeness_error` is measured, not estimated: sum(attributions) minus
    F(x) - F(baseline) from forward passes (exact up to floating point). It does not prove
    the map is right: errors in different pixels can cancel. `map_error` (tolerance mode
    only) estimates ||map - exact map|| / ||map|| from the change each panel showed when last
    bisected; it is an estimate, usually pessimistic, not a bound. `converged` (tolerance
    mode only) says both were below `tolerance`; it is False where `max_steps` ran out
    first, and for an ill-conditioned example whose map was not refined that far. Tolerance
    mode keeps each example's gradients (steps x input size) until it is done.
    """
    check_integration(rule, tolerance, max_steps)
    with input_gradients_only(model):
        problem = prepare(model, x, target, baseline, output, max_batch)
        baseline_output = baseline_outputs(model, problem, output=output, max_batch=max_batch)
        scale, ill_conditioned = completeness_scale(problem.output, baseline_output)

        def gradients(example: Tensor, alpha: Tensor) -> Iterator[tuple[slice, Tensor]]:
            for part, grad, _ in path_gradients(model, problem, example, alpha, output=output, max_batch=max_batch):
                yield part, grad

        change = problem.output - baseline_output
        path = integrate_path(
            gradients, problem.direction, change, scale, ill_conditioned,
            rule=rule, tolerance=tolerance, max_steps=max_steps,
        )  # fmt: skip
    attributions = problem.direction * path.integral  # (N, C, H, W)
    error, relative, converged = completeness_errors(attributions, change, scale, path.map_error, tolerance)
    return Attribution(
        attributions,
        problem.targets,
        problem.predictions,
        problem.probabilities,
        path.steps,
        problem.output,
        baseline_output,
        error,
        relative,
        path.map_error,
        converged,
        ill_conditioned,
    )


def smoothgrad(
    method: Callable[..., Attribution | InteriorGradients],
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    *,
    samples: int = 16,
    noise: float = 0.15,
    seed: int = 0,
    **options: object,
) -> Attribution | InteriorGradients:
    """Average `method(model, x + noise, target, **options)` over `samples` noisy copies of x.

    The noise is Gaussian with std `noise` times each example's input range (max - min).
    Targets are fixed from the clean x, so every copy explains the same class. Completeness
    does not carry over to the average, so its fields are None; `steps` is the total.
    """
    positive_int(samples, "samples")
    if not isinstance(noise, (int, float)) or noise < 0:
        raise ValueError(f"noise is a fraction of the input range and must be >= 0, got {noise!r}")
    check_batch(x, 1)
    x = x.detach()
    with input_gradients_only(model):
        logits = batched_logits(model, x, options.get("max_batch", 128))  # type: ignore[arg-type]
    probabilities, predictions = logits.softmax(dim=-1).max(dim=-1)
    targets = resolve_targets(target, predictions, logits.shape[1])
    flat = x.flatten(1)
    sigma = (noise * (flat.max(1).values - flat.min(1).values)).view((-1,) + (1,) * (x.dim() - 1))
    generator = torch.Generator().manual_seed(seed)
    # All noisy copies go through `method` as one batch of samples * N examples (it splits
    # them by max_batch), sample-major, so copy s of example i sits at s * N + i.
    eps = torch.stack([torch.randn(x.shape, generator=generator, dtype=torch.float64) for _ in range(samples)])
    noisy = (x + sigma * eps.to(x)).flatten(0, 1)  # (S * N, ...)
    result = method(model, noisy, targets.repeat(samples), **options)
    n = x.shape[0]

    def per_sample(t: Tensor, dim: int = 0) -> Tensor:  # split dim into (S, N)
        return t.unflatten(dim, (samples, n))

    if isinstance(result, InteriorGradients):
        grads = per_sample(result.gradients, 1).mean(1)  # (A, *x.shape)
        return replace(
            result,
            gradients=grads,
            gradient_norms=grads.flatten(2).norm(dim=2),
            predictions=per_sample(result.predictions, 1).mode(1).values,
            probabilities=per_sample(result.probabilities, 1).mean(1),
            target_probabilities=per_sample(result.target_probabilities, 1).mean(1),
            targets=targets,
            baseline=per_sample(result.baseline)[0],
        )
    if not isinstance(result, Attribution):
        raise TypeError(f"method must return an Attribution or InteriorGradients, got {type(result).__name__}")
    return Attribution(
        per_sample(result.attributions).mean(0), targets, predictions, probabilities, per_sample(result.steps).sum(0)
    )
