"""Input attributions: gradients, interior gradients, integrated gradients, SmoothGrad.

Integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep
Networks") attribute F(x) - F(x') to the inputs as (x - x') * integral_0^1 g(a) da, with
g(a) the input gradient of F at x' + a (x - x'). The integral is a quadrature over
interior gradients; with `tolerance` it is refined per example by bisecting panels
where the integrand changes, until completeness and the map itself have converged.
SmoothGrad (Smilkov et al. 2017) averages any of these over noisy copies of the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from mindscope.quadrature import Quadrature, adaptive_simpson, gauss_legendre, is_simpson, simpson

if TYPE_CHECKING:
    from mindscope.data import Normalization

WALKTHROUGH_ALPHAS: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.1, 0.5, 0.6, 0.7, 0.8, 1.0)
Baseline = Tensor | Callable[[Tensor], Tensor] | None


def class_probability(logits: Tensor) -> Tensor:
    """F = softmax probability of each class (the walk-through's choice; the default)."""
    return logits.softmax(dim=-1)


def class_logit(logits: Tensor) -> Tensor:
    """F = the raw logit of each class (Captum's usual choice for a classifier's outputs)."""
    return logits


# --- baselines: x' in the same (normalised) space as x ---------------------------------


def black(x: Tensor, normalization: Normalization | None = None) -> Tensor:
    """Return black images (pixel value 0) in x's space: (0 - mean) / std, not zeros."""
    pixels = torch.zeros_like(x)
    return pixels if normalization is None else normalization.apply(pixels)


def dataset_mean(x: Tensor, normalization: Normalization) -> Tensor:
    """Return images filled with the dataset's mean pixel per channel, in x's space."""
    mean = torch.as_tensor(normalization.mean, dtype=x.dtype, device=x.device)
    return normalization.apply(mean.view(1, -1, *([1] * (x.dim() - 2))).expand_as(x).contiguous())


def uniform_noise(x: Tensor, normalization: Normalization | None = None, *, seed: int = 0) -> Tensor:
    """Return images of uniform noise in [0, 1] pixel space, in x's space (seeded, device-independent)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x)
    return pixels if normalization is None else normalization.apply(pixels)


def blurred(x: Tensor, *, sigma: float = 3.0) -> Tensor:
    """Return a Gaussian-blurred copy of x (sigma in pixels, reflected borders).

    The kernel sums to 1, so blurring commutes with per-channel normalisation.
    """
    if x.dim() != 4 or sigma <= 0:
        raise ValueError(f"blurred needs images (N, C, H, W) and sigma > 0, got shape {tuple(x.shape)}, sigma {sigma}")
    radius = min(int(3 * sigma + 0.5), min(x.shape[-2:]) - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (K,)
    c = x.shape[1]
    out = nn.functional.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = nn.functional.pad(out, (0, 0, radius, radius), mode="reflect")
    return nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


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
            f"{tuple(x.shape)}; give one image (C, H, W) or one per example"
        ) from None


@dataclass(frozen=True)
class Attribution:
    """One attribution map per example, with what is known about its accuracy."""

    attributions: Tensor  # (N, C, H, W) like x
    targets: Tensor  # (N,) int64 class attributed
    predictions: Tensor  # (N,) int64 class predicted at x
    probabilities: Tensor  # (N,) softmax probability of the prediction at x
    steps: Tensor  # (N,) int64 gradient evaluations spent per example
    output: Tensor | None = None  # (N,) F(x) for the target
    baseline_output: Tensor | None = None  # (N,) F(x') for the target
    completeness_error: Tensor | None = None  # (N,) |sum(attributions) - (F(x) - F(x'))|
    relative_completeness_error: Tensor | None = None  # (N,) the above / |F(x) - F(x')|
    map_error: Tensor | None = None  # (N,) estimated relative L2 error of the map (tolerance mode)


@dataclass(frozen=True)
class InteriorGradients:
    """Gradients at baseline + a (x - baseline) for each a, with the prediction there."""

    alphas: Tensor  # (A,) float64
    gradients: Tensor  # (A, N, C, H, W)
    predictions: Tensor  # (A, N) int64 class predicted at each scaled input
    probabilities: Tensor  # (A, N) softmax probability of that prediction
    target_probabilities: Tensor  # (A, N) softmax probability of the target
    gradient_norms: Tensor  # (A, N) L2 norm of each gradient: the saturation curve
    targets: Tensor  # (N,) int64
    baseline: Tensor  # (N, C, H, W)


@contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode with frozen parameters; restore both on exit."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield model
    finally:
        for module, training in modes:
            module.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


@dataclass(frozen=True)
class _Problem:
    x: Tensor  # (N, C, H, W)
    baseline: Tensor  # (N, C, H, W)
    targets: Tensor  # (N,) int64
    predictions: Tensor  # (N,)
    probabilities: Tensor  # (N,)
    output: Tensor  # (N,) F(x)
    direction: Tensor  # (N, C, H, W) x - baseline


def check_batch(x: Tensor, max_batch: int) -> None:
    """Check that x is a non-empty float batch (N, C, H, W) and max_batch a positive int."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point tensor, got {type(x).__name__} "
            f"{getattr(x, 'dtype', '')}; convert images with .float()"
        )
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(
            f"x must be a non-empty batch of images of shape (N, C, H, W), got shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0)"
        )
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")


