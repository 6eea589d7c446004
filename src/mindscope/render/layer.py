"""Draw attributions to a hidden layer: a bar per channel, and the strongest channels' maps."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from mindscope.attribution import LayerAttribution
from mindscope.render.attribution import NEGATIVE, POSITIVE, _array

__all__ = ["layer_attribution_figure"]


def _summary(result: LayerAttribution, example: int) -> str:
    total = float(result.attributions[example].sum())
    change = float(result.output[example] - result.baseline_output[example])
    text = f"sum over units {total:.4g}, F(x) - F(x') {change:.4g}"
    text += f", completeness err {float(result.relative_completeness_error[example]):.2%}"
    return text + f", {int(result.steps[example])} steps"


def layer_attribution_figure(
    result: LayerAttribution, *, example: int = 0, channels: int = 16, columns: int = 8, title: str = ""
) -> Figure:
    """Draw one example's attribution to each channel as a bar, and the top channels' maps.

    Bars are each channel's total (blue for, red against the target), with the completeness
    check in the title. Below, the `channels` channels with the largest |total| show their
    attribution per position, all on one symmetric scale stated by the colour bar (the
    layer's activation maps weighted by attribution). A layer without positions has bars only.
    """
    a = _array(result.attributions[example])  # (C, ...) one example
    totals = a.reshape(a.shape[0], -1).sum(axis=1)  # (C,)
    spatial = a.ndim == 3
    order = np.argsort(-np.abs(totals), kind="stable")[: max(1, channels)] if spatial else np.array([], int)
    columns = max(1, min(columns, len(order) or 1))
    rows = math.ceil(len(order) / columns)
    fig = Figure(figsize=(max(7.0, 1.0 * columns + 1.5), 2.6 + 1.1 * rows), layout="constrained")
    grid = fig.add_gridspec(1 + rows, columns, height_ratios=[2.2] + [1.0] * rows)
    bars = fig.add_subplot(grid[0, :])
    bars.bar(np.arange(len(totals)), totals, color=np.where(totals[:, None] >= 0, POSITIVE, NEGATIVE), width=0.8)
    bars.axhline(0.0, color="0.5", linewidth=0.6)
    bars.set_xlabel("channel")
    bars.set_ylabel("attribution (units of F)")
    bars.set_title(_summary(result, example), fontsize=8)
    if spatial:
        scale = float(np.abs(a[order]).max()) or 1.0
        shown = None
        for k, channel in enumerate(order):
            ax = fig.add_subplot(grid[1 + k // columns, k % columns])
            shown = ax.imshow(a[channel], cmap="RdBu", vmin=-scale, vmax=scale, interpolation="nearest")
            ax.set_title(f"ch {channel}: {totals[channel]:.2g}", fontsize=7)
            ax.set_xticks([]), ax.set_yticks([])
        fig.colorbar(shown, ax=fig.axes[1:], shrink=0.9)
        fig.supxlabel(
            f"the {len(order)} channels with the largest |total|: attribution per position, one scale ±{scale:.2g}",
            fontsize=8,
        )
    fig.suptitle(title or f"attribution to layer {result.layer}", fontsize=10)
    return fig
