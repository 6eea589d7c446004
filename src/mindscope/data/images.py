"""Image sets in memory: uint8 images with labels, train/test splits, and their normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Normalization:
    """Per-channel affine map from pixels in [0, 1] to the model's input space."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    def apply(self, pixels: Tensor) -> Tensor:
        """(N, C, H, W) pixels in [0, 1] -> normalised inputs."""
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def invert(self, x: Tensor) -> Tensor:
        """(N, C, H, W) normalised inputs -> pixels (in [0, 1] for real images)."""
        mean, std = self._stats(x)
        return x * std + mean

    @classmethod
    def fit(cls, images: Tensor) -> Normalization:
        """Per-channel mean and std of uint8 images (N, C, H, W)."""
        pixels = images.double() / 255
        std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return cls(tuple(pixels.mean(dim=(0, 2, 3)).tolist()), tuple(std.tolist()))


@dataclass(frozen=True)
class ImageSet:
    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64
    classes: tuple[str, ...]
    masks: Tensor | None = None  # (N, H, W) bool, True on the object

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"expected {len(self.images)} labels, got shape {tuple(self.labels.shape)}")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise ValueError(
                f"labels must lie in 0..{len(self.classes) - 1}, got {int(self.labels.min())}..{int(self.labels.max())}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> ImageSet:
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"a limit must be >= 1, got {n}")
        masks = None if self.masks is None else self.masks[:n]
        return ImageSet(self.images[:n], self.labels[:n], self.classes, masks)

    def pixels(self, indices: Sequence[int] | Tensor | None = None) -> Tensor:
        """Float pixels in [0, 1], (n, C, H, W)."""
        images = self.images if indices is None else self.images[torch.as_tensor(indices)]
        return images.float() / 255


class DataSplits:
    """Train and test sets of one source, each loaded on first use, and their normalisation.

    `load(split)` returns the ImageSet of "train" or "test"; a view of a trained run
    that only looks at test images never pays for the training set.
    """

    def __init__(
        self,
        name: str,
        spec: str,
        load: Callable[[str], ImageSet],
        *,
        normalization: Normalization | None = None,
        description: str = "",
    ) -> None:
        self.name, self.spec, self.description = name, spec, description
        self._load = load
        self._normalization = normalization

    @cached_property
    def train(self) -> ImageSet:
        return self._load("train")

    @cached_property
    def test(self) -> ImageSet:
        return self._load("test")

    @cached_property
    def normalization(self) -> Normalization:
        return self._normalization or Normalization.fit(self.train.images[:10000])

    @property
    def classes(self) -> tuple[str, ...]:
        return self.test.classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.test.images.shape[1:])  # type: ignore[return-value]

    def inputs(self, imageset: ImageSet, indices: Sequence[int] | Tensor | None = None) -> Tensor:
        """Normalised float32 model inputs (n, C, H, W) for the given images."""
        return self.normalization.apply(imageset.pixels(indices))

    def __repr__(self) -> str:
        return f"DataSplits({self.spec!r})"


def as_labels(raw: object, n: int, source: str, classes: int) -> np.ndarray:
    """Check the labels read from a file and return them as int64 (n,).

    A list is checked for length and plain numbers before numpy sees it: a crafted
    file could nest references to one big list and make numpy allocate their product.
    """
    if isinstance(raw, (list, tuple)):
        if len(raw) != n:
            raise ValueError(
                f"{source}: expected {n} integer labels, got a list of {len(raw)}; is this the official archive?"
            )
        odd = next((v for v in raw if type(v) not in (int, float, bool)), None)
        if odd is not None:
            raise ValueError(
                f"{source}: expected {n} integer labels, got a list holding {type(odd).__name__}; "
                "is this the official archive?"
            )
    elif not isinstance(raw, np.ndarray):
        raise ValueError(
            f"{source}: expected {n} integer labels, got {type(raw).__name__}; is this the official archive?"
        )
    labels = np.asarray(raw)
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise ValueError(
            f"{source}: expected {n} integer labels, got {labels.dtype} of shape "
            f"{labels.shape}; is this the official archive?"
        )
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"{source}: labels must lie in 0..{classes - 1}, got "
            f"{labels.min()}..{labels.max()}; is this the official archive?"
        )
    return labels.astype(np.int64)
