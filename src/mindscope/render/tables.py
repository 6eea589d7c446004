"""Plain-text tables: the weight-change table as the CLI prints it."""

from __future__ import annotations

from collections.abc import Iterable

from mindscope.weights import WeightChange

__all__ = ["format_change", "format_change_table"]


def format_change(change: WeightChange) -> tuple[str, str]:
    """(norm change, distance moved) as text: relative where |before| > 0, absolute where it is 0."""
    b, a = change.l2
    norm = f"{change.l2_change:+.1%}" if b > 0 else f"{a - b:+.3g} (from 0)"
    if change.moved is None:
        moved = "-"
    elif b > 0:
        moved = f"{change.relative_move:.1%}"
    else:
        moved = f"{change.moved:.3g} (from 0)"
    return norm, moved


def format_change_table(changes: Iterable[WeightChange], *, before: str = "before", after: str = "after") -> str:
    """Lay out `weight_changes` as a plain-text table, one tensor a line.

    "norm change" is (|after| - |before|) / |before|; "moved" is |after - before| / |before|,
    how far the weights went. Where |before| is 0 (biases start at zero) both are absolute.
    """

    def pair(v: tuple[float, float], sign: str = "+") -> str:
        return f"{v[0]:{sign}.3g} -> {v[1]:{sign}.3g}"

    header = ("tensor", f"mean {before} -> {after}", "std", "min", "max", "L2 norm", "norm change", "moved")
    lines = [
        (c.tensor, pair(c.mean), pair(c.std, "-"), pair(c.min), pair(c.max), pair(c.l2, "-"), *format_change(c))
        for c in changes
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines])
