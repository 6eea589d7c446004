"""Layer statistics that add up: shards' `activation_statistics` joined exactly into the whole set's.

`activation_statistics` keeps per channel a count, mean, sum of squared deviations (M2),
counts of active and saturated values and a maximum, in float64. Those merge exactly
(Chan, Golub & LeVeque 1979: the pairwise update of mean and M2), so statistics of shards
computed anywhere, in any order, join into the statistics of one pass over every image, up
to float64 rounding. Counts travel as fractions in `LayerStatistics` and are recovered by
rounding fraction x count, which is exact for any count below 2**52.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mindscope.activations import LayerStatistics


@dataclass(frozen=True)
class Moments:
    """Per-channel running statistics of one layer; every array (C,) float64."""

    examples: int
    positions: int  # values per channel per example
    mean: np.ndarray
    m2: np.ndarray  # sum of squared deviations from the mean
    active: np.ndarray  # number of values > 0
    saturated: np.ndarray  # number of saturated values (nan: the layer has no saturation rule)
    maximum: np.ndarray
    saturation: str | None

    @property
    def count(self) -> int:
        return self.examples * self.positions

    @classmethod
    def of(cls, stats: LayerStatistics) -> Moments:
        n = stats.examples * stats.positions
        as64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
        return cls(
            stats.examples,
            stats.positions,
            as64(stats.mean),
            as64(stats.std) ** 2 * n,
            np.round(as64(stats.active) * n),
            np.round(as64(stats.saturated) * n),
            as64(stats.maximum),
            stats.saturation,
        )

    def merge(self, other: Moments) -> Moments:
        """The statistics of both sets of examples together."""
        if other.positions != self.positions or other.mean.shape != self.mean.shape:
            raise ValueError(
                f"cannot join statistics of {self.mean.shape[0]} channels x {self.positions} positions with "
                f"{other.mean.shape[0]} x {other.positions}; they come from different layers or inputs"
            )
        a, b = self.count, other.count
        total = a + b
        delta = other.mean - self.mean
        return Moments(
            self.examples + other.examples,
            self.positions,
            self.mean + delta * (b / total),
            self.m2 + other.m2 + delta**2 * (a * b / total),
            self.active + other.active,
            self.saturated + other.saturated,
            np.maximum(self.maximum, other.maximum),
            self.saturation,
        )

    def statistics(self, layer: str) -> LayerStatistics:
        """The same result `activation_statistics` gives for these examples in one pass."""
        n = self.count
        return LayerStatistics(
            layer,
            self.examples,
            self.positions,
            self.mean.copy(),
            np.sqrt(self.m2 / n),
            self.active / n,
            self.saturated / n,
            self.maximum.copy(),
            self.saturation,
        )

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        """Flat float64 tensors for a safetensors file; `from_tensors` reads them back."""
        shape = np.array([self.examples, self.positions], dtype=np.float64)
        values = {"mean": self.mean, "m2": self.m2, "active": self.active, "saturated": self.saturated,
                  "maximum": self.maximum, "shape": shape}  # fmt: skip
        return {f"{prefix}{k}": torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in values.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str, saturation: str | None) -> Moments:
        get = lambda k: tensors[f"{prefix}{k}"].numpy()  # noqa: E731
        examples, positions = (int(v) for v in get("shape"))
        return cls(examples, positions, get("mean"), get("m2"), get("active"), get("saturated"), get("maximum"),
                   saturation)  # fmt: skip


def join(parts: list[Moments]) -> Moments:
    """Merge a non-empty list of Moments, left to right."""
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    return total
