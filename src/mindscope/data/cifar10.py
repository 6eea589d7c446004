"""Read the official CIFAR-10 python archive safely, and fetch it on request.

Krizhevsky 2009 ("Learning Multiple Layers of Features from Tiny Images") describes the
batches: five training batches and one test batch of 10,000 images each, every image a row
of 3072 bytes, pickled by Python 2. They are read with `safe_pickle`, which runs nothing
and builds only numeric arrays no larger than a batch. Archives are read in memory, never
extracted, and every size is checked against the format's before anything is read:
a file of the archive holds about 31 MB, the whole archive unpacks to about 178 MB.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mindscope.data import safe_pickle
from mindscope.data.images import as_labels

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = (*CIFAR10_TRAIN, "test_batch", "batches.meta")
CIFAR10_CLASSES = 10
BATCH_IMAGES = 10_000  # images in every batch file, train and test
IMAGE_BYTES = 3 * 32 * 32

# The official batches are 31,035,xxx bytes and batches.meta 158; twice that leaves room
# for a batch pickled again by Python 3 (its bytes grow by up to half).
MAX_BATCH_FILE = 64 << 20  # bytes
MAX_META_FILE = 1 << 20  # bytes
MAX_ARCHIVE = 512 << 20  # bytes the archive may unpack to (the official one: 178 MiB)
MAX_MEMBERS = 1000  # entries in the archive (the official one: 9)
_MAX_ARRAY = BATCH_IMAGES * IMAGE_BYTES  # bytes: one batch's images, the largest array in the format
_MAX_BUILT = 2 * (_MAX_ARRAY + BATCH_IMAGES * 8)  # bytes built per pickle: images and labels, as text and as arrays


def default_cache() -> Path:
    """The folder `--download` writes to: $MINDSCOPE_CACHE or ~/.cache/mindscope."""
    return Path(os.environ.get("MINDSCOPE_CACHE", Path.home() / ".cache" / "mindscope"))


def safe_unpickle(data: bytes, source: str) -> object:
    """Unpickle bytes that may only hold plain containers and numeric numpy arrays of batch size.

    A pickle that names any other callable, or declares a larger array, is refused before
    anything in it runs or is allocated.
    """
    try:
        return safe_pickle.load(data, max_array_bytes=_MAX_ARRAY, max_total_bytes=_MAX_BUILT)
    except safe_pickle.Refused as exc:
        raise ValueError(
            f"refused to unpickle {source}: {exc}; a CIFAR-10 batch never does that, "
            "and nothing in it was run or allocated. Use the official archive"
        ) from exc
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        IndexError,
        TypeError,
        KeyError,
        AttributeError,
        OverflowError,
        MemoryError,
        RecursionError,
    ) as exc:
        raise ValueError(
            f"{source} is truncated or corrupt ({type(exc).__name__}: {exc}); download the archive again"
        ) from exc


def _key(d: dict, name: str, source: str):
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise ValueError(f"{source} lacks the key {name!r}; is this the official CIFAR-10 python archive?")


def _cifar_folder(path: Path) -> Path | None:
    """The extracted folder holding the batches, if `path` is (or contains) one."""
    for folder in (path / CIFAR10_FOLDER, path):
        if (folder / "batches.meta").is_file():
            return folder
    return None


def _cifar_source(path: Path) -> Path:
    """Resolve `path` to the extracted batch folder or the archive file; check it cheaply."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no such file or folder {str(path)!r}; give {CIFAR10_ARCHIVE} or its extracted {CIFAR10_FOLDER}/"
        )
    if path.is_dir():
        folder = _cifar_folder(path)
        if folder is None and (path / CIFAR10_ARCHIVE).is_file():
            return _cifar_source(path / CIFAR10_ARCHIVE)
        folder = folder or path
        missing = [f for f in CIFAR10_FILES if not (folder / f).is_file()]
        if missing:
            raise ValueError(
                f"{folder} is not an extracted CIFAR-10 folder: it lacks {', '.join(missing)}; "
                f"point at {CIFAR10_ARCHIVE} or {CIFAR10_FOLDER}/"
            )
        return folder
    if not tarfile.is_tarfile(path):
        raise ValueError(f"{path} is not a tar archive; give {CIFAR10_ARCHIVE} or its extracted {CIFAR10_FOLDER}/")
    return path


def _check_size(source: Path, name: str, size: int) -> None:
    limit = MAX_META_FILE if name == "batches.meta" else MAX_BATCH_FILE
    if size > limit:
        raise ValueError(
            f"{source}: {name} is {size:,} bytes, more than the {limit:,} a CIFAR-10 file can be "
            "(a batch of 10,000 images is about 31 MB); nothing was read. Use the official archive"
        )


