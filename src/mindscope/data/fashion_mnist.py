"""Read Fashion-MNIST from its four idx files, gzipped or not.

Xiao et al. 2017 ("Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms") describe the set: 60,000 training and 10,000 test images of 28x28 grey pixels.
The idx format is a magic number, each dimension as a big-endian int32, then the bytes.
Any size the file really holds is read, but nothing is allocated from the header alone:
the data is read in pieces, and decompression stops at the size the header declares.
"""

from __future__ import annotations

import gzip
import math
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
# Bytes one idx file may hold: 20x Fashion-MNIST's largest (47 MB); EMNIST's largest fits.
MAX_IDX_BYTES = 1 << 30
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # bytes read at a time


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"{folder} lacks {stem}[.gz]; expected the four Fashion-MNIST idx files")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (gzipped or not) -> uint8 array of its header's shape."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == _GZIP_MAGIC
    size = path.stat().st_size
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim or header[:2] != b"\x00\x00" or header[2] != 0x08 or header[3] != ndim:
                raise ValueError(
                    f"{path} is not an idx file of unsigned bytes with {ndim} dimensions (or its header is cut short)"
                )
            shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
            n = math.prod(shape)
            if n > MAX_IDX_BYTES:
                raise ValueError(
                    f"{path}'s header declares {shape}, {n:,} bytes, more than the {MAX_IDX_BYTES:,} "
                    "an idx file may hold here (Fashion-MNIST's largest is 47,040,000); is this the right file?"
                )
            if not gzipped and size - len(header) != n:
                raise ValueError(
                    f"{path} holds {size - len(header)} values, its header says {shape}: "
                    "truncated or corrupt; copy it again"
                )
            # Read what is there, never more than the header declares: a small file with a
            # large header, or a gzip bomb, costs no more memory than the data it really holds.
            chunks, held = [], 0
            while held < n and (chunk := f.read(min(_CHUNK, n - held))):
                chunks.append(chunk)
                held += len(chunk)
            extra = f.read(1)  # reading to the end also checks gzip's CRC
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is truncated or corrupt ({exc}); copy it again") from exc
    if held != n or extra:
        held_text = f"{held}" if not extra else f"more than {n}"
        raise ValueError(
            f"{path} holds {held_text} values, its header says {shape}: truncated or corrupt; copy it again"
        )
    out = np.empty(n, np.uint8)  # only now, with the data in hand
    start = 0
    while chunks:
        chunk = chunks.pop(0)
        out[start : start + len(chunk)] = np.frombuffer(chunk, np.uint8)
        start += len(chunk)
    return out.reshape(shape)


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
    train_size, test_size = arrays["train_images"].shape[1:], arrays["test_images"].shape[1:]
    if train_size != test_size:
        raise ValueError(
            f"{folder}: training images are {train_size[0]}x{train_size[1]} but test images "
            f"{test_size[0]}x{test_size[1]}; give the files of one data set"
        )
    sets = []
    for split in ("train", "test"):
        x = arrays[f"{split}_images"][:, None]  # (N, 1, H, W)
        y = as_labels(arrays[f"{split}_labels"], len(x), f"Fashion-MNIST {split} labels", len(FASHION_CLASSES))
        sets.append((x, y))
    return sets[0], sets[1], FASHION_CLASSES
