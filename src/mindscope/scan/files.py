"""Every file of a scan is written whole or not at all, and a killed writer's pieces are found.

A file is written to `.NAME.XXXX.tmp` beside it, synced, and renamed over NAME, so a reader
(or the next run) sees the old file or the new one, never half. While it writes, the writer
holds an OS lock on its temp file; the kernel drops that lock when the process dies, however
it dies. `remove_leftovers` deletes only unlocked temp files, so it never pulls a file from
under a live writer on another shard (another `--shard` process sharing the folder).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, leftovers are removed unconditionally
    fcntl = None  # type: ignore[assignment]


def write_atomically(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write `path` through `write(file)` so that it appears whole or not at all."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # ours until we close it or die
        with os.fdopen(fd, "wb", closefd=False) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        os.close(fd)
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all."""
    write_atomically(path, lambda f: f.write(data))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_held(path: Path) -> bool:
    """True while a live process holds the lock of this temp file."""
    if fcntl is None:  # pragma: no cover
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return False


def remove_leftovers(folders: Iterable[Path], names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temp files that dead writers left in `folders` (only those of `names`, if given)."""
    wanted = None if names is None else set(names)
    removed = []
    for folder in folders:
        for tmp in sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []:
            target = tmp.name[1:].rsplit(".", 2)[0]  # ".NAME.XXXX.tmp" -> NAME
            if (wanted is None or target in wanted) and not is_held(tmp):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def leftovers(folders: Iterable[Path]) -> list[Path]:
    """Every temp file in `folders`, held or not (for tests and checks)."""
    return [p for folder in folders if Path(folder).is_dir() for p in sorted(Path(folder).glob(".*.tmp"))]
