"""Read Fashion-MNIST from its four idx files, gzipped or not.

Xiao et al. 2017 ("Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms") describe the set: 60,000 training and 10,000 test images of 28x28 grey pixels.
The idx format is a magic number, each dimension as a big-endian int32, then the bytes.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from mindscope.data.images import as_labels

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_GZIP_MAGIC = b"\x1f\x8b"


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"{folder} lacks {stem}[.gz]; expected the four Fashion-MNIST idx files")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (gzipped or not) -> uint8 array of its header's shape."""
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is truncated or corrupt ({exc}); copy it again") from exc
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != ndim:
        raise ValueError(
            f"{path} is not an idx file of unsigned bytes with {ndim} dimensions (or its header is cut short)"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, np.uint8, offset=header)
    if body.size != int(np.prod(shape)):
        raise ValueError(
            f"{path} holds {body.size} values, its header says {shape}: truncated or corrupt; copy it again"
        )
    return body.reshape(shape).copy()  # writable, so torch.from_numpy does not warn


def check_fashion_mnist(folder: Path) -> None:
    """Fail early unless `folder` holds the four Fashion-MNIST idx files."""
    if not Path(folder).is_dir():
        raise ValueError(f"{folder} is not a folder; give the folder with the Fashion-MNIST idx files")
    for stem in FASHION_FILES.values():
        _find(Path(folder), stem)


def read_fashion_mnist(folder: Path):
    """Return ((train_x, train_y), (test_x, test_y), class_names); images uint8 (N, 1, H, W)."""
    folder = Path(folder)
    arrays = {k: _read_idx(_find(folder, stem), 3 if k.endswith("images") else 1) for k, stem in FASHION_FILES.items()}
    sets = []
    for split in ("train", "test"):
        x = arrays[f"{split}_images"][:, None]  # (N, 1, H, W)
        y = as_labels(arrays[f"{split}_labels"], len(x), f"Fashion-MNIST {split} labels", len(FASHION_CLASSES))
        sets.append((x, y))
    return sets[0], sets[1], FASHION_CLASSES
