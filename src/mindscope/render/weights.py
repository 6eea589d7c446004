"""Figures of weight histograms: before vs after, a ridge over training, percentile bands.

Inputs are `weight_histograms` output ({tensor: WeightHistogram}) or the rows of
`LoadedRun.histograms()` (dicts with step, epoch, tensor, edges, counts, stats). Every
curve is a density (fraction of the tensor's weights per unit of weight value), so a
bias of ten values and a kernel of a million read on the same axis.
The before/after look follows the walk-through of Springenberg et al. 2015.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from mindscope.weights import WeightHistogram, histogram_quantiles, histogram_rows

DENSITY_LABEL = "density (fraction of weights per unit)"
# TensorBoard's distribution bands: min/max and the normal's +-1.5, 1, 0.5 sigma points.
BAND_QUANTILES = (0.0, 0.0668, 0.1587, 0.3085, 0.5, 0.6915, 0.8413, 0.9332, 1.0)

History = Iterable[Mapping[str, Any]] | Mapping[int, Mapping[str, WeightHistogram]]
Snapshot = Mapping[str, WeightHistogram] | Iterable[Mapping[str, Any]]


@dataclass(frozen=True)
class _Point:
    time: float
    edges: np.ndarray  # (bins + 1,) float64
    counts: np.ndarray  # (bins,) int64
    stats: Mapping[str, Any]

    @property
    def density(self) -> np.ndarray:
        total = self.counts.sum()
        widths = np.diff(self.edges)
        return self.counts / (total * widths) if total > 0 else np.zeros_like(widths)


def _point(row: Mapping[str, Any], time: str) -> _Point:
    return _Point(
        float(row.get(time) or 0),
        np.asarray(row["edges"], dtype=np.float64),
        np.asarray(row["counts"], dtype=np.int64),
        row["stats"],
    )


def _snapshot(histograms: Snapshot) -> dict[str, _Point]:
    if isinstance(histograms, Mapping):
        rows = histogram_rows(histograms, step=0, epoch=0)
    else:
        rows = list(histograms)
    return {row["tensor"]: _point(row, "step") for row in rows}


def _history(history: History, time: str) -> dict[str, list[_Point]]:
    if time not in ("step", "epoch"):
        raise ValueError(f"time must be 'step' or 'epoch', got {time!r}")
    if isinstance(history, Mapping):
        rows = [row for step in sorted(history) for row in histogram_rows(history[step], step=step, epoch=step)]
    else:
        rows = list(history)
    series: dict[str, list[_Point]] = {}
    for row in rows:
        series.setdefault(row["tensor"], []).append(_point(row, time))
    return {name: sorted(points, key=lambda p: p.time) for name, points in series.items()}


def _choose(available: Sequence[str], tensors: Sequence[str] | None) -> list[str]:
    if tensors is None:
        chosen = [t for t in available if t.endswith("weight")] or list(available)
    else:
        missing = [t for t in tensors if t not in available]
        if missing:
            shown = ", ".join(list(available)[:12]) + (", ..." if len(available) > 12 else "")
            raise ValueError(f"no histograms for {missing}; tensors with histograms: {shown}")
        chosen = list(tensors)
    if not chosen:
        raise ValueError("no histograms to draw; record some with weight_histograms(...) first")
    return chosen


def _grid(count: int, columns: int, height: float) -> tuple[Figure, list]:
    cols = max(1, min(columns, count))
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(4.4 * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def _fmt(stats: Mapping[str, Any], key: str) -> str:
    value = stats.get(key)
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g}"


def weight_histogram_figures(
    before: Snapshot,
    after: Snapshot | None,
    *,
    tensors: Sequence[str] | None = None,
    per_figure: int = 3,
    labels: tuple[str, str] = ("before training", "after training"),
) -> list[Figure]:
    """Draw before vs after histograms, `per_figure` tensors to a figure (two panels each).

    Both panels of a figure share one x-range and one y-range, so a range that grew or a
    peak that fell reads as such. The legends, below the panels, give each tensor's mean
    and std. Default tensors: every ".weight" present. With `after=None` (a model with no
    training history) each figure has one panel, titled `labels[0]`.
    """
    if isinstance(per_figure, bool) or not isinstance(per_figure, int) or per_figure < 1:
        raise ValueError(f"per_figure must be a positive integer, got {per_figure!r}")
    first = _snapshot(before)
    sides = [first] if after is None else [first, _snapshot(after)]
    chosen = _choose([t for t in first if t in sides[-1]], tensors)
    figures = []
    for start in range(0, len(chosen), per_figure):
        group = chosen[start : start + per_figure]
        fig = Figure(figsize=(9 if after is not None else 7, 3.2 + 0.2 * len(group)), layout="constrained")
        axes = fig.subplots(1, len(sides), sharex=True, sharey=True, squeeze=False)[0]
        for ax, side, label in zip(axes, sides, labels):
            for name in group:
                p = side[name]
                ax.stairs(
                    p.density,
                    p.edges,
                    linewidth=1.4,
                    label=f"{name}: mean {_fmt(p.stats, 'mean')}, std {_fmt(p.stats, 'std')}",
                )
            ax.set_title(label)
            ax.locator_params(axis="x", nbins=6)
            ax.set_xlabel("weight value")
            # below the panel, where it cannot cover a peak
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
        axes[0].set_ylabel(DENSITY_LABEL)
        axes[-1].tick_params(labelleft=True)
        lows = [side[n].edges[0] for side in sides for n in group]
        highs = [side[n].edges[-1] for side in sides for n in group]
        axes[0].set_xlim(min(lows), max(highs))
        when = labels[0] if after is None else f"{labels[0]} vs {labels[1]}"
        fig.suptitle(f"weights {when}: {', '.join(group)}")
        figures.append(fig)
    return figures


def _thin(points: list[_Point], limit: int) -> list[_Point]:
    if len(points) <= limit:
        return points
    keep = np.unique(np.linspace(0, len(points) - 1, limit).round().astype(int))
    return [points[i] for i in keep]


def weight_ridge_figure(
    history: History,
    *,
    tensors: Sequence[str] | None = None,
    time: str = "step",
    max_curves: int = 24,
    columns: int = 3,
    overlap: float = 1.8,
) -> Figure:
    """Draw each tensor's histogram at every recorded point, offset vertically (TensorBoard's offset view).

    Oldest at the top, newest in front at the bottom; each curve is scaled to its own peak
    so late, wide distributions stay visible. At most `max_curves` points, evenly spread.
    """
    if max_curves < 2:
        raise ValueError(f"max_curves must be at least 2, got {max_curves!r}")
    series = _history(history, time)
    chosen = _choose(list(series), tensors)
    fig, axes = _grid(len(chosen), columns, 4.2)
    cmap = colormaps["viridis"]
    for ax, name in zip(axes, chosen):
        points = _thin(series[name], max_curves)
        n = len(points)
        for i, p in enumerate(points):
            offset = float(n - 1 - i)
            density = p.density
            peak = density.max()
            height = density / peak * overlap if peak > 0 else density
            colour = cmap(i / max(n - 1, 1))
            ax.stairs(height + offset, p.edges, baseline=offset, fill=True, color="white", zorder=2 * i)
            ax.stairs(height + offset, p.edges, baseline=offset, color=colour, linewidth=1.1, zorder=2 * i + 1)
        ticks = list(range(n))[:: max(1, n // 8)]
        ax.set_yticks([n - 1 - i for i in ticks], [f"{points[i].time:g}" for i in ticks])
        ax.set_ylim(-0.2, n - 1 + overlap * 1.05)
        ax.set_xlim(min(p.edges[0] for p in points), max(p.edges[-1] for p in points))
        ax.locator_params(axis="x", nbins=5)
        ax.set_title(name)
        ax.set_xlabel("weight value")
        ax.set_ylabel(f"{time} (each curve scaled to its peak density)")
    fig.suptitle("weight distributions over training")
    return fig


def weight_percentile_figure(
    history: History, *, tensors: Sequence[str] | None = None, time: str = "step", columns: int = 3
) -> Figure:
    """Draw each tensor's percentiles over time as nested bands (TensorBoard's distributions view).

    Bands, outermost first: min-max, 7-93 %, 16-84 %, 31-69 %; the line is the median.
    Percentiles are read off the histograms (linear within a bin); min and max are exact.
    """
    series = _history(history, time)
    chosen = _choose(list(series), tensors)
    fig, axes = _grid(len(chosen), columns, 3.4)
    pairs = len(BAND_QUANTILES) // 2
    for ax, name in zip(axes, chosen):
        points = series[name]
        times = np.array([p.time for p in points])
        values = np.stack([histogram_quantiles(p.counts, p.edges, BAND_QUANTILES) for p in points])  # (T, 9)
        for j, key in ((0, "min"), (-1, "max")):
            exact = np.array([p.stats.get(key, np.nan) for p in points], dtype=np.float64)
            values[:, j] = np.where(np.isfinite(exact), exact, values[:, j])
        for k in range(pairs):
            lo, hi = BAND_QUANTILES[k], BAND_QUANTILES[-1 - k]
            ax.fill_between(
                times,
                values[:, k],
                values[:, -1 - k],
                color="tab:orange",
                alpha=0.18 + 0.14 * k,
                linewidth=0,
                label="min-max" if k == 0 else f"{lo:.0%}-{hi:.0%}",
            )
        ax.plot(
            times,
            values[:, pairs],
            color="tab:red",
            linewidth=1.2,
            marker="." if len(times) < 3 else None,
            label="median",
        )
        ax.set_title(name)
        ax.set_xlabel(time)
        ax.set_ylabel("weight value")
    if axes:
        axes[0].legend(fontsize="small", loc="upper left")
    fig.suptitle("weight percentiles over training")
    return fig
