"""Draw a scan: each class's mean map on one colour scale, and its images' completeness errors.

Inputs are plain arrays (what `mindscope.scan.open_scan(...).class_maps()` and `.table()`
give), so the report and the dashboard draw a scan without knowing its files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from mindscope.render.attribution import SIGNED_ON_WHITE

ZERO_ERROR = 1e-12  # relative completeness errors below this are drawn (and counted) as exact
SIGNS = "blue raises the class's score, red lowers it"  # SIGNED_ON_WHITE's ends, for captions
COLOUR_BAR = "mean attribution, summed over channels\n(blue: for the class, red: against it)"


def class_maps_figure(
    mean: np.ndarray, classes: Sequence[str], counts: Sequence[int], *, title: str = "mean attribution per class"
) -> Figure:
    """One panel per class: its mean map summed over channels, every panel on one symmetric colour scale.

    Blue is evidence for the class and red against it, as in `render.attribution`'s panels.

    Args:
        mean: (K, C, H, W) mean attribution of the images attributed to each class.
        counts: (K,) how many images each mean is over; a class with none says so.
    """
    mean = np.asarray(mean, dtype=np.float64)
    if mean.ndim != 4 or mean.shape[0] != len(classes) or len(counts) != len(classes):
        raise ValueError(
            f"class_maps_figure needs mean (K, C, H, W) with K = {len(classes)} classes and {len(classes)} counts, "
            f"got {mean.shape} and {len(counts)} counts"
        )
    maps = mean.sum(axis=1)  # (K, H, W): a pixel's attribution, all channels together
    limit = float(np.abs(maps).max())
    columns = min(len(classes), 5)
    rows = math.ceil(len(classes) / columns)
    # at least 3.4 inches tall: the colour bar's label runs along it
    fig = Figure(figsize=(2.1 * columns + 0.9, max(2.3 * rows + 0.5, 3.4)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    norm = TwoSlopeNorm(0.0, -limit, limit) if limit > 0 else TwoSlopeNorm(0.0, -1.0, 1.0)
    image = None
    for ax, name, m, n in zip(axes, classes, maps, counts):
        image = ax.imshow(m, cmap=SIGNED_ON_WHITE, norm=norm)
        ax.set_title(f"{name} ({int(n)} images)" if n else f"{name} (no images)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(classes) :]:
        ax.set_axis_off()
    if not any(counts):  # no image in any class: there is no mean map, so no colour scale either
        fig.suptitle(f"{title}; no image was attributed to {', '.join(classes)}", fontsize=10, wrap=True)
        return fig
    fig.colorbar(image, ax=axes.tolist(), shrink=0.8, label=COLOUR_BAR)
    caption = f"one colour scale: ±{limit:.3g}" if limit > 0 else "every mean map is zero"
    fig.suptitle(f"{title}; {caption}", fontsize=10, wrap=True)  # one class alone is a narrow figure
    return fig


def completeness_figure(errors: np.ndarray, tolerance: float | None, *, title: str = "") -> Figure:
    """A histogram of relative completeness errors on a log axis, with the tolerance marked.

    Errors below ZERO_ERROR (exact to float rounding) cannot sit on a log axis: they are counted
    in the caption. NaN (a method with no completeness) is left out and counted too.
    """
    errors = np.asarray(errors, dtype=np.float64).ravel()
    finite = errors[np.isfinite(errors)]
    exact = int((finite < ZERO_ERROR).sum())
    shown = finite[finite >= ZERO_ERROR]
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.subplots()
    if shown.size:
        low, high = np.log10(shown.min()), np.log10(shown.max())
        edges = np.logspace(low, high if high > low else low + 1, 31)
        ax.hist(shown, bins=edges, color="0.35")
        ax.set_xscale("log")
    ax.set_xlabel("relative completeness error |Σ map − (F(x) − F(x′))| / |F(x) − F(x′)|")
    ax.set_ylabel("images")
    parts = [f"{errors.size} images"]
    if tolerance is not None:
        ax.axvline(tolerance, color="tab:red", linestyle="--", label=f"tolerance {tolerance:g}")
        ax.legend(fontsize=8)
        parts.append(f"{int((finite < tolerance).sum())} below the tolerance")
    if exact:
        parts.append(f"{exact} exact (not drawn)")
    if errors.size - finite.size:
        parts.append(f"{errors.size - finite.size} without a completeness error")
    ax.set_title((f"{title}: " if title else "") + ", ".join(parts), fontsize=9)
    return fig
