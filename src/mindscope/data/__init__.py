"""Datasets as uint8 image tensors with labels, class names, masks and normalisation.

One spec string names a data source everywhere:
  builtin                 the generated shapes10 set (see `mindscope.data.shapes10`)
  cifar10:PATH            the official python archive or its extracted folder (`.cifar10`)
  fashion-mnist:PATH      a folder of the standard idx files, gzipped or not (`.fashion_mnist`)
  folder:PATH             PATH/class_name/*.png|jpg, with train/ and test/ inside or split 80/20 (`.folder`)
Images stay uint8 (N, C, H, W) in memory; `DataSplits.inputs` makes normalised floats.
Every reader checks sizes against its format before it allocates, and refuses damaged or
crafted files with one ValueError that says what is wrong and what to do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mindscope.data import cifar10, fashion_mnist, folder, shapes10
from mindscope.data.folder import read_image
from mindscope.data.images import DataSplits, ImageSet, Normalization

__all__ = [
    "DATA_KINDS",
    "DataSplits",
    "ImageSet",
    "Normalization",
    "load_data",
    "parse_spec",
    "read_image",
]

DATA_KINDS = ("builtin", "cifar10", "fashion-mnist", "folder")


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
            return kind, cifar10.default_cache() / cifar10.CIFAR10_ARCHIVE
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
    image_shape: tuple[int, int, int] | None = None,
    all_test: bool = False,
) -> DataSplits:
    """Open a data source by its spec. Files are checked now; images load on first use.

    `image_shape` (C, H, W) and `all_test` apply to folders, which are read at the size a
    model expects and, for a model trained elsewhere, count wholly as its test set.
    """
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
            images, labels, masks = shapes10.generate(n, seed=seed, split=int(split == "test"))
            return ImageSet(
                torch.from_numpy(images), torch.from_numpy(labels), shapes10.CLASSES, torch.from_numpy(masks)
            )

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
        cifar10.check_cifar10(path)
        return DataSplits(
            "cifar10", spec, from_both(lambda: _wrap(cifar10.read_cifar10(path))), normalization=normalization
        )
    if kind == "fashion-mnist":
        fashion_mnist.check_fashion_mnist(path)
        return DataSplits(
            "fashion-mnist",
            spec,
            from_both(lambda: _wrap(fashion_mnist.read_fashion_mnist(path))),
            normalization=normalization,
        )
    folder.check_folder(path)
    channels, height, width = image_shape or (3, 32, 32)
    if channels not in (1, 3):
        raise ValueError(f"a folder of images can feed a model with 1 or 3 channels, not {channels}")

    def read() -> tuple[ImageSet, ImageSet]:
        return folder.read_folder(path, seed, size=(height, width), channels=channels, all_test=all_test)

    return DataSplits(f"folder:{path.name}", spec, from_both(read), normalization=normalization)


def _wrap(arrays: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], tuple[str, ...]]):
    (xtr, ytr), (xte, yte), classes = arrays
    return (
        ImageSet(torch.from_numpy(xtr), torch.from_numpy(ytr), classes),
        ImageSet(torch.from_numpy(xte), torch.from_numpy(yte), classes),
    )
