"""Draw how far to trust attribution maps: randomisation, deletion/insertion, localisation.

Inputs are the result dataclasses of `mindscope.evaluation`, one per method, keyed by the
method's name. Every function returns a matplotlib `Figure` built without pyplot.
The randomisation curve follows Adebayo et al. 2018 ("Sanity Checks for Saliency Maps").
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from mindscope.evaluation import DeletionResult, LocalisationResult, RandomisationResult
from mindscope.evaluation.randomisation import mean_of_numbers
from mindscope.inputs import batch_layout, to_channels_first

RANDOM_STYLE = {"color": "0.45", "linestyle": "--", "linewidth": 1.2}


def _colours(count: int) -> list:
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(count)]


def _check(results: Mapping[str, object], kind: type, what: str) -> None:
    if not isinstance(results, Mapping) or not results:
        raise ValueError(f"{what} needs a non-empty dict {{method name: {kind.__name__}}}")
    wrong = [name for name, r in results.items() if not isinstance(r, kind)]
    if wrong:
        raise TypeError(f"{what} needs {kind.__name__} values; {wrong[0]!r} is {type(results[wrong[0]]).__name__}")


def randomisation_figure(results: Mapping[str, RandomisationResult]) -> Figure:
    """Similarity to the original map against the layers randomised, one line per method."""
    _check(results, RandomisationResult, "randomisation_figure")
    first = next(iter(results.values()))
    labels = ["none"] + [f"+{name}" for name in first.layers]
    # the rotated layer names take height below the axes: make room so the y-label keeps its own
    longest = max(len(label) for label in labels)
    fig = Figure(figsize=(max(7.0, 0.55 * len(labels) + 3), 3.6 + 0.06 * longest), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, field, title in ((axes[0], "spearman_abs", "|map|"), (axes[1], "spearman_signed", "signed map")):
        for colour, (name, result) in zip(_colours(len(results)), results.items()):
            values = getattr(result, field)  # (L + 1, N)
            steps = np.arange(values.shape[0])
            label = name if result.failure is None else f"{name}: {result.failure}"
            ax.plot(steps, mean_of_numbers(values, axis=1), marker="o", markersize=3, color=colour, label=label)
            if values.shape[1] > 1 and not np.isnan(values).all(axis=1).any():
                ax.fill_between(
                    steps,
                    np.nanpercentile(values, 25, axis=1),
                    np.nanpercentile(values, 75, axis=1),
                    color=colour,
                    alpha=0.15,
                    linewidth=0,
                )
        ax.axhline(0.0, color="0.7", linewidth=0.8)
        ax.set_xticks(np.arange(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("layers randomised (cascading, from the output down)", fontsize=9)
        ax.set_title(title)
    fig.suptitle("rank correlation with the original map as layers are randomised")
    axes[0].axhline(first.threshold, **RANDOM_STYLE, label=f"pass threshold {first.threshold:g}")
    pixels = "all pixels" if first.compared is None else "pixels where x differs from the baseline"
    axes[0].set_ylabel(f"Spearman rank correlation\n(mean, band 25-75%; {pixels})", fontsize=9)
    axes[0].set_ylim(-1.05, 1.05)
    axes[0].legend(fontsize=8, loc="lower left")
    return fig


def deletion_figure(results: Mapping[str, DeletionResult]) -> Figure:
    """Mean target probability as pixels are removed / inserted, most relevant first, vs a random order."""
    _check(results, DeletionResult, "deletion_figure")
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    first = next(iter(results.values()))
    # with one seed and one batch every method shares the random order: draw it once
    randoms_agree = all(
        r.random_deletion.shape == first.random_deletion.shape and np.allclose(r.random_deletion, first.random_deletion)
        for r in results.values()
    )
    for ax, field, title in (
        (axes[0], "deletion", "deletion (lower area is better)"),
        (axes[1], "insertion", "insertion (higher area is better)"),
    ):
        colours = _colours(len(results))
        for colour, (name, result) in zip(colours, results.items()):
            curves = getattr(result, field)  # (N, S + 1)
            ax.plot(
                result.fractions, curves.mean(0), color=colour, label=f"{name} (AUC {result.auc(curves).mean():.3f})"
            )
        for colour, (name, result) in list(zip(colours, results.items()))[: 1 if randoms_agree else None]:
            random = getattr(result, f"random_{field}")
            label = "random order" if randoms_agree else f"{name}: random order"
            style = RANDOM_STYLE if randoms_agree else {**RANDOM_STYLE, "color": colour}
            ax.plot(result.fractions, random.mean(0), **style, label=f"{label} (AUC {result.auc(random).mean():.3f})")
        ax.set_xlabel(f"share of {first.unit} {'removed' if field == 'deletion' else 'inserted'}")
        ax.set_title(title)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("target probability (mean over images)")
    return fig


def localisation_figure(results: Mapping[str, LocalisationResult]) -> Figure:
    """Bars: share of positive mass inside the mask and pointing-game hit rate, per method and random."""
    _check(results, LocalisationResult, "localisation_figure")
    names = list(results)
    first = results[names[0]]
    groups = (
        ("mass inside the mask", [r.mass for r in results.values()], first.random_mass),
        ("pointing game hits", [r.pointing_rate for r in results.values()], first.random_pointing_rate),
    )
    fig = Figure(figsize=(max(6.0, 1.2 * len(names) + 3), 4.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / (len(names) + 1)
    for g, (_label, values, random) in enumerate(groups):
        for i, (colour, value) in enumerate(zip(_colours(len(names)), values)):
            ax.bar(g + i * width, value, width, color=colour, label=names[i] if g == 0 else None)
        ax.bar(
            g + len(names) * width,
            random,
            width,
            color="0.75",
            hatch="//",
            edgecolor="0.45",
            label="random map" if g == 0 else None,
        )
    chance = float(first.mask_fraction.mean())
    ax.axhline(chance, **RANDOM_STYLE, label=f"mask area share {chance:.2f}")
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], [g[0] for g in groups])
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean over images")
    ax.set_title("localisation on object masks")
    ax.legend(fontsize=8, ncols=2)
    return fig


def maps_figure(
    pixels: np.ndarray,
    maps: Mapping[str, np.ndarray],
    masks: np.ndarray | None = None,
    *,
    limit: int = 4,
    layout: str | None = None,
) -> Figure:
    """Grid: each image (row) and every method's |map| summed over channels, the mask outlined.

    `pixels` (N, C, H, W) in [0, 1]; `maps` {method: (N, C, H, W) or (N, H, W)}; `masks` (N, H, W) bool.
    Channels-last pixels and maps, (N, H, W, C), take layout="NHWC" (read by `mindscope.inputs`' rule when None).
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    layout = batch_layout(pixels.shape, layout, name="pixels") if pixels.ndim == 4 else "NCHW"
    pixels = to_channels_first(pixels, layout)
    maps = {k: to_channels_first(np.asarray(v), layout) if np.ndim(v) == 4 else v for k, v in maps.items()}
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(
            f"pixels must be images (N, C, H, W) with C = 1 or 3 in [0, 1], got shape {pixels.shape}; "
            "pass normalization.invert(x)"
        )
    if not maps:
        raise ValueError("maps_figure needs a non-empty dict {method name: maps}")
    rows = min(limit, pixels.shape[0])
    fig = Figure(figsize=(1.9 * (len(maps) + 1), 1.9 * rows + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, len(maps) + 1, squeeze=False))
    for i in range(rows):
        image = np.clip(np.moveaxis(pixels[i], 0, -1), 0, 1)
        axes[i, 0].imshow(image if image.shape[-1] == 3 else image[..., 0], cmap="gray", vmin=0, vmax=1)
        for j, (name, method_maps) in enumerate(maps.items(), start=1):
            m = np.abs(np.asarray(method_maps[i], dtype=np.float64))
            m = m.sum(0) if m.ndim == 3 else m
            axes[i, j].imshow(m, cmap="magma", vmin=0, vmax=m.max() or 1.0)
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
        if masks is not None:
            for ax in axes[i]:
                ax.contour(np.asarray(masks[i], dtype=float), levels=[0.5], colors="cyan", linewidths=0.8)
    axes[0, 0].set_title("image (mask)" if masks is not None else "image", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
