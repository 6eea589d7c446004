"""Feature visualisation: synthesise the image that a channel of a layer responds to most.

Erhan et al. 2009 and Yosinski et al. 2015 ("Understanding Neural Networks Through Deep
Visualization") optimise the input to maximise one unit. Optimised directly, pixels
become high-frequency adversarial noise; Olah, Mordvintsev & Schubert 2017 ("Feature
Visualization", Distill) keep them an image with two choices followed here:

- the image is parameterised by its Fourier spectrum, scaled by 1 / frequency so that
  every frequency is about equally easy to change, and its colours by decorrelated
  components (the square root of ImageNet's colour correlation), squashed by a sigmoid
  into [0, 1];
- each step sees a randomly jittered, scaled and rotated copy, so that only patterns that
  survive small transformations are reinforced.

All channels asked for are optimised at once, one image each, as one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from mindscope._util import eval_mode, frozen_parameters, model_device, positive_int, tap_layer
from mindscope.inputs import channels_second, layer_channel_axis
from mindscope.layers import LayerSpec, resolve_layer

__all__ = ["COLOUR_CORRELATION_SQRT", "FeatureVisualisation", "feature_visualisation"]

# Square root of the correlation of ImageNet's RGB channels (rows: R, G, B), as published
# with Lucid; divided by its largest column norm before use.
COLOUR_CORRELATION_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))


@dataclass(frozen=True)
class FeatureVisualisation:
    """One synthesised image per channel, and how strongly each drives its channel."""

    images: Tensor  # (K, C, H, W) pixels in [0, 1]
    layer: str
    channels: tuple[int, ...]  # (K,) the channel each image was made for
    activations: Tensor  # (K,) mean activation of its channel on the final image, untransformed
    history: Tensor  # (steps, K) the objective at each step, on that step's transformed copy
    seed: int


def _channels(channels: int | Sequence[int], count: int, layer: str) -> tuple[int, ...]:
    chosen = (channels,) if isinstance(channels, int) else tuple(channels)
    if not chosen or any(isinstance(c, bool) or not isinstance(c, int) for c in chosen):
        raise TypeError(f"channels must be an int or a non-empty sequence of ints, got {channels!r}")
    bad = [c for c in chosen if not 0 <= c < count]
    if bad:
        raise ValueError(f"channel {bad[0]} is not in layer {layer!r}, which has channels 0..{count - 1}")
    return chosen


def _spectrum_scale(height: int, width: int) -> Tensor:
    """1 / frequency for the rfft2 grid (H, W // 2 + 1), the zero frequency capped at 1 / max(H, W)."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    return 1.0 / torch.sqrt(fy**2 + fx**2).clamp(min=1.0 / max(height, width))


def _colour_matrix(channels: int) -> Tensor:
    if channels != 3:
        return torch.eye(channels, dtype=torch.float64)  # no published correlation: leave colours alone
    m = torch.tensor(COLOUR_CORRELATION_SQRT, dtype=torch.float64)
    return m / m.norm(dim=0).max()


def _pixels(spectrum: Tensor, scale: Tensor, colour: Tensor, size: tuple[int, int]) -> Tensor:
    """Return images (K, C, H, W) in [0, 1] from spectra (K, C, H, W // 2 + 1, 2)."""
    field = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=size, norm="ortho") / 4  # (K, C, H, W)
    return torch.sigmoid(torch.einsum("cd,kdhw->kchw", colour, field))


def _transform(images: Tensor, generator: torch.Generator, jitter: float) -> Tensor:
    """Jitter by up to `jitter` of the size, scale by 0.9..1.1 and rotate by -10..10 degrees, per image."""
    k = images.shape[0]
    draw = torch.rand((k, 4), generator=generator, dtype=torch.float64).to(images.device)
    scale = 0.9 + 0.2 * draw[:, 0]
    angle = math.radians(10) * (2 * draw[:, 1] - 1)
    shift = jitter * 2 * (2 * draw[:, 2:] - 1)  # grid coordinates span 2 per image
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = functional.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return functional.grid_sample(images, grid, padding_mode="reflection", align_corners=False)


def _channel_means(activation: Tensor, channels: Tensor) -> Tensor:
    """Return each image's mean activation of its own channel, (K,), from a layer output (K, C, ...)."""
    chosen = activation[torch.arange(activation.shape[0], device=activation.device), channels]  # (K, ...)
    return chosen.flatten(1).mean(1) if chosen.dim() > 1 else chosen


