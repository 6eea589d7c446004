"""Attribution to a hidden layer, and from one hidden unit back to the input.

Three path integrals from the baseline x' to x, each a new integrand for the same driver
(`paths.integrate_path`: a fixed rule, or adaptive Simpson to a tolerance):

- `layer_integrated_gradients`: IG with the layer's activation as the input of the rest
  of the network, along the straight line from A(x') to A(x) in activation space, as
  Captum's `LayerIntegratedGradients` does: (A(x) - A(x')) * integral of dF/dA there.
- `conductance` (Dhamdhere, Yan & Sundararajan 2018, "How Important Is a Neuron?"): the
  flow of F through each unit along the *input* path, integral of dF/dA * dA/da, with
  dA/da from forward-mode differentiation (a Jacobian-vector product with x - x').
- `neuron_integrated_gradients`: IG to the input of one unit's (or channel's mean)
  activation instead of a class score: which pixels drive that unit.

`layer` is a dotted name, the module, or a layer number (L6: the activation after
convolution 6, as `capture_activations` reads it). `channel_axis` says where the layer's
output keeps its channels, as in `activation_statistics`: 1 for PyTorch's (N, C, ...),
-1 for channels-last layers (a Keras model's (N, h, w, C)), None (the default) for what the
model states (mindscope's Keras adapter: -1), else 1; results come back with the
channels at dim 1 whatever the layer's own order. Both layer methods sum over the
layer's units to F(x) - F(x') (completeness) wherever all of F flows through the layer;
they agree when A is affine along the input path (the output of a first convolution,
before its activation) and differ elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad

from mindscope._util import positive_int, tap_layer
from mindscope.attribution.core import (
    Attribution,
    batched_logits,
    check_batch,
    class_logit,
    class_probability,
    completeness_scale,
    input_gradients_only,
    resolve_targets,
)
from mindscope.attribution.methods import integrated_gradients
from mindscope.attribution.paths import Integrand, check_integration, completeness_errors, integrate_path
from mindscope.baselines import Baseline, resolve_baseline
from mindscope.inputs import channels_second, layer_channel_axis
from mindscope.layers import LayerSpec, resolve_layer
from mindscope.quadrature import Quadrature

__all__ = ["LayerAttribution", "conductance", "layer_integrated_gradients", "neuron_integrated_gradients"]

Neuron = int | tuple[int, ...]


@dataclass(frozen=True)
class LayerAttribution:
    """One attribution per unit of a hidden layer, per example, with its measured accuracy."""

    attributions: Tensor  # (N, C, ...) the layer's output shape, its channel axis moved to dim 1: (N, C, h, w)
    layer: str  # dotted name of the layer
    targets: Tensor  # (N,) int64 class attributed
    predictions: Tensor  # (N,) int64 class predicted at x
    probabilities: Tensor  # (N,) softmax probability of the prediction
    steps: Tensor  # (N,) int64 gradient evaluations per example
    output: Tensor  # (N,) F(x)
    baseline_output: Tensor  # (N,) F(x')
    completeness_error: Tensor  # (N,) |sum over units - (F(x) - F(x'))|, from forward passes
    relative_completeness_error: Tensor  # (N,) completeness_error / completeness_scale(F(x), F(x'))
    map_error: Tensor | None  # (N,) estimated relative L2 error of the attributions (tolerance mode)
    converged: Tensor | None  # (N,) bool, tolerance mode: both errors below the tolerance in time
    ill_conditioned: Tensor  # (N,) bool: F(x) - F(x') is within 1% of F: nothing to explain

    @property
    def channel_totals(self) -> Tensor:
        """(N, C): each channel's attributions summed over its positions (dim 1 is the channel)."""
        a = self.attributions
        return a.flatten(2).sum(2) if a.dim() > 2 else a


