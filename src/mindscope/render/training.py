"""The walk-through's training panels: accuracy and cost over time, train and test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

COLOURS = {"train": "tab:blue", "test": "tab:orange"}


def training_curves(metrics: Sequence[dict[str, Any]], *, title: str | None = None) -> Figure:
    """Two panels, accuracy and cost (cross-entropy) against epochs, from a run's metrics rows.

    Logged steps are drawn as thin lines and the per-epoch figures (whole test set,
    whole epoch of training) as markers.
    """
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, name, label in ((axes[0], "accuracy", "accuracy (%)"), (axes[1], "loss", "cost (cross-entropy)")):
        scale = 100 if name == "accuracy" else 1
        for split, colour in COLOURS.items():
            for scope, style in (("step", {"lw": 1.0, "alpha": 0.7}), ("epoch", {"marker": "o", "lw": 2.0})):
                rows = [r for r in metrics if r["split"] == split and r["name"] == name and r["scope"] == scope]
                if rows:
                    ax.plot(
                        [r["epoch"] for r in rows],
                        [scale * r["value"] for r in rows],
                        color=colour,
                        label=f"{split} ({'per epoch' if scope == 'epoch' else 'logged steps'})",
                        **style,
                    )
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:  # a run that diverged before its first log has no lines
        axes[0].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    return fig
