"""Draw attributions the walk-through's way: signed overlays, heat maps, panels, GIFs, saturation.

Sign convention: positive attribution (evidence for the target) is blue, negative is red,
drawn over a grey-scale copy of the image. Outliers are clipped by a percentile rule:
per image, |map| is divided by its `percentile`-th percentile and clipped to [-1, 1], so
the top (100 - percentile)% of pixels saturate instead of washing out the rest.
Integrated gradients: Sundararajan, Taly & Yan 2017.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from mindscope.attribution import Attribution, InteriorGradients
from mindscope.render.activations import save_gif  # noqa: F401 - one GIF writer for the package

POSITIVE = np.array([0.0, 0.25, 1.0])  # blue: evidence for the target class
NEGATIVE = np.array([1.0, 0.1, 0.0])  # red: evidence against it
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 grey-scale weights


def _array(t: Tensor | np.ndarray) -> np.ndarray:
    return t.detach().cpu().double().numpy() if isinstance(t, Tensor) else np.asarray(t, dtype=np.float64)


def pixel_attribution(attribution: Tensor | np.ndarray) -> np.ndarray:
    """Sum a (C, H, W) attribution over channels into an (H, W) map; (H, W) passes through."""
    a = _array(attribution)
    if a.ndim == 3:
        return a.sum(axis=0)
    if a.ndim != 2:
        raise ValueError(
            f"an attribution map must be (C, H, W) or (H, W), got shape {a.shape}; "
            "pick one example with result.attributions[i]"
        )
    return a


def clip_outliers(values: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """Divide by the `percentile`-th percentile of |values| and clip to [-1, 1]."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}; 99 clips the top 1%")
    scale = np.percentile(np.abs(values), percentile)
    if scale <= 0:
        scale = np.abs(values).max()
    return np.clip(values / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(values)


def grey(pixels: Tensor | np.ndarray) -> np.ndarray:
    """Return an (H, W) grey-scale copy of (C, H, W) pixels in [0, 1]."""
    p = np.clip(_array(pixels), 0.0, 1.0)
    return p[0] if p.shape[0] == 1 else np.tensordot(LUMA[: p.shape[0]] / LUMA[: p.shape[0]].sum(), p, axes=1)


def overlay(pixels: Tensor | np.ndarray, attribution: Tensor | np.ndarray, *, percentile: float = 99.0) -> np.ndarray:
    """Return (H, W, 3) RGB: positive attribution blue, negative red, over the grey image."""
    m = clip_outliers(pixel_attribution(attribution), percentile)[..., None]  # (H, W, 1) in [-1, 1]
    base = np.repeat(grey(pixels)[..., None], 3, axis=2)  # (H, W, 3)
    colour = np.where(m >= 0, POSITIVE, NEGATIVE)
    strength = np.abs(m)
    return (1.0 - strength) * base + strength * colour


def heatmap(attribution: Tensor | np.ndarray, *, percentile: float = 99.0, cmap: str = "inferno") -> np.ndarray:
    """Return (H, W, 3) RGB of |attribution| (summed over channels first), outliers clipped."""
    m = np.abs(clip_outliers(pixel_attribution(attribution), percentile))
    return colormaps[cmap](m)[..., :3]


def _image(pixels: Tensor | np.ndarray) -> np.ndarray:
    p = np.clip(_array(pixels), 0.0, 1.0)
    return p[0] if p.shape[0] == 1 else p.transpose(1, 2, 0)


def attribution_panels(
    pixels: Tensor, result: Attribution, classes: Sequence[str], *, percentile: float = 99.0, title: str = ""
) -> Figure:
    """One row per example: image, signed overlay, |attribution| heat map, with the numbers.

    `pixels` are the images (N, C, H, W) in [0, 1] (e.g. `normalization.invert(x)`).
    """
    n = result.attributions.shape[0]
    if pixels.shape[0] != n:
        raise ValueError(f"{pixels.shape[0]} images for {n} attribution maps; give the images that were explained")
    fig = Figure(figsize=(7.5, 2.6 * n), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        predicted, target = int(result.predictions[i]), int(result.targets[i])
        note = f"pred {classes[predicted]} ({float(result.probabilities[i]):.2f})"
        if target != predicted:
            note += f"\ntarget {classes[target]}"
        axes[i, 0].imshow(_image(pixels[i]), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(note, fontsize=9)
        axes[i, 1].imshow(overlay(pixels[i], result.attributions[i], percentile=percentile))
        detail = f"steps {int(result.steps[i])}"
        if result.relative_completeness_error is not None:
            detail = f"completeness err {float(result.relative_completeness_error[i]):.2%}, " + detail
        axes[i, 1].set_title(f"+ blue / - red\n{detail}", fontsize=8)
        axes[i, 2].imshow(heatmap(result.attributions[i], percentile=percentile))
        extra = "" if result.map_error is None else f"\nmap err est {float(result.map_error[i]):.2%}"
        axes[i, 2].set_title(f"|attribution| (clip p{percentile:g}){extra}", fontsize=8)
        for ax in axes[i]:
            ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def figure_image(fig: Figure) -> Image.Image:
    """Render a matplotlib figure to an RGB PIL image (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def interior_frames(
    result: InteriorGradients,
    x: Tensor,
    classes: Sequence[str],
    *,
    index: int = 0,
    to_pixels: Callable[[Tensor], Tensor] | None = None,
    percentile: float = 99.0,
) -> list[Image.Image]:
    """One frame per alpha for example `index`: the scaled input and its gradient overlay.

    `x` is the batch that was explained, in the model's input space; `to_pixels` maps it
    back to [0, 1] (e.g. `normalization.invert`); None means x is already pixels.
    """
    to_pixels = to_pixels or (lambda t: t)
    frames = []
    for k, alpha in enumerate(result.alphas.tolist()):
        base = result.baseline[index : index + 1]
        scaled = to_pixels(base + alpha * (x[index : index + 1].to(base) - base))[0]  # (C, H, W)
        predicted = int(result.predictions[k, index])
        fig = Figure(figsize=(4.4, 2.5), layout="constrained")
        left, right = fig.subplots(1, 2)
        left.imshow(_image(scaled), cmap="gray", vmin=0, vmax=1)
        left.set_title(
            f"a = {alpha:g}\npred {classes[predicted]} ({float(result.probabilities[k, index]):.2f})", fontsize=8
        )
        right.imshow(overlay(scaled, result.gradients[k, index], percentile=percentile))
        target = classes[int(result.targets[index])]
        right.set_title(
            f"gradient, |g| = {float(result.gradient_norms[k, index]):.3g}\n"
            f"p({target}) = {float(result.target_probabilities[k, index]):.2f}",
            fontsize=8,
        )
        left.set_axis_off(), right.set_axis_off()
        frames.append(figure_image(fig))
    return frames


def saturation_curve(result: InteriorGradients, classes: Sequence[str] | None = None) -> Figure:
    """Plot the target's probability and the gradient norm against alpha, one line per example."""
    alphas = result.alphas.detach().cpu().numpy()
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    prob_ax, norm_ax = fig.subplots(1, 2)
    for i in range(result.targets.shape[0]):
        label = f"#{i}" + (f" {classes[int(result.targets[i])]}" if classes is not None else "")
        prob_ax.plot(alphas, result.target_probabilities[:, i].cpu().numpy(), marker="o", label=label)
        norm_ax.plot(alphas, result.gradient_norms[:, i].cpu().numpy(), marker="o", label=label)
    prob_ax.set(xlabel="alpha (fraction of the path from the baseline)", ylabel="target probability", ylim=(0, 1.02))
    norm_ax.set(xlabel="alpha", ylabel="gradient L2 norm", yscale="log")
    prob_ax.set_title("prediction along the path", fontsize=9)
    norm_ax.set_title("input-gradient norm along the path", fontsize=9)
    prob_ax.legend(fontsize=7)
    return fig
