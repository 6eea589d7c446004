"""Quadrature rules on [0, 1] for path integrals such as integrated gradients.

A rule is a frozen `Quadrature(name, nodes, weights)`: the integral of f over [0, 1]
is approximated by sum(weights * f(nodes)). Weights of every rule sum to 1, so a
constant integrand is integrated exactly. Composite rules over panels (sub-intervals)
are what adaptive integrated gradients refine. Gauss-Legendre nodes come from
`numpy.polynomial.legendre.leggauss`. Adaptive Simpson: Kuncir 1962; Lyness 1969.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "Panel",
    "Quadrature",
    "adaptive_simpson",
    "composite",
    "gauss_legendre",
    "is_simpson",
    "left",
    "midpoint",
    "right",
    "simpson",
    "trapezoid",
]

SPLIT_FRACTION = 0.9  # bisect every panel whose error indicator is at least this fraction of the worst


@dataclass(frozen=True)
class Quadrature:
    """Nodes in [0, 1] and their weights; integral of f ~= sum(weights * f(nodes))."""

    name: str
    nodes: np.ndarray  # (n,) float64, in [0, 1]
    weights: np.ndarray  # (n,) float64, sum 1

    def __post_init__(self) -> None:
        nodes = np.array(self.nodes, dtype=np.float64)
        weights = np.array(self.weights, dtype=np.float64)
        if nodes.ndim != 1 or nodes.shape != weights.shape or nodes.size == 0:
            raise ValueError(
                f"a quadrature rule needs 1-D nodes and weights of the same non-zero length, "
                f"got shapes {nodes.shape} and {weights.shape}"
            )
        if not np.all(np.isfinite(nodes)) or nodes.min() < 0.0 or nodes.max() > 1.0:
            raise ValueError(
                f"quadrature nodes must lie in [0, 1], got range [{nodes.min()}, {nodes.max()}]; "
                "map your rule onto [0, 1] first"
            )
        # Frozen means frozen: a shared default rule must not be edited in place.
        nodes.flags.writeable = False
        weights.flags.writeable = False
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "weights", weights)

    def __len__(self) -> int:
        return int(self.nodes.size)

    def __repr__(self) -> str:
        return f"Quadrature({self.name!r}, n={len(self)})"

    def on(self, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
        """Return the nodes and weights of this rule mapped onto [a, b] (weights sum to b - a)."""
        return a + (b - a) * self.nodes, (b - a) * self.weights

    def integrate(self, f, a: float = 0.0, b: float = 1.0) -> float:
        """Integrate a vectorised scalar function f over [a, b] with this rule."""
        nodes, weights = self.on(a, b)
        return float(np.sum(weights * np.asarray(f(nodes), dtype=np.float64)))


def _check_steps(n: int, minimum: int = 1) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"the number of steps must be an int, got {type(n).__name__} {n!r}")
    if n < minimum:
        raise ValueError(f"the number of steps must be at least {minimum}, got {n}")


def left(n: int) -> Quadrature:
    """Left Riemann sum: nodes k/n for k = 0..n-1, weights 1/n (first-order accurate)."""
    _check_steps(n)
    return Quadrature(f"left({n})", np.arange(n) / n, np.full(n, 1.0 / n))


def right(n: int) -> Quadrature:
    """Right Riemann sum: nodes k/n for k = 1..n, weights 1/n (first-order accurate)."""
    _check_steps(n)
    return Quadrature(f"right({n})", np.arange(1, n + 1) / n, np.full(n, 1.0 / n))


def midpoint(n: int) -> Quadrature:
    """Midpoint rule: nodes (k + 1/2)/n, weights 1/n (exact for polynomials of degree 1)."""
    _check_steps(n)
    return Quadrature(f"midpoint({n})", (np.arange(n) + 0.5) / n, np.full(n, 1.0 / n))


def trapezoid(n: int) -> Quadrature:
    """Trapezoid rule with n nodes k/(n-1), k = 0..n-1; end weights halved, weights sum to 1."""
    _check_steps(n, minimum=2)
    weights = np.full(n, 1.0 / (n - 1))
    weights[[0, -1]] *= 0.5
    return Quadrature(f"trapezoid({n})", np.linspace(0.0, 1.0, n), weights)


def gauss_legendre(n: int) -> Quadrature:
    """Gauss-Legendre rule with n nodes on [0, 1] (exact for polynomials of degree 2n - 1)."""
    _check_steps(n)
    nodes, weights = np.polynomial.legendre.leggauss(int(n))  # on [-1, 1], weights sum 2
    return Quadrature(f"gauss_legendre({n})", (nodes + 1.0) / 2.0, weights / 2.0)


def simpson(n: int) -> Quadrature:
    """Composite Simpson rule on n equal panels: 2n + 1 nodes k/(2n) (exact for cubics)."""
    _check_steps(n)
    weights = np.zeros(2 * n + 1)
    weights[0:-1:2] += 1.0
    weights[1::2] += 4.0
    weights[2::2] += 1.0
    return Quadrature(f"simpson({n})", np.linspace(0.0, 1.0, 2 * n + 1), weights / (6.0 * n))


def composite(rule: Quadrature, edges: np.ndarray) -> Quadrature:
    """Apply `rule` on every panel [edges[k], edges[k+1]]; edges increase from 0 to 1."""
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or edges[0] != 0.0 or edges[-1] != 1.0 or np.any(np.diff(edges) <= 0):
        raise ValueError(
            f"panel edges must increase strictly from 0 to 1, got {edges.tolist()}; "
            "use e.g. numpy.linspace(0, 1, panels + 1)"
        )
    pieces = [rule.on(a, b) for a, b in zip(edges[:-1], edges[1:])]
    nodes = np.concatenate([p[0] for p in pieces])
    weights = np.concatenate([p[1] for p in pieces])
    return Quadrature(f"composite({rule.name}, {edges.size - 1} panels)", np.clip(nodes, 0.0, 1.0), weights)


# --- adaptive refinement: Simpson panels, bisected ---------------------------------------
# Bisection nests Simpson's rule: a panel's three nodes stay nodes of its halves, so every
# integrand evaluation stays in the result and a bisection costs 2 new evaluations.


def is_simpson(rule: Quadrature) -> bool:
    """Return whether `rule` is the composite Simpson rule simpson(n) for some n."""
    n = (len(rule) - 1) // 2
    if n < 1 or len(rule) != 2 * n + 1:
        return False
    reference = simpson(n)
    return bool(
        np.allclose(rule.nodes, reference.nodes, rtol=0, atol=1e-12)
        and np.allclose(rule.weights, reference.weights, rtol=0, atol=1e-12)
    )


@dataclass
class Panel:
    """A sub-interval [a, b] with f (a vector) at a, (a + b) / 2 and b, and Simpson's integral."""

    a: float
    b: float
    values: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # f(a), f(mid), f(b); shared with neighbours
    change: torch.Tensor | None = None  # error estimate: half the correction its parent got
    integral: torch.Tensor = field(init=False)  # Simpson: (b - a) / 6 * (f(a) + 4 f(mid) + f(b))

    def __post_init__(self) -> None:
        fa, fm, fb = self.values
        self.integral = (self.b - self.a) / 6.0 * (fa + 4.0 * fm + fb)

    def bisection_nodes(self) -> tuple[float, float]:
        """Return the midpoints of the two halves, the new nodes a bisection needs."""
        width = self.b - self.a
        return self.a + width / 4, self.b - width / 4

    def bisect(self, left_value: torch.Tensor, right_value: torch.Tensor) -> list[Panel]:
        """Split in halves given f at `bisection_nodes()`."""
        fa, fm, fb = self.values
        mid = (self.a + self.b) / 2
        left = Panel(self.a, mid, (fa, left_value, fm))
        right = Panel(mid, self.b, (fm, right_value, fb))
        change = (left.integral + right.integral - self.integral) / 2
        left.change, right.change = change, change
        return [left, right]