@dataclass(frozen=True)
class _LayerProblem:
    x: Tensor  # (N, ...)
    baseline: Tensor  # (N, ...)
    name: str
    targets: Tensor
    predictions: Tensor
    probabilities: Tensor
    output: Tensor  # (N,) F(x)
    baseline_output: Tensor  # (N,) F(x')
    activation: Tensor  # (N, ...) A(x), in the layer's own layout
    baseline_activation: Tensor  # (N, ...) A(x')
    channel_axis: int  # where A keeps its channels


def _forward(model: nn.Module, name: str, x: Tensor, max_batch: int) -> tuple[Tensor, Tensor]:
    """Return (logits, the layer's output), from no-grad passes of max_batch examples."""
    logits, activations = [], []
    with torch.no_grad(), tap_layer(model, name, leaf=True) as tap:
        for start in range(0, x.shape[0], max_batch):
            logits.append(tap.forward(x[start : start + max_batch]))
            activations.append(tap.output.detach())
    out = torch.cat(logits)
    if out.dim() != 2:
        raise ValueError(f"the model must return scores of shape (N, classes), got {tuple(out.shape)}; wrap it")
    return out, torch.cat(activations)


def _prepare(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None,
    layer: LayerSpec,
    baseline: Baseline,
    output: Callable[[Tensor], Tensor],
    max_batch: int,
    channel_axis: int | None,
) -> _LayerProblem:
    check_batch(x, max_batch)
    channel_axis = layer_channel_axis(model, channel_axis)
    x = x.detach()
    name = resolve_layer(model, layer, output=True)
    base = resolve_baseline(baseline, x)
    logits, activation = _forward(model, name, x, max_batch)
    channels_second(activation, channel_axis, name=f"layer {name!r} output")  # refuse an axis it does not have
    base_logits, base_activation = _forward(model, name, base, max_batch)
    probabilities, predictions = logits.softmax(dim=-1).max(dim=-1)
    targets = resolve_targets(target, predictions, logits.shape[1])

    def score(z: Tensor) -> Tensor:
        return output(z).gather(1, targets[:, None]).squeeze(1)

    return _LayerProblem(
        x,
        base,
        name,
        targets,
        predictions,
        probabilities,
        score(logits),
        score(base_logits),
        activation,
        base_activation,
        channel_axis,
    )


def _points(example: Tensor, alpha: Tensor, max_batch: int, dtype: torch.dtype, dim: int) -> Iterator[tuple]:
    """Yield (slice, examples, alphas shaped to broadcast) in batches of max_batch path points."""
    shape = (-1,) + (1,) * (dim - 1)
    for start in range(0, example.numel(), max_batch):
        part = slice(start, start + max_batch)
        yield part, example[part], alpha[part].to(dtype).view(shape)


def _result(
    problem: _LayerProblem,
    weights: Tensor,
    integrand: Integrand,
    rule: Quadrature | None,
    tolerance: float | None,
    max_steps: int,
) -> LayerAttribution:
    change = problem.output - problem.baseline_output
    scale, ill_conditioned = completeness_scale(problem.output, problem.baseline_output)
    path = integrate_path(
        integrand, weights, change, scale, ill_conditioned, rule=rule, tolerance=tolerance, max_steps=max_steps
    )
    attributions = weights * path.integral  # the layer's own layout
    error, relative, converged = completeness_errors(attributions, change, scale, path.map_error, tolerance)
    return LayerAttribution(
        channels_second(attributions, problem.channel_axis),
        problem.name,
        problem.targets,
        problem.predictions,
        problem.probabilities,
        path.steps,
        problem.output,
        problem.baseline_output,
        error,
        relative,
        path.map_error,
        converged,
        ill_conditioned,
    )


