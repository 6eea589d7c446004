"""Draw Grad-CAM maps as heat maps over the images they explain, on one stated scale."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from mindscope.attribution import GradCAM
from mindscope.render.attribution import _array, grey

__all__ = ["grad_cam_figure"]

NO_EVIDENCE = "map is zero: no position has positive evidence"


def grad_cam_figure(
    pixels: Tensor,
    result: GradCAM,
    classes: Sequence[str],
    *,
    columns: int = 6,
    alpha: float = 0.6,
    cmap: str = "inferno",
    title: str = "",
) -> Figure:
    """One panel per example: its Grad-CAM map over a grey copy of the image.

    All panels share one colour scale, 0 to the largest map value of the batch (Grad-CAM is
    in units of F, so maps of different images compare); the colour bar states it. A map
    that is zero everywhere says so. `pixels` are the images (N, C, H, W) in [0, 1].
    """
    maps = _array(result.maps)  # (N, H, W)
    n = maps.shape[0]
    if pixels.shape[0] != n:
        raise ValueError(f"{pixels.shape[0]} images for {n} Grad-CAM maps; give the images that were explained")
    high = float(maps.max())
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(2.1 * columns + 1.0, 2.3 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    shown = None
    for i, ax in enumerate(axes[:n]):
        ax.imshow(grey(pixels[i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        shown = ax.imshow(maps[i], cmap=cmap, alpha=alpha, vmin=0, vmax=high if high > 0 else 1.0)
        predicted, target = int(result.predictions[i]), int(result.targets[i])
        note = f"pred {classes[predicted]} ({float(result.probabilities[i]):.2f})"
        note += f"\ntarget {classes[target]}" if target != predicted else ""
        ax.set_title(f"{note}\nmax {maps[i].max():.3g}", fontsize=8)
        if bool(result.empty[i]):
            ax.set_xlabel(NO_EVIDENCE, fontsize=7, color="tab:red", wrap=True)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes.tolist(), shrink=0.8, label="units of F")
    fig.suptitle(title or f"Grad-CAM of layer {result.layer}", fontsize=10)
    fig.supxlabel(f"one colour scale for every image: 0 to {high:.3g}", fontsize=8)
    return fig
