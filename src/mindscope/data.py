"""Datasets as uint8 image tensors with labels, class names, masks and normalisation.

One spec string names a data source everywhere:
  builtin                 the generated shapes10 set (see `mindscope.shapes`)
  cifar10:PATH            the official python archive or its extracted folder
  fashion-mnist:PATH      a folder of the standard idx files (gzipped or not)
  folder:PATH             PATH/class_name/*.png|jpg (with train/ and test/ inside, or split 80/20)
Images stay uint8 (N, C, H, W) in memory; `DataSplits.inputs` makes normalised floats.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mindscope import archives, shapes

DATA_KINDS = ("builtin", "cifar10", "fashion-mnist", "folder")


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


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """Split 'kind:PATH' into its kind and path; check the kind."""
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in DATA_KINDS:
        raise ValueError(
            f"unknown data kind {kind!r} in {spec!r}; use one of: builtin, "
            "cifar10:PATH, fashion-mnist:PATH, folder:PATH"
        )
    if kind == "builtin":
        if path:
            raise ValueError(f"'builtin' takes no path, got {spec!r}")
        return kind, None
    if not path:
        if kind == "cifar10":
            return kind, archives.default_cache() / archives.CIFAR10_ARCHIVE
        raise ValueError(f"{kind} needs a path: '{kind}:PATH'")
    return kind, Path(path).expanduser()


def load_data(
    spec: str = "builtin",
    *,
    seed: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    builtin_sizes: tuple[int, int] = (10000, 2000),
    normalization: Normalization | None = None,
) -> DataSplits:
    """Open a data source by its spec. Files are checked now; images load on first use."""
    kind, path = parse_spec(spec)
    for name, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be >= 1, got {limit}")

    limits = {"train": train_limit, "test": test_limit}

    def from_both(load_both: Callable[[], tuple[ImageSet, ImageSet]]) -> Callable[[str], ImageSet]:
        both = functools.cache(load_both)  # one archive read serves both splits
        return lambda split: both()[split == "test"].head(limits[split])

    if kind == "builtin":
        sizes = {"train": builtin_sizes[0], "test": builtin_sizes[1]}

        def load_builtin(split: str) -> ImageSet:
            n = min(sizes[split], limits[split] or sizes[split])
            images, labels, masks = shapes.generate(n, seed=seed, split=int(split == "test"))
            return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), shapes.CLASSES, torch.from_numpy(masks))

        # Fixed statistics (measured on 2000 images: mean 0.49-0.50, std 0.22-0.24 per channel);
        # the generator's pixel distribution does not depend on the seed.
        norm = normalization or Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        return DataSplits(
            "shapes10",
            spec,
            load_builtin,
            normalization=norm,
            description="ten shapes on cluttered textured backgrounds, 32x32 RGB",
        )
    if not path.exists():
        raise FileNotFoundError(
            f"no such file or folder {str(path)!r} for {spec!r}; "
            "check the path" + (" or pass --download" if kind == "cifar10" else "")
        )
    if kind == "cifar10":
        archives.check_cifar10(path)
        return DataSplits(
            "cifar10", spec, from_both(lambda: _wrap(archives.read_cifar10(path))), normalization=normalization
        )
    if kind == "fashion-mnist":
        archives.check_fashion_mnist(path)
        return DataSplits(
            "fashion-mnist",
            spec,
            from_both(lambda: _wrap(archives.read_fashion_mnist(path))),
            normalization=normalization,
        )
    return DataSplits(
        f"folder:{path.name}", spec, from_both(lambda: _read_folder(path, seed)), normalization=normalization
    )


def _wrap(arrays) -> tuple[ImageSet, ImageSet]:
    (xtr, ytr), (xte, yte), classes = arrays
    return (
        ImageSet(torch.from_numpy(xtr), torch.from_numpy(ytr), classes),
        ImageSet(torch.from_numpy(xte), torch.from_numpy(yte), classes),
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image(path: Path | str, *, size: tuple[int, int] = (32, 32), channels: int = 3) -> np.ndarray:
    """Read one PNG/JPEG file as uint8 (C, H, W), resized to `size` (H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path} is not an image Pillow can read ({exc}); give a PNG or JPEG file") from exc
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _read_folder(root: Path, seed: int) -> tuple[ImageSet, ImageSet]:
    def scan(folder: Path, classes: list[str]):
        images, labels = [], []
        for label, name in enumerate(classes):
            for file in sorted((folder / name).iterdir()) if (folder / name).is_dir() else []:
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    images.append(read_image(file))
                    labels.append(label)
        return images, labels

    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / "train" if has_splits else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"no class folders in {root}; expected {root}/CLASS_NAME/*.png")
    images, labels = scan(base, classes)
    if not images:
        raise ValueError(f"no .png or .jpg images under {base}/CLASS_NAME/")
    x, y = np.stack(images), np.asarray(labels, np.int64)
    if has_splits:
        test_images, test_labels = scan(root / "test", classes)
        if not test_images:
            raise ValueError(f"no .png or .jpg images under {root}/test/CLASS_NAME/")
        xt, yt = np.stack(test_images), np.asarray(test_labels, np.int64)
    else:
        if len(y) < 2:
            raise ValueError(
                f"{root} holds {len(y)} image; need at least 2 to split 80/20, or give train/ and test/ folders"
            )
        order = np.random.default_rng(seed).permutation(len(y))
        cut = max(1, int(round(0.8 * len(y))))
        x, y, xt, yt = x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]
    return (
        ImageSet(torch.from_numpy(x), torch.from_numpy(y), tuple(classes)),
        ImageSet(torch.from_numpy(xt), torch.from_numpy(yt), tuple(classes)),
    )