def layer_integrated_gradients(
    model: nn.Module,
    x: Tensor,
    layer: LayerSpec,
    target: int | Tensor | None = None,
    *,
    baseline: Baseline = None,
    rule: Quadrature | None = None,
    tolerance: float | None = None,
    max_steps: int = 2048,
    max_batch: int = 128,
    output: Callable[[Tensor], Tensor] = class_probability,
    channel_axis: int | None = None,
) -> LayerAttribution:
    """Attribute F(x) - F(x') to the units of `layer` with integrated gradients.

    With A the layer's output and G the rest of the network run on it (the model's input
    held at x), the attribution is (A(x) - A(x')) * integral_0^1 dG/dA at A(x') + a (A(x) -
    A(x')) da: Captum's `LayerIntegratedGradients` definition, Sundararajan et al.'s IG with
    the layer as the input. `rule`, `tolerance`, `max_steps` and F (`output`) work as in
    `integrated_gradients`, adaptive refinement included.

    `completeness_error` is |sum over units - (F(x) - F(x'))| from forward passes. The sum
    is G(A(x)) - G(A(x')), so the error measures the quadrature alone when every path from
    the input to the output runs through the layer (any `nn.Sequential` cut), and adds
    what flows around the layer (a skip connection past it) otherwise.
    """
    check_integration(rule, tolerance, max_steps)
    with input_gradients_only(model):
        problem = _prepare(model, x, target, layer, baseline, output, max_batch, channel_axis)
        start, delta = problem.baseline_activation, problem.activation - problem.baseline_activation

        def gradients(example: Tensor, alpha: Tensor) -> Iterator[tuple[slice, Tensor]]:
            for part, e, a in _points(example, alpha, max_batch, delta.dtype, delta.dim()):
                point = torch.addcmul(start[e], a, delta[e])  # (B, *A)
                with tap_layer(model, problem.name, substitute=lambda _out, p=point: p, leaf=True) as tap:
                    logits = tap.forward(problem.x[e])
                    score = output(logits).gather(1, problem.targets[e][:, None]).sum()
                    (grad,) = torch.autograd.grad(score, tap.output)
                yield part, grad

        return _result(problem, delta, gradients, rule, tolerance, max_steps)


def conductance(
    model: nn.Module,
    x: Tensor,
    layer: LayerSpec,
    target: int | Tensor | None = None,
    *,
    baseline: Baseline = None,
    rule: Quadrature | None = None,
    tolerance: float | None = None,
    max_steps: int = 2048,
    max_batch: int = 128,
    output: Callable[[Tensor], Tensor] = class_probability,
    channel_axis: int | None = None,
) -> LayerAttribution:
    """Return the total conductance of every unit of `layer`: how much of F(x) - F(x') flows through it.

    Conductance of unit j is integral_0^1 dF/dA_j * dA_j/da da along the input path
    x' + a (x - x') (Dhamdhere et al. 2018); dA/da is a forward-mode derivative, exact, not
    a difference of neighbouring points. By the chain rule the sum over units is
    integral dF/da = F(x) - F(x'): `completeness_error` measures the quadrature error, plus
    what flows around the layer where a skip connection passes it. `rule`, `tolerance` and
    `max_steps` work as in `integrated_gradients`. The layers before `layer` need
    forward-mode derivatives (every built-in layer has them).
    """
    check_integration(rule, tolerance, max_steps)
    with input_gradients_only(model):
        problem = _prepare(model, x, target, layer, baseline, output, max_batch, channel_axis)
        direction = problem.x - problem.baseline

        def flow(example: Tensor, alpha: Tensor) -> Iterator[tuple[slice, Tensor]]:
            for part, e, a in _points(example, alpha, max_batch, direction.dtype, direction.dim()):
                tangents: list[Tensor] = []

                def split(out: Tensor, into: list[Tensor] = tangents) -> Tensor:
                    primal, tangent = forward_ad.unpack_dual(out)
                    into.append(torch.zeros_like(primal) if tangent is None else tangent)
                    return primal

                with forward_ad.dual_level(), tap_layer(model, problem.name, substitute=split, leaf=True) as tap:
                    z = forward_ad.make_dual(torch.addcmul(problem.baseline[e], a, direction[e]), direction[e])
                    logits = forward_ad.unpack_dual(tap.forward(z)).primal
                    score = output(logits).gather(1, problem.targets[e][:, None]).sum()
                    (grad,) = torch.autograd.grad(score, tap.output)
                yield part, grad * tangents[0]

        return _result(problem, torch.ones_like(problem.activation), flow, rule, tolerance, max_steps)


