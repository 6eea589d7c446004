"""Image folders: ROOT/CLASS_NAME/*.png|jpg, with train/ and test/ inside or split 80/20.

Every image is read with Pillow and resized to 32x32 (or the size a model asks for). Its size is checked from the header
before any pixel is decoded, so one huge file is a clear error, not a decompression bomb.
Folders whose names start with a dot (.ipynb_checkpoints, .git) are not classes.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from mindscope.data.images import ImageSet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_IMAGE_PIXELS = 1 << 26  # 8192 x 8192: 192 MiB as RGB while it is resized; PIL warns above 89 M


class _TooLarge(Exception):
    """An image whose header declares more pixels than MAX_IMAGE_PIXELS."""


def read_image(path: Path | str, *, size: tuple[int, int] = (32, 32), channels: int = 3) -> np.ndarray:
    """Read one PNG/JPEG file as uint8 (C, H, W), resized to `size` (H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size  # from the header: nothing is decoded yet
            if width * height > MAX_IMAGE_PIXELS:
                raise _TooLarge(f"{width}x{height} pixels")
            img = img.convert("RGB" if channels == 3 else "L")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except _TooLarge as exc:
        raise _too_large(path, str(exc)) from exc
    except Image.DecompressionBombError as exc:
        raise _too_large(path, "Pillow refused it as a possible decompression bomb") from exc
    except MemoryError as exc:
        raise _too_large(path, "out of memory while decoding it") from exc
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise ValueError(f"cannot read {path} ({exc.strerror}); check the path") from exc
    except UnidentifiedImageError as exc:
        raise ValueError(f"{path} is not an image Pillow can read ({exc}); give a PNG or JPEG file") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ValueError(f"{path} is truncated or corrupt ({exc}); copy it again or remove it") from exc
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _too_large(path: Path | str, detail: str) -> ValueError:
    return ValueError(
        f"{path} is too large ({detail}); an image may have at most {MAX_IMAGE_PIXELS:,} pixels: "
        "shrink it (it is resized to the model's input size anyway) or remove it"
    )


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_folder(root: Path) -> tuple[Path, Path | None, list[str]]:
    """Check the layout of an image folder without reading an image.

    Returns the training folder, the test folder (None when the images are split 80/20)
    and the class names.
    """
    if not root.is_dir():
        raise ValueError(
            f"{root} is a file, not a folder; folder:PATH wants PATH/CLASS_NAME/*.png "
            "(or PATH/train/CLASS_NAME and PATH/test/CLASS_NAME)"
        )
    has = {split: (root / split).is_dir() for split in ("train", "test")}
    if has["train"] != has["test"]:
        present, absent = ("train", "test") if has["train"] else ("test", "train")
        raise ValueError(
            f"{root} has {present}/ but no {absent}/; give both, or put the class folders in {root} itself "
            "to split them 80/20"
        )
    base = root / "train" if has["train"] else root
    classes = _class_folders(base)
    if not classes:
        raise ValueError(f"no class folders in {root}; expected {root}/CLASS_NAME/*.png")
    if len(classes) < 2:
        raise ValueError(
            f"{base} holds one class folder ({classes[0]}); a classifier needs at least 2 classes: "
            f"add a folder per class, {base}/CLASS_NAME/*.png"
        )
    if not has["test"]:
        return base, None, classes
    unknown = [name for name in _class_folders(root / "test") if name not in classes]
    if unknown:
        raise ValueError(
            f"{root}/test has class folders that {root}/train lacks: {', '.join(unknown)}; "
            "the classes come from train/: add them there or remove them from test/"
        )
    return base, root / "test", classes


def _scan(folder: Path, classes: list[str], **shape: tuple[int, int] | int) -> tuple[list[np.ndarray], list[int]]:
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()) if (folder / name).is_dir() else []:
            if file.suffix.lower() in IMAGE_SUFFIXES:
                images.append(read_image(file, **shape))
                labels.append(label)
    return images, labels


def read_folder(
    root: Path, seed: int, *, size: tuple[int, int] = (32, 32), channels: int = 3, all_test: bool = False
) -> tuple[ImageSet, ImageSet]:
    """Read every image of a folder as (train, test); without train/ and test/, split 80/20 by `seed`.

    With `all_test` (a model trained elsewhere, which has seen none of these images), a
    folder without train/ and test/ is all test set, and its train split is the same images.
    """
    base, test_folder, classes = check_folder(root)
    shape = {"size": size, "channels": channels}
    images, labels = _scan(base, classes, **shape)
    if not images:
        raise ValueError(f"no .png or .jpg images under {base}/CLASS_NAME/")
    x, y = np.stack(images), np.asarray(labels, np.int64)
    if test_folder is not None:
        test_images, test_labels = _scan(test_folder, classes, **shape)
        if not test_images:
            raise ValueError(f"no .png or .jpg images under {test_folder}/CLASS_NAME/")
        xt, yt = np.stack(test_images), np.asarray(test_labels, np.int64)
    elif all_test:
        xt, yt = x, y
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
