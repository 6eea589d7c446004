"""Read the official CIFAR-10 and Fashion-MNIST files safely, and fetch CIFAR-10 on request.

CIFAR-10's batches are Python pickles. They are read with an allow-list unpickler
that admits only the few globals a numpy array needs, so a pickle naming anything
else is refused before anything runs. Archives are read in memory, never extracted.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = (*CIFAR10_TRAIN, "test_batch", "batches.meta")

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
                 "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


def default_cache() -> Path:
    return Path(os.environ.get("MINDSCOPE_CACHE", Path.home() / ".cache" / "mindscope"))


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(data: bytes, source: str) -> object:
    """Unpickle bytes that may only hold plain containers and numpy arrays."""
    try:
        return _AllowListUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{source} is not a plain CIFAR-10 pickle ({exc}); "
                         "it was not executed. Use the official archive") from exc
    except (EOFError, ValueError, IndexError, TypeError) as exc:
        raise ValueError(f"{source} is truncated or corrupt ({exc}); download the archive again") from exc


def _key(d: dict, name: str):
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise ValueError(f"CIFAR-10 pickle lacks the key {name!r}; is this the official python archive?")


def _cifar_members(path: Path) -> dict[str, bytes]:
    """The raw bytes of each CIFAR-10 file, from the archive or the extracted folder."""
    path = Path(path)
    if path.is_dir():
        folder = path / CIFAR10_FOLDER if (path / CIFAR10_FOLDER).is_dir() else path
        if not (folder / "batches.meta").is_file() and (path / CIFAR10_ARCHIVE).is_file():
            return _cifar_members(path / CIFAR10_ARCHIVE)
        missing = [f for f in CIFAR10_FILES if not (folder / f).is_file()]
        if missing:
            raise ValueError(f"{folder} is not an extracted CIFAR-10 folder: missing "
                             f"{', '.join(missing)}; point at {CIFAR10_ARCHIVE} or {CIFAR10_FOLDER}/")
        return {f: (folder / f).read_bytes() for f in CIFAR10_FILES}
    try:
        with tarfile.open(path, "r:*") as tar:
            found = {}
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in CIFAR10_FILES:
                    found[base] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ValueError(f"{path} is not a readable CIFAR-10 archive ({exc}); it may be truncated "
                         "or corrupt: download it again") from exc
    missing = [f for f in CIFAR10_FILES if f not in found]
    if missing:
        raise ValueError(f"{path} is not the CIFAR-10 python archive: it lacks {', '.join(missing)}")
    return found


def check_cifar10(path: Path) -> None:
    """Fail early on a path that is clearly not CIFAR-10 (full reading happens on first use)."""
    path = Path(path)
    if path.is_file() and not tarfile.is_tarfile(path):
        raise ValueError(f"{path} is not a tar archive; give {CIFAR10_ARCHIVE} or its extracted folder")
    if path.is_dir():
        _cifar_members(path) if not (path / CIFAR10_ARCHIVE).is_file() else None


def _cifar_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(data, name)
    if not isinstance(batch, dict):
        raise ValueError(f"{name} does not hold a dict; is this the official CIFAR-10 archive?")
    images = np.asarray(_key(batch, "data"))
    labels = np.asarray(_key(batch, "labels"), dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        raise ValueError(f"{name}: expected uint8 images of shape (N, 3072), got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],) or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{name}: expected {images.shape[0]} labels in 0..9")
    return images.reshape(-1, 3, 32, 32), labels


def read_cifar10(path: Path):
    """Return ((train_x, train_y), (test_x, test_y), class_names) from the official files."""
    members = _cifar_members(Path(path))
    parts = [_cifar_batch(members[f], f) for f in CIFAR10_TRAIN]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = _cifar_batch(members["test_batch"], "test_batch")
    meta = safe_unpickle(members["batches.meta"], "batches.meta")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in _key(meta, "label_names"))
    if len(names) != 10:
        raise ValueError(f"batches.meta names {len(names)} classes, CIFAR-10 has 10")
    return train, test, names


def download_cifar10(dest: Path | None = None, *, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     timeout: float = 60.0) -> Path:
    """Fetch the archive into `dest` (a folder) unless it is there; verify its MD5."""
    dest = Path(dest) if dest is not None else default_cache()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / CIFAR10_ARCHIVE
    if target.is_file() and _md5(target) == md5:
        return target
    fd, partial = tempfile.mkstemp(prefix=CIFAR10_ARCHIVE + ".", suffix=".part", dir=dest)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        got = _md5(Path(partial))
        if got != md5:
            raise ValueError(f"downloaded {url} has MD5 {got}, expected {md5}; "
                             "the file was removed, try again later")
        os.replace(partial, target)
    except OSError as exc:
        raise ValueError(f"could not download {url} ({exc}); fetch {CIFAR10_ARCHIVE} by hand "
                         "and pass cifar10:PATH") from exc
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"{folder} lacks {stem}[.gz]; expected the four Fashion-MNIST idx files")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is truncated or corrupt ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != ndim:
        raise ValueError(f"{path} is not an idx file of unsigned bytes with {ndim} dimensions")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {body.size} values, its header says {shape}: truncated?")
    return body.reshape(shape)


def check_fashion_mnist(folder: Path) -> None:
    if not Path(folder).is_dir():
        raise ValueError(f"{folder} is not a folder; give the folder with the Fashion-MNIST idx files")
    for stem in FASHION_FILES.values():
        _find(Path(folder), stem)


def read_fashion_mnist(folder: Path):
    folder = Path(folder)
    arrays = {k: _read_idx(_find(folder, stem), 3 if k.endswith("images") else 1)
              for k, stem in FASHION_FILES.items()}
    sets = []
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"][:, None], arrays[f"{split}_labels"].astype(np.int64)
        if len(x) != len(y) or (len(y) and y.max() > 9):
            raise ValueError(f"Fashion-MNIST {split}: {len(x)} images but {len(y)} labels in 0..9")
        sets.append((x, y))
    return sets[0], sets[1], FASHION_CLASSES