def _check_neuron(neuron: object, shape: tuple[int, ...], name: str) -> None:
    """Check that `neuron` names a channel or one unit of a layer whose output (per example) is `shape`."""
    index = (neuron,) if isinstance(neuron, int) and not isinstance(neuron, bool) else neuron
    if not isinstance(index, tuple) or not index or not all(isinstance(i, int) for i in index):
        raise TypeError(f"neuron must be a channel (int) or one unit's index (a tuple of ints), got {neuron!r}")
    if len(index) > len(shape) or any(not -s <= i < s for i, s in zip(index, shape)):
        raise ValueError(
            f"neuron {neuron!r} is outside layer {name!r}, whose output per example has shape {shape}; "
            f"give a channel 0..{shape[0] - 1} or an index with one entry per dimension"
        )


class _Unit(nn.Module):
    """The model cut at a layer, scoring one unit (or a channel's mean) as one logit, (N, 1)."""

    def __init__(self, model: nn.Module, name: str, neuron: Neuron, channel_axis: int) -> None:
        super().__init__()
        self.model, self.name, self.channel_axis = model, name, channel_axis
        self.index = (neuron,) if isinstance(neuron, int) else tuple(neuron)

    def forward(self, x: Tensor) -> Tensor:
        with tap_layer(self.model, self.name, stop=True) as tap:
            tap.forward(x)
        output = channels_second(tap.output, self.channel_axis)  # (N, C, ...)
        unit = output[(slice(None), *self.index)]  # (N, ...) what is left after indexing
        return unit.flatten(1).mean(1, keepdim=True) if unit.dim() > 1 else unit[:, None]


def neuron_integrated_gradients(
    model: nn.Module,
    x: Tensor,
    layer: LayerSpec,
    neuron: Neuron,
    *,
    baseline: Baseline = None,
    rule: Quadrature | None = None,
    tolerance: float | None = None,
    max_steps: int = 2048,
    max_batch: int = 128,
    channel_axis: int | None = None,
) -> Attribution:
    """Attribute one unit's activation to the input pixels with integrated gradients.

    `neuron` is a channel of `layer` (an int: its mean over positions is explained) or one
    unit's index per example (a tuple such as (channel, row, column), the channel first
    whatever `channel_axis` the layer keeps it at: -1 for a Keras layer). F is that
    activation, so `output` and `baseline_output` hold it at x and x', and completeness
    and `tolerance` work as in `integrated_gradients`; `targets` and `predictions` hold the
    model's own prediction at x (the unit, not a class, is explained). The forward passes
    stop at the layer.
    """
    check_batch(x, max_batch)
    positive_int(max_steps, "max_steps")
    channel_axis = layer_channel_axis(model, channel_axis)
    name = resolve_layer(model, layer, output=True)
    with torch.no_grad(), tap_layer(model, name, leaf=True) as tap:
        tap.forward(x[:1].detach())
        shape = channels_second(tap.output, channel_axis, name=f"layer {name!r} output").shape[1:]
        _check_neuron(neuron, tuple(shape), name)
    unit = _Unit(model, name, neuron, channel_axis)
    result = integrated_gradients(
        unit,
        x,
        0,
        baseline=baseline,
        rule=rule,
        tolerance=tolerance,
        max_steps=max_steps,
        max_batch=max_batch,
        output=class_logit,
    )
    with input_gradients_only(model):
        logits = batched_logits(model, x.detach(), max_batch)
    probabilities, predictions = logits.softmax(dim=-1).max(dim=-1)
    return replace(result, targets=predictions, predictions=predictions, probabilities=probabilities)
