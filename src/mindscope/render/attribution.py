"""Draw attributions the walk-through's way: signed overlays, heat maps, panels, GIFs, saturation.

Sign convention: positive attribution (evidence for the target) is blue, negative is red,
drawn over a grey-scale copy of the image. Outliers are clipped by a percentile rule:
per image, |map| is divided by its `percentile`-th percentile and clipped to [-1, 1], so
the top (100 - percentile)% of pixels saturate instead of washing out the rest. Frames that
are compared (interior gradients over alpha) share one scale; every figure states its scale,
and one drawn from a numerically zero signal says so.
Integrated gradients: Sundararajan, Taly & Yan 2017.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LinearSegmentedColormap, ListedColormap, Normalize
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from mindscope.attribution import Attribution, InteriorGradients
from mindscope.inputs import batch_layout, to_channels_first
from mindscope.render.activations import save_gif  # noqa: F401 - one GIF writer for the package

POSITIVE = np.array([0.0, 0.25, 1.0])  # blue: evidence for the target class
NEGATIVE = np.array([1.0, 0.1, 0.0])  # red: evidence against it
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 grey-scale weights
# A signal whose size is below this fraction of its reference (the largest frame, the largest
# map) is float rounding, not signal: about 8 float32 ulps. Figures drawn from it say so.
NUMERICALLY_ZERO = 1e-6
NOTHING_TO_EXPLAIN = "nothing to explain: the baseline already scores F(x)"
NOT_CONVERGED = "not converged: the step budget ran out before the tolerance"
# -scale (opaque red) .. 0 (transparent) .. +scale (opaque blue), drawn over the grey image:
# the same colours as `overlay`, as a colour map whose limits a figure can state.
_RAMP = np.abs(np.linspace(-1.0, 1.0, 257))
SIGNED = ListedColormap(
    np.column_stack([np.where(np.linspace(-1, 1, 257)[:, None] < 0, NEGATIVE, POSITIVE), _RAMP]), name="signed"
)
# The same colours on white, for maps drawn without an image under them (a class's mean map).
SIGNED_ON_WHITE = LinearSegmentedColormap.from_list("signed_on_white", [NEGATIVE, np.ones(3), POSITIVE], N=257)


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
    return np.clip(values / percentile_scale(values, percentile), -1.0, 1.0)


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
    # clip: (1 - s) b + s c can round past 1, and imshow then warns for every frame
    return np.clip((1.0 - strength) * base + strength * colour, 0.0, 1.0)


def heatmap(attribution: Tensor | np.ndarray, *, percentile: float = 99.0, cmap: str = "inferno") -> np.ndarray:
    """Return (H, W, 3) RGB of |attribution| (summed over channels first), outliers clipped."""
    m = np.abs(clip_outliers(pixel_attribution(attribution), percentile))
    return colormaps[cmap](m)[..., :3]


def _image(pixels: Tensor | np.ndarray) -> np.ndarray:
    p = np.clip(_array(pixels), 0.0, 1.0)
    return p[0] if p.shape[0] == 1 else p.transpose(1, 2, 0)


def flag_text(ill_conditioned: bool, converged: bool) -> str:
    """The words for an example's flags ("" when there are none).

    An ill-conditioned example is refined only until its completeness is met, not its map:
    not converging is then by design, not a spent budget, and is said so.
    """
    if ill_conditioned:
        return NOTHING_TO_EXPLAIN + ("" if converged else " (its map was not refined to the tolerance)")
    return "" if converged else NOT_CONVERGED


def attribution_flags(result: Attribution) -> list[str]:
    """Per example, what the numbers cannot be trusted for ("" where nothing is flagged).

    An ill-conditioned example has nothing to explain (F(x) and F(x') agree); one that did
    not converge ran out of steps before the tolerance. None (a method that does not say)
    flags nothing.
    """
    n = result.attributions.shape[0]
    ill = [False] * n if result.ill_conditioned is None else [bool(v) for v in result.ill_conditioned]
    converged = [True] * n if result.converged is None else [bool(v) for v in result.converged]
    return [flag_text(bad, done) for bad, done in zip(ill, converged)]


def percentile_scale(values: np.ndarray, percentile: float = 99.0) -> float:
    """Return the `percentile`-th percentile of |values| (their max if that is 0; 1 if all are 0)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}; 99 clips the top 1%")
    magnitude = np.abs(np.asarray(values, dtype=np.float64))
    scale = float(np.percentile(magnitude, percentile)) if magnitude.size else 0.0
    return scale if scale > 0 else (float(magnitude.max()) if magnitude.size and magnitude.max() > 0 else 1.0)


def draw_signed(ax, pixels: Tensor | np.ndarray, values: np.ndarray, scale: float):
    """Draw `values` (H, W) over a grey copy of `pixels`: blue +, red -, opaque at |values| >= scale.

    Returns the signed image, whose colour limits (get_clim) are (-scale, scale).
    """
    ax.imshow(grey(pixels), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    return ax.imshow(values, cmap=SIGNED, norm=Normalize(-scale, scale, clip=True), interpolation="nearest")


def attribution_panels(
    pixels: Tensor,
    result: Attribution,
    classes: Sequence[str],
    *,
    percentile: float = 99.0,
    title: str = "",
    layout: str | None = None,
) -> Figure:
    """One row per example: image, signed overlay, |attribution| heat map, with the numbers.

    `pixels` are the images (N, C, H, W) in [0, 1] (e.g. `normalization.invert(x)`), or
    (N, H, W, C) with layout="NHWC" (`mindscope.inputs`' rule reads the layout when None);
    the maps are in the same layout. Each row has its own colour scale, the
    `percentile`-th percentile of its |attribution|, given in its titles. A row is flagged
    when its example has nothing to explain, did not converge, or its map is numerically
    zero beside the largest map of the batch. Rows and sequences are not images: draw them
    with `feature_bars` and `sequence_heatmap`.
    """
    layout = batch_layout(pixels.shape, layout, name="pixels")
    pixels, attributions = to_channels_first(pixels, layout), to_channels_first(result.attributions, layout)
    n = attributions.shape[0]
    if pixels.shape[0] != n:
        raise ValueError(f"{pixels.shape[0]} images for {n} attribution maps; give the images that were explained")
    maps = [pixel_attribution(attributions[i]) for i in range(n)]
    peaks = np.array([np.abs(m).max() for m in maps])
    flags = attribution_flags(result)
    fig = Figure(figsize=(7.5, 2.8 * n), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        predicted, target = int(result.predictions[i]), int(result.targets[i])
        note = f"pred {classes[predicted]} ({float(result.probabilities[i]):.2f})"
        if target != predicted:
            note += f"\ntarget {classes[target]}"
        axes[i, 0].imshow(_image(pixels[i]), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(note, fontsize=9)
        scale = percentile_scale(maps[i], percentile)
        draw_signed(axes[i, 1], pixels[i], maps[i], scale)
        detail = f"steps {int(result.steps[i])}"
        if result.relative_completeness_error is not None:
            detail = f"completeness err {float(result.relative_completeness_error[i]):.2%}, " + detail
        axes[i, 1].set_title(f"+ blue / - red, scale ±{scale:.2g}\n{detail}", fontsize=8)
        axes[i, 2].imshow(np.abs(maps[i]), cmap="inferno", vmin=0, vmax=scale, interpolation="nearest")
        extra = "" if result.map_error is None else f"\nmap err est {float(result.map_error[i]):.2%}"
        axes[i, 2].set_title(f"|attribution|, 0 to {scale:.2g} (p{percentile:g}){extra}", fontsize=8)
        warnings = [flags[i]] if flags[i] else []
        if peaks[i] <= NUMERICALLY_ZERO * peaks.max():
            warnings.append(f"map numerically zero (max {peaks[i]:.1g})")
        if warnings:
            axes[i, 0].set_xlabel("\n".join(_wrap(w) for w in warnings), fontsize=8, color="tab:red")
        for ax in axes[i]:
            ax.set_xticks([]), ax.set_yticks([])
            ax.spines[:].set_color("0.8")
    if title:
        fig.suptitle(title)
    return fig


def _wrap(text: str, width: int = 34) -> str:
    return "\n".join(textwrap.wrap(text, width))


def figure_image(fig: Figure) -> Image.Image:
    """Render a matplotlib figure to an RGB PIL image (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def interior_frame_figures(
    result: InteriorGradients,
    x: Tensor,
    classes: Sequence[str],
    *,
    index: int = 0,
    to_pixels: Callable[[Tensor], Tensor] | None = None,
    percentile: float = 99.0,
    layout: str | None = None,
) -> list[Figure]:
    """One figure per alpha for example `index`: the scaled input and its gradient overlay.

    Every frame shares one colour scale, the `percentile`-th percentile of |gradient| over
    all alphas, so that frames compare; it is written on each frame. A frame whose
    gradient norm is below NUMERICALLY_ZERO times the largest frame's says so on the frame.
    `x` is the batch that was explained, in the model's input space; `to_pixels` maps it
    back to [0, 1] (e.g. `normalization.invert`); None means x is already pixels. Channels-last
    images (N, H, W, C) take layout="NHWC" (`mindscope.inputs`' rule reads it when None).
    """
    to_pixels = to_pixels or (lambda t: t)
    layout = batch_layout(x.shape, layout)
    alphas = result.alphas.tolist()
    gradients = to_channels_first(result.gradients[:, index], layout)  # (A, C, H, W)
    maps = np.stack([pixel_attribution(gradients[k]) for k in range(len(alphas))])  # (A, H, W)
    scale = percentile_scale(maps, percentile)
    norms = result.gradient_norms[:, index].detach().cpu().double().numpy()
    zero = norms <= NUMERICALLY_ZERO * norms.max()
    target = classes[int(result.targets[index])]
    figures = []
    for k, alpha in enumerate(alphas):
        base = result.baseline[index : index + 1]
        scaled = to_channels_first(to_pixels(base + alpha * (x[index : index + 1].to(base) - base)), layout)[0]
        predicted = int(result.predictions[k, index])
        fig = Figure(figsize=(4.4, 2.9), layout="constrained")
        left, right = fig.subplots(1, 2)
        left.imshow(_image(scaled), cmap="gray", vmin=0, vmax=1)
        left.set_title(
            f"α = {alpha:.4g}\npred {classes[predicted]} ({float(result.probabilities[k, index]):.2f})", fontsize=8
        )
        draw_signed(right, scaled, maps[k], scale)
        right.set_title(
            f"gradient, |g| = {norms[k]:.3g}\np({target}) = {float(result.target_probabilities[k, index]):.2f}",
            fontsize=8,
        )
        if zero[k]:
            right.text(
                0.5,
                0.5,
                f"numerically zero\n(|g| < {NUMERICALLY_ZERO:g} × largest)",
                transform=right.transAxes,
                ha="center",
                va="center",
                fontsize=8,
                color="black",
                bbox=dict(boxstyle="round", fc="white", ec="tab:red"),
            )
        fig.supxlabel(f"colour: ±{scale:.2g}, one scale for every α (p{percentile:g} of all frames)", fontsize=7)
        left.set_axis_off(), right.set_axis_off()
        figures.append(fig)
    return figures


def interior_frames(
    result: InteriorGradients,
    x: Tensor,
    classes: Sequence[str],
    *,
    index: int = 0,
    to_pixels: Callable[[Tensor], Tensor] | None = None,
    percentile: float = 99.0,
    layout: str | None = None,
) -> list[Image.Image]:
    """The frames of `interior_frame_figures`, rendered to RGB images for a GIF."""
    figures = interior_frame_figures(
        result, x, classes, index=index, to_pixels=to_pixels, percentile=percentile, layout=layout
    )
    return [figure_image(fig) for fig in figures]


def saturation_curve(
    result: InteriorGradients, classes: Sequence[str] | None = None, *, added: Tensor | None = None
) -> Figure:
    """Plot the target's probability and the gradient norm against alpha, one line per example.

    `added` (A,) bool marks alphas found by bisection (`refine_alphas`): drawn hollow. A grey
    band marks each pair of neighbouring alphas between which an example's prediction changes.
    """
    alphas = result.alphas.detach().cpu().numpy()
    extra = np.zeros(len(alphas), bool) if added is None else np.asarray(added, dtype=bool)
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    prob_ax, norm_ax = fig.subplots(1, 2)
    for i in range(result.targets.shape[0]):
        label = f"#{i}" + (f" {classes[int(result.targets[i])]}" if classes is not None else "")
        for ax, values in (
            (prob_ax, result.target_probabilities[:, i].cpu().numpy()),
            (norm_ax, result.gradient_norms[:, i].cpu().numpy()),
        ):
            (line,) = ax.plot(alphas, values, marker="o", label=label)
            if extra.any():
                line.set_markevery(np.flatnonzero(~extra).tolist())
                hollow = "added by bisection" if i == 0 else "_added"
                ax.plot(alphas[extra], values[extra], "o", mfc="white", color=line.get_color(), label=hollow)
        predicted = result.predictions[:, i].cpu().numpy()
        for j in np.flatnonzero(predicted[1:] != predicted[:-1]):
            for ax in (prob_ax, norm_ax):
                ax.axvspan(alphas[j], alphas[j + 1], color="0.6", alpha=0.5, lw=0, label="_flip")
    prob_ax.set(xlabel="α (fraction of the path from the baseline)", ylabel="target probability", ylim=(0, 1.02))
    norm_ax.set(xlabel="α", ylabel="gradient L2 norm", yscale="log")
    prob_ax.set_title("prediction along the path (grey: it changes)", fontsize=9)
    norm_ax.set_title("input-gradient norm along the path", fontsize=9)
    prob_ax.legend(fontsize=8)
    return fig