def _adam_step(parameter: Tensor, grad: Tensor, moments: tuple[Tensor, Tensor], step: int, lr: float) -> None:
    """Take one Adam step (Kingma & Ba 2015, betas 0.9 and 0.999) in place.

    Written out because torch.optim's first step imports torch._dynamo: seconds of start-up.
    """
    first, second = moments
    first.mul_(0.9).add_(grad, alpha=0.1)
    second.mul_(0.999).addcmul_(grad, grad, value=0.001)
    with torch.no_grad():
        denominator = (second / (1 - 0.999**step)).sqrt_().add_(1e-8)
        parameter.addcdiv_(first, denominator, value=-lr / (1 - 0.9**step))


def feature_visualisation(
    model: nn.Module,
    layer: LayerSpec,
    channels: int | Sequence[int],
    *,
    steps: int = 256,
    size: int | tuple[int, int] = 32,
    image_channels: int = 3,
    seed: int = 0,
    lr: float = 0.05,
    transforms: bool = True,
    jitter: float = 0.06,
    normalise: Callable[[Tensor], Tensor] | None = None,
    channel_axis: int | None = None,
) -> FeatureVisualisation:
    """Synthesise, for each channel, an image (H, W = `size`) that maximises its mean activation.

    `layer` is a dotted name, the module, or a layer number (L3: the activation after
    convolution 3, as `capture_activations` reads it). The objective is the channel's
    mean over positions of the layer's output, maximised with Adam
    (`lr`) for `steps` steps from a small random spectrum drawn with `seed`; the same seed
    gives the same images. `normalise` maps pixels in [0, 1] to what the model takes (its
    mean/std normalisation); none by default. With `transforms`, each step sees a copy
    shifted by up to `jitter` of the image size, scaled and rotated. Runs on the model's
    device; the forward passes stop at the layer. `activations` are measured on the final
    images as they are, so they can be compared with real images' activations.

    `channel_axis` is where the layer's output keeps its channels, as in
    `activation_statistics`: 1 for PyTorch's (N, C, ...), -1 for channels-last layers (a
    Keras model's (N, h, w, C)); None: what the model states (mindscope's Keras adapter: -1),
    else 1. The images are fed channels first, (K, C, H, W).
    """
    channel_axis = layer_channel_axis(model, channel_axis)
    positive_int(steps, "steps")
    positive_int(image_channels, "image_channels")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    positive_int(height, "size")
    positive_int(width, "size")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number such as 0.05, got {lr!r}")
    normalise = normalise or (lambda pixels: pixels)
    name = resolve_layer(model, layer, output=True)
    device = model_device(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    generator = torch.Generator().manual_seed(seed)
    scale = _spectrum_scale(height, width).to(device=device, dtype=dtype)
    colour = _colour_matrix(image_channels).to(device=device, dtype=dtype)

    def layer_output() -> Tensor:  # (K, C, ...)
        return channels_second(tap.output, channel_axis, name=f"layer {name!r} output")

    with eval_mode(model), frozen_parameters(model), torch.enable_grad(), tap_layer(model, name, stop=True) as tap:
        with torch.no_grad():
            tap.forward(normalise(torch.full((1, image_channels, height, width), 0.5, device=device, dtype=dtype)))
        chosen = _channels(channels, layer_output().shape[1], name)
        index = torch.tensor(chosen, device=device)
        shape = (len(chosen), image_channels, height, width // 2 + 1, 2)
        spectrum = (0.01 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(device, dtype)
        spectrum.requires_grad_(True)
        moments = (torch.zeros_like(spectrum), torch.zeros_like(spectrum))
        history = []
        for step in range(1, steps + 1):
            images = _pixels(spectrum, scale, colour, (height, width))
            seen = _transform(images, generator, jitter) if transforms else images
            tap.forward(normalise(seen))
            objective = _channel_means(layer_output(), index)  # (K,)
            (grad,) = torch.autograd.grad(-objective.sum(), spectrum)
            _adam_step(spectrum, grad, moments, step, lr)
            history.append(objective.detach())
        with torch.no_grad():
            images = _pixels(spectrum, scale, colour, (height, width))
            tap.forward(normalise(images))
            reached = _channel_means(layer_output(), index)
    return FeatureVisualisation(images.detach(), name, chosen, reached.detach(), torch.stack(history), seed)