def _assess(
    panels: list[Panel], weight: torch.Tensor, total: float, scale: float, tolerance: float, check_map: bool
) -> tuple[torch.Tensor, float, list[Panel]]:
    """Return (integral, relative error estimate of weight * integral, panels to bisect, worst first)."""
    integrals = torch.stack([p.integral for p in panels]).flatten(1)  # (P, D)
    w = weight.flatten()  # (D,)
    integral = integrals.sum(0)
    norm = float((w * integral).norm()) or float("inf")
    scale = scale or float("inf")
    if any(p.change is None for p in panels):
        return integral, float("inf"), list(panels)
    known = abs(float((w * integral).sum()) - total) / scale  # measured, not estimated
    weighted = torch.stack([p.change for p in panels]).flatten(1) * w  # (P, D) estimated error per panel
    estimate = float(weighted.sum(0).norm()) / norm
    if known < tolerance and (estimate < tolerance or not check_map):
        return integral, estimate, []
    indicator = weighted.sum(1).abs() / scale
    if check_map:
        indicator = torch.maximum(indicator, weighted.norm(dim=1) / norm)
    indicator = indicator.cpu().numpy()
    order = np.argsort(-indicator, kind="stable")
    return integral, estimate, [panels[q] for q in order if indicator[q] >= SPLIT_FRACTION * indicator[order[0]]]


