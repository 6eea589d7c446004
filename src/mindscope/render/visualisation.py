"""Draw feature visualisations: a grid of synthesised images, and each next to real images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from mindscope.render.activations import Array, _pixels_hwc
from mindscope.visualisation import FeatureVisualisation

__all__ = ["channel_looks_figure", "feature_visualisation_figure"]


def feature_visualisation_figure(result: FeatureVisualisation, *, columns: int = 9, title: str = "") -> Figure:
    """Draw one synthesised image per channel, titled with the mean activation it reaches."""
    n = len(result.channels)
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(1.25 * columns + 0.4, 1.45 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, image, channel, reached in zip(axes, result.images, result.channels, result.activations):
        ax.imshow(_pixels_hwc(image), interpolation="nearest")
        ax.set_title(f"ch {channel}\n{float(reached):.3g}", fontsize=7)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title or f"{result.layer}: what each channel looks for (mean activation reached)", fontsize=9)
    return fig


def channel_looks_figure(
    result: FeatureVisualisation,
    top_images: Sequence[Array],
    top_scores: Sequence[Sequence[float]],
    *,
    title: str = "",
) -> Figure:
    """One row per channel: its synthesised image, then its top-activating data set images.

    `top_images[k]` (m, C, H, W) and `top_scores[k]` (m,) are channel k's images and their
    mean activations, as `top_activating` gives them; every title states its activation, so
    the synthesised image's can be compared with the data's.
    """
    n = len(result.channels)
    if len(top_images) != n or len(top_scores) != n:
        raise ValueError(f"got top images for {len(top_images)} channels and {n} visualisations; give one set each")
    m = max((len(images) for images in top_images), default=0)
    fig = Figure(figsize=(1.3 * (m + 1) + 0.3, 1.35 * n + 0.5), layout="constrained")
    axes = fig.subplots(n, m + 1, squeeze=False)
    for k, (channel, reached) in enumerate(zip(result.channels, result.activations)):
        axes[k, 0].imshow(_pixels_hwc(result.images[k]), interpolation="nearest")
        axes[k, 0].set_title(f"ch {channel} synthesised\n{float(reached):.3g}", fontsize=7)
        for j, (image, score) in enumerate(zip(top_images[k], top_scores[k])):
            axes[k, j + 1].imshow(_pixels_hwc(image), interpolation="nearest")
            axes[k, j + 1].set_title(f"data #{j + 1}\n{float(score):.3g}", fontsize=7)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(title or f"{result.layer}: synthesised vs top data images (mean activation)", fontsize=9)
    return fig
