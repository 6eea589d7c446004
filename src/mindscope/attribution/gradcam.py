"""Grad-CAM: where in the image a convolutional layer found the evidence for a class.

Selvaraju et al. 2017 ("Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization"). With A (C, h, w) a layer's output and F the target's
score, each channel k gets the weight w_k = mean over positions of dF/dA_k, and the map
is ReLU(sum_k w_k A_k), upsampled bilinearly to the input's height and width. It is
computed exactly (one forward and one backward pass, to the layer only), so it has no
accuracy to report; what it cannot say is anything finer than the layer's resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from mindscope._util import eval_mode, tap_layer
from mindscope.attribution.core import check_batch, class_logit, input_gradients_only, resolve_targets
from mindscope.layers import LayerSpec, resolve_layer

__all__ = ["GradCAM", "grad_cam", "last_spatial_layer"]


@dataclass(frozen=True)
class GradCAM:
    """One Grad-CAM map per example, at the layer's resolution and at the input's."""

    maps: Tensor  # (N, H, W) >= 0, upsampled bilinearly to the input's height and width
    layer_maps: Tensor  # (N, h, w) >= 0 at the layer's resolution
    layer: str  # the dotted name of the layer used (the default's choice is stated here)
    weights: Tensor  # (N, C) channel weights: mean over positions of dF/dA
    targets: Tensor  # (N,) int64 class explained
    predictions: Tensor  # (N,) int64 class predicted
    probabilities: Tensor  # (N,) softmax probability of the prediction
    output: Tensor  # (N,) F(x) for the target
    empty: Tensor  # (N,) bool: the map is zero everywhere (no position has positive evidence)


def _spatial(out: object) -> bool:
    return isinstance(out, Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1


def last_spatial_layer(model: nn.Module, x: Tensor) -> str:
    """Return the last module to run whose output is a map (N, C, h, w) with h * w > 1.

    Only modules without submodules count, so the name is a layer, not a container. One
    forward pass of x's first example decides.
    """
    ran: list[str] = []

    def hook_for(name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, out: object) -> None:
            if _spatial(out):
                ran.append(name)

        return hook

    leaves = [(n, m) for n, m in model.named_modules() if n and next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook_for(n)) for n, m in leaves]
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    if not ran:
        raise ValueError(
            f"no layer of {type(model).__name__} gives a spatial map (N, C, h, w) with h * w > 1 for input "
            f"of shape {tuple(x.shape)}; Grad-CAM needs a convolutional layer: pass layer= one"
        )
    return ran[-1]


def _targets_of(target: int | Tensor | None, part: slice, n: int) -> int | Tensor | None:
    if isinstance(target, Tensor) and target.dim() == 1 and target.shape[0] == n:
        return target[part]
    return target


def grad_cam(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    *,
    layer: LayerSpec | None = None,
    output: Callable[[Tensor], Tensor] = class_logit,
    max_batch: int = 128,
) -> GradCAM:
    """Return the Grad-CAM map of `layer` for the target class (the prediction unless given).

    `layer` is a dotted name, the module itself, or a layer number (L6: the activation
    after convolution 6, as `capture_activations` reads it); by default the last
    module whose output is a spatial map (`last_spatial_layer`), and `result.layer` says
    which. F is the target's logit, as in the paper, unless `output` says otherwise.
    """
    check_batch(x, max_batch)
    x = x.detach()
    name = last_spatial_layer(model, x) if layer is None else resolve_layer(model, layer, output=True)
    n = x.shape[0]
    parts: list[tuple[Tensor, ...]] = []
    with input_gradients_only(model), tap_layer(model, name, leaf=True) as tap:
        for start in range(0, n, max_batch):
            part = slice(start, start + max_batch)
            logits = tap.forward(x[part])
            activation = tap.output  # (B, C, h, w)
            if not _spatial(activation):
                raise ValueError(
                    f"layer {name!r} gives output of shape {tuple(activation.shape)}; Grad-CAM needs a spatial map "
                    "(N, C, h, w) with h * w > 1: pick a convolutional layer, or give none to take the last one"
                )
            if logits is None or logits.dim() != 2:
                raise ValueError("the model must return scores of shape (N, classes); wrap it so that it does")
            probabilities, predictions = logits.detach().softmax(dim=-1).max(dim=-1)
            targets = resolve_targets(_targets_of(target, part, n), predictions, logits.shape[1])
            score = output(logits).gather(1, targets[:, None]).squeeze(1)  # (B,)
            (grad,) = torch.autograd.grad(score.sum(), activation)
            weights = grad.mean(dim=(2, 3))  # (B, C)
            cam = torch.relu(torch.einsum("bc,bchw->bhw", weights, activation.detach()))
            parts.append((cam, weights, targets, predictions, probabilities, score.detach()))
    layer_maps, weights, targets, predictions, probabilities, scores = (torch.cat(p) for p in zip(*parts))
    maps = functional.interpolate(layer_maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    empty = layer_maps.flatten(1).amax(dim=1) <= 0
    return GradCAM(maps, layer_maps, name, weights, targets, predictions, probabilities, scores, empty)
