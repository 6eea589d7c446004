"""Draw attributions of inputs that are not images: bars per feature, heat maps over positions.

Tabular rows (N, F) get one bar chart per example: signed bars (blue for the target, red
against, as in the image overlays), the top-k features by |attribution|, the rest summed
in the title. Sequences (N, L, D) get one heat map per example over positions x values,
or summed over the D values of each position. Every panel of a figure shares one scale,
stated on it: the largest |attribution| in the batch. `attribution_figure` picks the
figure that fits the input's layout (`mindscope.inputs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from mindscope.attribution import Attribution
from mindscope.inputs import batch_layout
from mindscope.render.attribution import NEGATIVE, POSITIVE, attribution_panels

__all__ = ["attribution_figure", "feature_bars", "sequence_heatmap"]

ZERO_NOTE = "all attributions are zero"


def _maps(result: Attribution | Tensor | np.ndarray, dims: int, what: str) -> np.ndarray:
    values = result.attributions if isinstance(result, Attribution) else result
    values = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, float)
    if values.ndim != dims or values.shape[0] == 0:
        raise ValueError(f"{what}, got shape {values.shape}")
    return values


def _example_title(result: Attribution | Tensor | np.ndarray, i: int, classes: Sequence[str] | None) -> str:
    """'#i', and for an Attribution its prediction, target and completeness, from its numbers."""
    if not isinstance(result, Attribution):
        return f"#{i}"
    name = (lambda k: classes[k]) if classes is not None else str  # noqa: E731
    predicted, target = int(result.predictions[i]), int(result.targets[i])
    text = f"#{i}: pred {name(predicted)} ({float(result.probabilities[i]):.2f})"
    if target != predicted:
        text += f", target {name(target)}"
    if result.output is not None and result.baseline_output is not None:
        total = float(result.attributions[i].sum())
        text += f"; sum {total:.4g}, F(x) - F(x') {float(result.output[i] - result.baseline_output[i]):.4g}"
    return text


def _scale(values: np.ndarray) -> tuple[float, bool]:
    """(max |values|, or 1 if all are zero; whether all are zero)."""
    peak = float(np.abs(values).max())
    return (peak, False) if peak > 0 else (1.0, True)


def feature_bars(
    result: Attribution | Tensor | np.ndarray,
    *,
    names: Sequence[str] | None = None,
    top_k: int = 20,
    classes: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """One bar chart per example of rows (N, F): the top_k features by |attribution|, signed.

    Bars run largest |attribution| first, from the top; positive (for the target) blue,
    negative red. Every panel shares the x-limits +-max |attribution| of the batch, written
    on the axis label. `names` label the features (default "feature i").
    """
    values = _maps(result, 2, "feature_bars draws rows (N, F); sequences go to sequence_heatmap")
    n, f = values.shape
    if names is not None and len(names) != f:
        raise ValueError(f"{len(names)} feature names for {f} features; give one name per feature")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    labels = list(names) if names is not None else [f"feature {j}" for j in range(f)]
    k = min(top_k, f)
    scale, zero = _scale(values)
    fig = Figure(figsize=(6.4, 0.6 + (0.28 * k + 0.9) * n), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        order = np.argsort(-np.abs(values[i]), kind="stable")[:k]
        shown = values[i, order]
        ax.barh(np.arange(k), shown, color=[POSITIVE if v >= 0 else NEGATIVE for v in shown], height=0.7)
        ax.set_yticks(np.arange(k), [labels[j] for j in order], fontsize=8)
        ax.invert_yaxis()  # the largest on top
        ax.axvline(0.0, color="0.3", linewidth=0.8)
        ax.set_xlim(-1.05 * scale, 1.05 * scale)
        rest = float(values[i].sum() - shown.sum())
        others = f"; the other {f - k} sum to {rest:.3g}" if f > k else ""
        ax.set_title(
            f"{_example_title(result, i, classes)}\ntop {k} of {f} features by |attribution|{others}", fontsize=8
        )
        if zero:
            ax.text(0.5, 0.5, ZERO_NOTE, transform=ax.transAxes, ha="center", va="center", color="tab:red")
    axes[-1].set_xlabel(f"attribution (+ blue: for the target, - red: against); axis ±{scale:.3g} = max |attribution|")
    if title:
        fig.suptitle(title)
    return fig


def sequence_heatmap(
    result: Attribution | Tensor | np.ndarray,
    *,
    per_position: bool = False,
    positions: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """One heat map per example of sequences (N, L, D): values (D) down, positions (L) across.

    With `per_position`, each position's D values are summed first: one strip per example.
    Blue is for the target, red against; every panel shares one colour scale,
    +-max |drawn value| of the batch, stated on the colour bar. `positions` label the L
    positions (tokens, time steps).
    """
    values = _maps(result, 3, "sequence_heatmap draws sequences (N, L, D); rows go to feature_bars")
    n, length, _ = values.shape
    if positions is not None and len(positions) != length:
        raise ValueError(f"{len(positions)} position labels for {length} positions; give one per position")
    drawn = values.sum(axis=2, keepdims=True) if per_position else values  # (N, L, D') with D' = 1 when summed
    scale, zero = _scale(drawn)
    norm = Normalize(-scale, scale)
    fig = Figure(figsize=(max(5.0, 0.3 * length + 2.5), (0.9 + 0.2 * min(drawn.shape[2], 24)) * n + 0.8))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        image = ax.imshow(drawn[i].T, cmap="RdBu", norm=norm, aspect="auto", interpolation="nearest")
        ax.set_title(_example_title(result, i, classes), fontsize=8)
        ax.set_ylabel("sum over values" if per_position else "value (d)", fontsize=8)
        if per_position:
            ax.set_yticks([])
        if positions is not None:
            ax.set_xticks(np.arange(length), list(positions), rotation=60, ha="right", fontsize=7)
        if zero:
            ax.text(0.5, 0.5, ZERO_NOTE, transform=ax.transAxes, ha="center", va="center", color="tab:red")
    axes[-1].set_xlabel("position")
    summed = ", summed over each position's values" if per_position else ""
    bar = fig.colorbar(image, ax=list(axes), shrink=0.9)
    bar.set_label(f"attribution{summed}; ±{scale:.3g} = max |attribution|", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def attribution_figure(
    x: Tensor,
    result: Attribution,
    classes: Sequence[str],
    *,
    layout: str | None = None,
    pixels: Tensor | None = None,
) -> Figure:
    """Draw `result` the way its input asks: image panels, bars per feature, or a heat map over positions.

    `layout` is x's (`mindscope.inputs`' rule when None); `pixels` are the images in [0, 1]
    for image panels (default x itself).
    """
    layout = batch_layout(x.shape, layout)
    if layout == "NF":
        return feature_bars(result, classes=classes)
    if layout == "NLD":
        return sequence_heatmap(result, classes=classes)
    return attribution_panels(x if pixels is None else pixels, result, classes, layout=layout)
