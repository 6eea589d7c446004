"""Image folders: ROOT/CLASS_NAME/*.png|jpg, with train/ and test/ inside or split 80/20.

Every image is read with Pillow and resized to 32x32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mindscope.data.images import ImageSet

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


def read_folder(root: Path, seed: int) -> tuple[ImageSet, ImageSet]:
    """Read every image of a folder as (train, test); without train/ and test/, split 80/20 by `seed`."""

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
