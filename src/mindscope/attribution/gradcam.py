"""Grad-CAM: where in the image a convolutional layer found the evidence for a class.

Selvaraju et al. 2017 ("Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization"). With A (C, h, w) a layer's output and F the target's
score, each channel k gets the weight w_k = mean over positions of dF/dA_k, and the map
is ReLU(sum_k w_k A_k), upsampled bilinearly to the input's height and width. It is
computed exactly (one forward and one backward pass, to the layer only), so it has no
accuracy to report; what it cannot say is anything finer than the layer's resolution.

Which axis of A holds the channels is the layer's business, not the input's: a Keras
model's layers are channels last, (N, h, w, C), and take channel_axis=-1 (as
`activation_statistics` does). Read with the wrong axis, A is (w, C) maps of h "channels"
and the map is meaningless without any error, so the default is what the model states
(`layer_channel_axis`: mindscope's Keras adapter says -1), else where x keeps its channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from mindscope._util import eval_mode, tap_layer
from mindscope.attribution.core import check_batch, class_logit, input_gradients_only, resolve_targets
from mindscope.inputs import batch_layout, channels_second, layer_channel_axis
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


def _spatial(out: object, channel_axis: int, name: str) -> bool:
    """Whether layer `name`'s output is a map (N, C, h, w), channels at `channel_axis`, with h * w > 1."""
    if not isinstance(out, Tensor) or out.dim() != 4:
        return False
    return channels_second(out, channel_axis, name=f"layer {name!r} output")[0, 0].numel() > 1


def last_spatial_layer(model: nn.Module, x: Tensor, *, channel_axis: int | None = None) -> str:
    """Return the last module to run whose output is a map (N, C, h, w) with h * w > 1.

    `channel_axis` is where the layers keep their channels (-1: channels last, (N, h, w, C)).
    Only modules without submodules count, so the name is a layer, not a container. One
    forward pass of x's first example decides. None: what the model states (a Keras model: -1), else 1.
    """
    channel_axis = layer_channel_axis(model, channel_axis)
    ran: list[str] = []

    def hook_for(name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, out: object) -> None:
            if _spatial(out, channel_axis, name):
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


def _image_size(x: Tensor, layout: str | None) -> tuple[str | None, tuple[int, int]]:
    """Return (x's layout, (H, W) of its images: the size the maps are upsampled to)."""
    if layout is None and x.dim() != 4:
        return None, (int(x.shape[-2]), int(x.shape[-1]))  # not an image batch: the model makes its own maps
    layout = batch_layout(x.shape, layout)
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"Grad-CAM maps images: give layout='NCHW' or 'NHWC' for images x, not {layout!r}")
    height, width = x.shape[1:3] if layout == "NHWC" else x.shape[2:4]
    return layout, (int(height), int(width))


def grad_cam(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    *,
    layer: LayerSpec | None = None,
    layout: str | None = None,
    channel_axis: int | None = None,
    output: Callable[[Tensor], Tensor] = class_logit,
    max_batch: int = 128,
) -> GradCAM:
    """Return the Grad-CAM map of `layer` for the target class (the prediction unless given).

    `layer` is a dotted name, the module itself, or a layer number (L6: the activation
    after convolution 6, as `capture_activations` reads it); by default the last
    module whose output is a spatial map (`last_spatial_layer`), and `result.layer` says
    which. F is the target's logit, as in the paper, unless `output` says otherwise.

    `layout` is x's ("NCHW" or "NHWC"; by `mindscope.inputs`' rule when None), and the maps
    are upsampled to its images' height and width. `channel_axis` is where the layer's
    output keeps its channels: 1 for PyTorch's (N, C, h, w), -1 for channels-last layers
    (a Keras model's (N, h, w, C)); by default what the model states, else where x keeps them,
    so a Keras model fed channels-first x (as `mindscope.subject` adapts it) is read right.
    """
    check_batch(x, max_batch)
    x = x.detach()
    layout, size = _image_size(x, layout)
    channel_axis = layer_channel_axis(model, channel_axis, fallback=-1 if layout == "NHWC" else 1)
    if layer is None:
        name = last_spatial_layer(model, x, channel_axis=channel_axis)
    else:
        name = resolve_layer(model, layer, output=True)
    n = x.shape[0]
    parts: list[tuple[Tensor, ...]] = []
    with input_gradients_only(model), tap_layer(model, name, leaf=True) as tap:
        for start in range(0, n, max_batch):
            part = slice(start, start + max_batch)
            logits = tap.forward(x[part])
            activation = tap.output  # the layer's own layout, channels at channel_axis
            if not _spatial(activation, channel_axis, name):
                where = "" if channel_axis == 1 else f", channels at axis {channel_axis}"
                raise ValueError(
                    f"layer {name!r} gives output of shape {tuple(activation.shape)}; Grad-CAM needs a spatial map "
                    f"(N, C, h, w) with h * w > 1{where}: pick a convolutional layer, or give none to take the last one"
                )
            if logits is None or logits.dim() != 2:
                raise ValueError("the model must return scores of shape (N, classes); wrap it so that it does")
            probabilities, predictions = logits.detach().softmax(dim=-1).max(dim=-1)
            targets = resolve_targets(_targets_of(target, part, n), predictions, logits.shape[1])
            score = output(logits).gather(1, targets[:, None]).squeeze(1)  # (B,)
            (grad,) = torch.autograd.grad(score.sum(), activation)
            grad = channels_second(grad, channel_axis)  # (B, C, h, w)
            weights = grad.mean(dim=(2, 3))  # (B, C)
            a = channels_second(activation.detach(), channel_axis)  # (B, C, h, w)
            cam = torch.relu(torch.einsum("bc,bchw->bhw", weights, a))
            parts.append((cam, weights, targets, predictions, probabilities, score.detach()))
    layer_maps, weights, targets, predictions, probabilities, scores = (torch.cat(p) for p in zip(*parts))
    maps = functional.interpolate(layer_maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    empty = layer_maps.flatten(1).amax(dim=1) <= 0
    return GradCAM(maps, layer_maps, name, weights, targets, predictions, probabilities, scores, empty)