def adaptive_simpson(
    evaluate: Callable[[np.ndarray, np.ndarray], torch.Tensor],
    weights: torch.Tensor,
    totals: Sequence[float],
    *,
    tolerance: float,
    max_steps: int,
    start: Quadrature | None = None,
    scales: Sequence[float] | None = None,
    check_map: Sequence[bool] | None = None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Integrate N vector functions f_i over [0, 1] by bisecting Simpson panels per function.

    `evaluate(i, a)` returns f_{i[j]}(a[j]) for arrays of function indices and nodes, (J, ...).
    `weights` (N, ...) and `totals` (N,) state what is known exactly: sum(weights_i *
    integral_i) = totals_i (for integrated gradients, x - x' and F(x) - F(x')). Each function
    is refined until |that sum - totals_i| < `tolerance` * scales_i (default |totals_i|) AND,
    where check_map_i (default True), the estimated relative L2 error of weights_i *
    integral_i is below `tolerance`; or until `max_steps` values were used.
    Returns (integrals (N, ...), steps (N,), error estimates (N,)).
    """
    start = simpson(2) if start is None else start
    n, m = weights.shape[0], (len(start) - 1) // 2
    scales = [abs(t) for t in totals] if scales is None else scales
    check_map = [True] * n if check_map is None else check_map
    first = evaluate(np.repeat(np.arange(n), 2 * m + 1), np.tile(start.nodes, n))
    first = first.view(n, 2 * m + 1, *first.shape[1:])
    panels = [
        [Panel(k / m, (k + 1) / m, (first[i, 2 * k], first[i, 2 * k + 1], first[i, 2 * k + 2])) for k in range(m)]
        for i in range(n)
    ]
    steps = np.full(n, 2 * m + 1, dtype=np.int64)
    estimate = np.full(n, np.inf)
    integrals = torch.zeros_like(first[:, 0])
    todo: list[tuple[int, Panel]] = []
    touched = range(n)
    while True:
        for i in touched:
            integral, estimate[i], worth = _assess(panels[i], weights[i], totals[i], scales[i], tolerance, check_map[i])
            integrals[i] = integral.view(integrals.shape[1:])
            todo += [(i, p) for p in worth[: max(0, int(max_steps - steps[i]) // 2)]]
        if not todo:
            return integrals, steps, estimate
        nodes = np.array([a for _, p in todo for a in p.bisection_nodes()])
        values = evaluate(np.repeat([i for i, _ in todo], 2), nodes)
        children = {id(p): p.bisect(values[2 * t], values[2 * t + 1]) for t, (_, p) in enumerate(todo)}
        for i, _ in todo:
            steps[i] += 2
        touched = sorted({i for i, _ in todo})
        for i in touched:
            panels[i] = [c for p in panels[i] for c in children.get(id(p), [p])]
        todo = []