def _logits(model: nn.Module, x: Tensor, max_batch: int) -> Tensor:
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + max_batch]) for i in range(0, x.shape[0], max_batch)])
    if logits.dim() != 2:
        raise ValueError(
            f"the model must return scores of shape (N, classes), got {tuple(logits.shape)}; "
            "wrap it so that it returns one row of logits per example"
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


def _prepare(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None,
    baseline: Baseline,
    output: Callable[[Tensor], Tensor],
    max_batch: int,
) -> _Problem:
    check_batch(x, max_batch)
    x = x.detach()
    logits = _logits(model, x, max_batch)  # (N, K)
    probabilities, predictions = logits.softmax(dim=-1).max(dim=-1)
    targets = resolve_targets(target, predictions, logits.shape[1])
    scores = output(logits).gather(1, targets[:, None]).squeeze(1)
    base = resolve_baseline(baseline, x)
    return _Problem(x, base, targets, predictions, probabilities, scores, x - base)


def _path_gradients(
    model: nn.Module,
    problem: _Problem,
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
        z = torch.addcmul(base[e], a, direction[e]).requires_grad_(True)  # (B, C, H, W)
        logits = model(z)
        score = output(logits).gather(1, targets[e][:, None]).sum()
        (grad,) = torch.autograd.grad(score, z)
        yield part, grad, logits.detach()


def _baseline_outputs(
    model: nn.Module, problem: _Problem, *, output: Callable[[Tensor], Tensor], max_batch: int
) -> Tensor:
    """Return F(baseline) for every example, (N,), from forward passes."""
    logits = _logits(model, problem.baseline, max_batch)
    return output(logits).gather(1, problem.targets[:, None]).squeeze(1)


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
        problem = _prepare(model, x, target, None, output, max_batch)
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
        problem = _prepare(model, x, target, baseline, output, max_batch)
        n, k = x.shape[0], alpha.numel()
        example = torch.arange(n, device=x.device).repeat(k)  # alpha-major: (A * N,)
        alpha_of = alpha.to(x.device).repeat_interleave(n)
        grads, logits = [], []
        for _, g, lg in _path_gradients(model, problem, example, alpha_of, output=output, max_batch=max_batch):
            grads.append(g)
            logits.append(lg)
    grad = torch.cat(grads).view(k, *x.shape)  # (A, N, C, H, W)
    probs = torch.cat(logits).softmax(dim=-1).view(k, n, -1)  # (A, N, K)
    top, predicted = probs.max(dim=-1)
    target_probs = probs.gather(2, problem.targets.view(1, n, 1).expand(k, n, 1)).squeeze(2)
    return InteriorGradients(
        alpha, grad, predicted, top, target_probs, grad.flatten(2).norm(dim=2), problem.targets, problem.baseline
    )


def _integrate_rule(
    model: nn.Module, problem: _Problem, rule: Quadrature, *, output: Callable[[Tensor], Tensor], max_batch: int
) -> Tensor:
    """Return rule's integral of the input gradient along every path, (N, C, H, W).

    The N x len(rule) gradients run in batches of max_batch and are summed as they come.
    """
    x, k = problem.x, len(rule)
    example = torch.arange(x.shape[0], device=x.device).repeat_interleave(k)  # example-major
    alpha = torch.tensor(rule.nodes, device=x.device).repeat(x.shape[0])
    weight = torch.tensor(rule.weights, device=x.device).repeat(x.shape[0]).to(x.dtype)
    acc = torch.zeros_like(x)
    shape = (-1,) + (1,) * (x.dim() - 1)
    for part, grad, _ in _path_gradients(model, problem, example, alpha, output=output, max_batch=max_batch):
        acc.index_add_(0, example[part], grad * weight[part].view(shape))
    return acc


def _gradients_at(
    model: nn.Module,
    problem: _Problem,
    example: Tensor,
    alpha: Tensor,
    *,
    output: Callable[[Tensor], Tensor],
    max_batch: int,
) -> Tensor:
    """Return the input gradients at the given path points, (J, C, H, W)."""
    return torch.cat(
        [g for _, g, _ in _path_gradients(model, problem, example, alpha, output=output, max_batch=max_batch)]
    )


def _integrate_adaptive(
    model: nn.Module,
    problem: _Problem,
    baseline_output: Tensor,
    start: Quadrature,
    tolerance: float,
    max_steps: int,
    *,
    output: Callable[[Tensor], Tensor],
    max_batch: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return (integral of g per example, steps, map error estimate) from adaptive Simpson panels."""
    x = problem.x

    def evaluate(example: np.ndarray, alpha: np.ndarray) -> Tensor:
        return _gradients_at(
            model,
            problem,
            torch.as_tensor(example, device=x.device),
            torch.as_tensor(alpha, device=x.device),
            output=output,
            max_batch=max_batch,
        )

    integral, steps, map_error = adaptive_simpson(
        evaluate,
        problem.direction,
        (problem.output - baseline_output).tolist(),
        tolerance=tolerance,
        max_steps=max_steps,
        start=start,
    )
    return integral, torch.as_tensor(steps, device=x.device), torch.as_tensor(map_error, device=x.device)


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

    Guarantees: `completeness_error` is measured, not estimated: sum(attributions) minus
    F(x) - F(baseline) from forward passes (exact up to floating point). It does not prove
    the map is right: errors in different pixels can cancel. `map_error` (tolerance mode
    only) estimates ||map - exact map|| / ||map|| from the change each panel showed when last
    bisected; it is an estimate, usually pessimistic, not a bound. Examples that hit
    `max_steps` report errors above `tolerance`: check them. Tolerance mode keeps each
    example's gradients (steps x input size) until it is done.
    """
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
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    with input_gradients_only(model):
        problem = _prepare(model, x, target, baseline, output, max_batch)
        n = x.shape[0]
        baseline_output = _baseline_outputs(model, problem, output=output, max_batch=max_batch)
        map_error = None
        if tolerance is None:
            rule = gauss_legendre(32) if rule is None else rule
            integral = _integrate_rule(model, problem, rule, output=output, max_batch=max_batch)
            steps = torch.full((n,), len(rule), dtype=torch.int64, device=x.device)
        else:
            start = simpson(2) if rule is None else rule
            integral, steps, map_error = _integrate_adaptive(
                model, problem, baseline_output, start, float(tolerance), max_steps, output=output, max_batch=max_batch
            )
    attributions = problem.direction * integral  # (N, C, H, W)
    delta_f = problem.output - baseline_output
    error = (attributions.flatten(1).sum(1) - delta_f).abs()
    relative = torch.where(error == 0, torch.zeros_like(error), error / delta_f.abs())  # 0/0: nothing to explain
    return Attribution(
        attributions,
        problem.targets,
        problem.predictions,
        problem.probabilities,
        steps,
        problem.output,
        baseline_output,
        error,
        relative,
        map_error,
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
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if not isinstance(noise, (int, float)) or noise < 0:
        raise ValueError(f"noise is a fraction of the input range and must be >= 0, got {noise!r}")
    check_batch(x, 1)
    x = x.detach()
    with input_gradients_only(model):
        logits = _logits(model, x, options.get("max_batch", 128))  # type: ignore[arg-type]
    probabilities, predictions = logits.softmax(dim=-1).max(dim=-1)
    targets = resolve_targets(target, predictions, logits.shape[1])
    flat = x.flatten(1)
    sigma = (noise * (flat.max(1).values - flat.min(1).values)).view((-1,) + (1,) * (x.dim() - 1))
    generator = torch.Generator().manual_seed(seed)
    # All noisy copies go through `method` as one batch of samples * N examples (it splits
    # them by max_batch), sample-major, so copy s of example i sits at s * N + i.
    eps = torch.stack([torch.randn(x.shape, generator=generator, dtype=torch.float64) for _ in range(samples)])
    noisy = (x + sigma * eps.to(x)).flatten(0, 1)  # (S * N, C, H, W)
    result = method(model, noisy, targets.repeat(samples), **options)
    n = x.shape[0]

    def per_sample(t: Tensor, dim: int = 0) -> Tensor:  # split dim into (S, N)
        return t.unflatten(dim, (samples, n))

    if isinstance(result, InteriorGradients):
        grads = per_sample(result.gradients, 1).mean(1)  # (A, N, C, H, W)
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