def _cifar_files(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (name, raw bytes) for each CIFAR-10 file, from the archive or the extracted folder.

    Each size is checked before the file is read; then missing files are reported.
    """
    source = _cifar_source(path)
    found: set[str] = set()
    if source.is_dir():
        for name in CIFAR10_FILES:
            _check_size(source, name, (source / name).stat().st_size)
            found.add(name)
            yield name, (source / name).read_bytes()
    else:
        try:
            with tarfile.open(source, "r:*") as tar:
                for count, member in enumerate(tar, 1):
                    _check_archive(source, count, member.offset_data + member.size)
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in CIFAR10_FILES:
                        _check_size(source, base, member.size)
                        found.add(base)
                        yield base, tar.extractfile(member).read()
                # tarfile stops quietly at a damaged header; reading the rest checks gzip's CRC.
                unpacked = tar.offset
                while chunk := tar.fileobj.read(1 << 20):
                    unpacked += len(chunk)
                    _check_archive(source, 0, unpacked)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise ValueError(
                f"{source} is not a readable CIFAR-10 archive ({exc}); it may be truncated or corrupt: "
                "download it again"
            ) from exc
    missing = [f for f in CIFAR10_FILES if f not in found]
    if missing:
        raise ValueError(
            f"{source} is not the CIFAR-10 python archive: it lacks {', '.join(missing)} "
            "(or it is truncated or corrupt: download it again)"
        )


def _check_archive(source: Path, members: int, unpacked: int) -> None:
    if members > MAX_MEMBERS or unpacked > MAX_ARCHIVE:
        what = f"more than {MAX_MEMBERS:,} entries" if members > MAX_MEMBERS else f"more than {MAX_ARCHIVE:,} bytes"
        raise ValueError(
            f"{source} unpacks to {what}; the CIFAR-10 python archive holds 9 entries and about "
            "178 MB. Use the official archive"
        )


def check_cifar10(path: Path) -> None:
    """Fail early on a path that is clearly not CIFAR-10 (full reading happens on first use)."""
    _cifar_source(Path(path))


def _cifar_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch pickle -> uint8 images (n, 3, 32, 32) and int64 labels (n,)."""
    batch = safe_unpickle(data, name)
    if not isinstance(batch, dict):
        raise ValueError(f"{name} holds a {type(batch).__name__}, not a dict; is this the official CIFAR-10 archive?")
    images = _key(batch, "data", name)
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 2
        or images.shape[1] != IMAGE_BYTES
    ):
        described = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(
            f"{name}: expected uint8 images of shape (N, 3072), got {described}; is this the official archive?"
        )
    labels = as_labels(_key(batch, "labels", name), len(images), name, CIFAR10_CLASSES)
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major.
    return images.reshape(-1, 3, 32, 32), labels  # (n, 3, 32, 32)


def _class_names(data: bytes) -> tuple[str, ...]:
    meta = safe_unpickle(data, "batches.meta")
    if not isinstance(meta, dict):
        raise ValueError(
            f"batches.meta holds a {type(meta).__name__}, not a dict; is this the official CIFAR-10 archive?"
        )
    raw_names = _key(meta, "label_names", "batches.meta")
    if not isinstance(raw_names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in raw_names):
        raise ValueError("batches.meta: label_names must be a list of strings")
    if len(raw_names) != CIFAR10_CLASSES:
        raise ValueError(f"batches.meta names {len(raw_names)} classes, CIFAR-10 has {CIFAR10_CLASSES}")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in raw_names)


def read_cifar10(path: Path):
    """Return ((train_x, train_y), (test_x, test_y), class_names) from the official files."""
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    names: tuple[str, ...] = ()
    for name, raw in _cifar_files(Path(path)):  # each file is decoded as it arrives: one raw file in memory
        if name == "batches.meta":
            names = _class_names(raw)
        else:
            batches[name] = _cifar_batch(raw, name)
    parts = [batches[f] for f in CIFAR10_TRAIN]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return train, batches["test_batch"], names


def download_cifar10(
    dest: Path | None = None, *, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5, timeout: float = 60.0
) -> Path:
    """Fetch the archive unless a copy with the right MD5 is there; return its path.

    `dest` is a folder (the archive goes inside it) or the archive's own path ending in
    .tar.gz; by default the cache folder. The download goes to a temporary file in the
    same folder and is renamed into place only after its MD5 matches, so a failed or
    wrong download leaves nothing behind.
    """
    dest = Path(dest) if dest is not None else default_cache()
    target = dest if dest.name.endswith((".tar.gz", ".tgz")) else dest / CIFAR10_ARCHIVE
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and _md5(target) == md5:
        return target
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
        except (OSError, http.client.HTTPException) as exc:
            raise ValueError(
                f"could not download {url} ({exc}); fetch {CIFAR10_ARCHIVE} by hand and pass --data cifar10:PATH"
            ) from exc
        got = _md5(Path(partial))
        if got != md5:
            raise ValueError(
                f"refused the download of {url}: its MD5 is {got}, expected {md5}; "
                "the file was removed. Try again, or fetch it by hand"
            )
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
