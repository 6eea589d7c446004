"""Draw feature visualisations: a grid of synthesised images, and each next to real images.

Both figures are one mosaic image with a label band above every tile (one `imshow` and
a text per tile: a figure of 36 small axes takes seconds to save, this a fraction).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from mindscope.render.activations import Array, _pixels_hwc
from mindscope.visualisation import FeatureVisualisation

__all__ = ["channel_looks_figure", "feature_visualisation_figure", "labelled_mosaic"]

GAP = 2  # white pixels between tiles


def labelled_mosaic(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[Sequence[str]], *, title: str) -> Figure:
    """Draw rows of (H, W, 3) tiles as one image, each tile with its label in a band above it.

    The image data of tile (i, j) sits at rows `i * (band + H + GAP) + band` onward and
    columns `j * (W + GAP)` onward, band = H // 2; its label is the text centred over it.
    """
    h, w = rows[0][0].shape[:2]
    band, columns = max(8, h // 2), max(len(r) for r in rows)
    step_y, step_x = band + h + GAP, w + GAP
    mosaic = np.ones((len(rows) * step_y - GAP, columns * step_x - GAP, 3))
    fig = Figure(
        figsize=(0.85 * columns + 0.3, (0.85 + 0.45) * len(rows) * max(h, 16) / 32 + 0.4), layout="constrained"
    )
    ax = fig.add_subplot()
    for i, (row, texts) in enumerate(zip(rows, labels)):
        for j, (tile, text) in enumerate(zip(row, texts)):
            top, left = i * step_y + band, j * step_x
            mosaic[top : top + h, left : left + w] = tile
            ax.text(left + w / 2 - 0.5, top - band / 2 - 0.5, text, ha="center", va="center", fontsize=6)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    return fig


def feature_visualisation_figure(result: FeatureVisualisation, *, columns: int = 9, title: str = "") -> Figure:
    """Draw one synthesised image per channel, labelled with the mean activation it reaches."""
    tiles = [_pixels_hwc(image) for image in result.images]
    labels = [f"ch {c}: {float(a):.3g}" for c, a in zip(result.channels, result.activations)]
    columns = max(1, min(columns, len(tiles)))
    rows = range(math.ceil(len(tiles) / columns))
    return labelled_mosaic(
        [tiles[r * columns : (r + 1) * columns] for r in rows],
        [labels[r * columns : (r + 1) * columns] for r in rows],
        title=title or f"{result.layer}: what each channel looks for\n(mean activation reached)",
    )


def channel_looks_figure(
    result: FeatureVisualisation,
    top_images: Sequence[Array],
    top_scores: Sequence[Sequence[float]],
    *,
    title: str = "",
) -> Figure:
    """One row per channel: its synthesised image, then its top-activating data set images.

    `top_images[k]` (m, C, H, W) and `top_scores[k]` (m,) are channel k's images and their
    mean activations, as `top_activating` gives them; every label states its activation, so
    the synthesised image's can be compared with the data's.
    """
    n = len(result.channels)
    if len(top_images) != n or len(top_scores) != n:
        raise ValueError(f"got top images for {len(top_images)} channels and {n} visualisations; give one set each")
    rows, labels = [], []
    for k, (channel, reached) in enumerate(zip(result.channels, result.activations)):
        rows.append([_pixels_hwc(result.images[k])] + [_pixels_hwc(image) for image in top_images[k]])
        labels.append(
            [f"ch {channel} made: {float(reached):.3g}"]
            + [f"data #{j + 1}: {float(s):.3g}" for j, s in enumerate(top_scores[k])]
        )
    name = title or result.layer
    return labelled_mosaic(rows, labels, title=f"{name}\nsynthesised vs top data images (mean activation)")
