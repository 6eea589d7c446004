"""One writer per run: an OS lock on RUN/.writer.lock, held for a whole command.

The kernel drops the lock when its holder exits, however it exits, so a crashed or killed
writer never blocks the next one. Readers (`load_run`, reports) take no lock: SQLite and
atomic renames keep what they read whole.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

try:  # POSIX: flock locks an open file, so two opens in one process also exclude each other
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".writer.lock"
STALE_AFTER_S = 60.0  # an unlocked staging folder older than this is a crashed creation


class RunBusyError(ValueError):
    """Another process holds the run's writer lock."""


class WriterLock:
    """The writer lock of one run directory; `release()` (or process exit) lets it go."""

    def __init__(self, folder: Path, *, name: str | None = None) -> None:
        self.path = Path(folder) / LOCK
        self.created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(self._fd):
            os.close(self._fd)
            holder = _holder(self.path)
            raise RunBusyError(
                f"run {name or folder} is being written by another mindscope command{holder}; "
                "wait for it to finish (or stop it), then try again"
            )
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())

    def release(self, *, discard: bool = False) -> None:
        """Let the lock go; with `discard`, also remove the lock file if this lock made it."""
        if self._fd >= 0:
            if discard and self.created:
                self.path.unlink(missing_ok=True)  # still ours while the descriptor is open
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1


def _try_lock(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def is_locked(folder: Path) -> bool:
    """True while some process holds `folder`'s writer lock."""
    path = Path(folder) / LOCK
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete what killed writers left: temp files in the run, staging folders beside it.

    Call it while holding the run's writer lock. A staging folder (".NAME.*.partial") goes
    only when no process holds its lock; one with no lock file yet goes if it is empty (a
    creation killed right after making it) or older than STALE_AFTER_S. Returns what was removed.
    """
    run_dir = Path(run_dir)
    removed: list[Path] = []
    for folder in (run_dir, run_dir / "snapshots", run_dir / "state"):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    for staging in run_dir.parent.glob(f".{run_dir.name}.*.partial"):
        has_lock = (staging / LOCK).exists()
        old = time.time() - staging.stat().st_mtime > STALE_AFTER_S
        empty = not any(staging.iterdir())
        if (has_lock and not is_locked(staging)) or (not has_lock and (old or empty)):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed
