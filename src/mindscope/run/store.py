"""The run directory: a complete, crash-safe record of one training run.

    RUN/config.json                 every setting, versions, git commit, normalisation
    RUN/metrics.sqlite              metrics, weight histograms, checkpoints (source of truth)
    RUN/snapshots/epoch_0003.safetensors   weights before training (0) and after each epoch
    RUN/state/epoch_0003.pt         optimiser, scheduler and RNG state for resuming

Files are written to a temporary name and renamed; database rows are written in
transactions. A checkpoint counts only once its row is in `checkpoints`, written after
both of its files, so a process killed at any moment leaves a readable run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from mindscope.run.lock import WriterLock, remove_leftovers

CONFIG = "config.json"
DATABASE = "metrics.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (
    step INTEGER NOT NULL, epoch REAL NOT NULL, split TEXT NOT NULL, name TEXT NOT NULL,
    scope TEXT NOT NULL, value REAL, PRIMARY KEY (step, split, name, scope));
CREATE TABLE IF NOT EXISTS histograms (
    step INTEGER NOT NULL, epoch REAL NOT NULL, tensor TEXT NOT NULL,
    edges BLOB NOT NULL, counts BLOB NOT NULL, stats TEXT NOT NULL, PRIMARY KEY (step, tensor));
CREATE TABLE IF NOT EXISTS checkpoints (epoch INTEGER PRIMARY KEY, step INTEGER NOT NULL);
"""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _readable(path: str | Path, *, folder: bool = False) -> None:
    """Give a temp file or folder the usual permissions (mkstemp/mkdtemp make them private)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _atomic_save(path: Path, save) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _readable(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    _atomic_save(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def _cannot_create(path: Path, exc: OSError) -> OSError:
    """Name the run the user asked for, not the staging folder beside it."""
    reason = (exc.strerror or str(exc)).lower()
    return type(exc)(exc.errno, f"cannot create the run {path} ({reason}); choose another --out")


# What config.json must hold, and the types: each reader checks the part it needs before use.
REQUIRED: dict[str, dict[str, type]] = {
    "model": {"width": int, "num_classes": int, "in_channels": int},
    "data": {"spec": str, "classes": list, "image_shape": list, "normalization": dict},
    "train": {},
}


def config_problem(config: object, parts: tuple[str, ...] = ("model",)) -> str | None:
    """What is wrong with the `parts` of a loaded config.json, in a few words, or None."""
    if not isinstance(config, dict):
        return f"holds a {type(config).__name__}, not an object of settings"
    for part in parts:
        if part not in config:
            return f"lacks '{part}'"
        if not isinstance(config[part], dict):
            return f"has a malformed '{part}'"
        for key, kind in REQUIRED[part].items():
            if not isinstance(config[part].get(key), kind):
                return f"lacks '{part}.{key}'" if key not in config[part] else f"has a malformed '{part}.{key}'"
    return None


def require(config: object, path: Path, *parts: str) -> None:
    """Refuse a run whose config.json lacks what the caller is about to read."""
    problem = config_problem(config, parts)
    if problem:
        raise ValueError(
            f"{path} is not a readable mindscope run: its {CONFIG} {problem}; "
            "give a directory written by 'mindscope train'"
        )


def is_run(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file() and (Path(path) / DATABASE).is_file()


class Run:
    """Writer of one run directory. Create with `Run.create`, reopen with `Run.open`."""

    def __init__(self, path: Path, *, lock: WriterLock | None = None) -> None:
        self.path = Path(path)
        self.lock = lock  # held by a writer for its whole life; None for a reader
        self.config: dict[str, Any] = json.loads((self.path / CONFIG).read_text())
        self.db = sqlite3.connect(self.path / DATABASE)

    @classmethod
    def create(
        cls,
        path: Path,
        config: Mapping[str, Any],
        model: nn.Module,
        state: dict[str, Any],
        *,
        histograms: Mapping[str, Any] | None = None,
    ) -> Run:
        """Make the directory whole, with epoch 0's checkpoint (and step 0's histograms), or not at all.

        The new run is returned as a writer that holds its lock; two creations of the same
        path at once leave one run and refuse the other.
        """
        path = Path(path)
        if path.exists():
            kind = "a run" if is_run(path) else "not a run"
            raise FileExistsError(
                f"{path} already exists and is {kind}; choose another --out, or continue a run with --resume"
            )
        for attempt in range(3):  # a cleaner may take an empty staging folder before its lock exists
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
            except OSError as exc:
                raise _cannot_create(path, exc) from exc
            try:
                lock = WriterLock(staging, name=str(path))
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            (staging / CONFIG).write_text(json.dumps(dict(config), indent=2, sort_keys=True))
            with closing(sqlite3.connect(staging / DATABASE)) as db:
                db.executescript(SCHEMA)
            (staging / "snapshots").mkdir()
            (staging / "state").mkdir()
            first = cls(staging)
            first.checkpoint(0, 0, model, state)
            if histograms is not None:
                first.log_histograms(0, 0.0, histograms)
            first.close()
            _readable(staging, folder=True)
            try:
                os.rename(staging, path)
            except OSError as exc:  # another command created `path` meanwhile
                if path.exists():
                    raise FileExistsError(
                        f"{path} was created by another command at the same moment; choose another --out"
                    ) from None
                raise _cannot_create(path, exc) from exc
        except BaseException:
            lock.release()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        remove_leftovers(path)  # staging folders of earlier, killed creations of this run
        return cls(path, lock=lock)

    @classmethod
    def open(cls, path: Path, *, write: bool = False) -> Run:
        """Open a run to read, or with `write=True` as its only writer (refused while another holds it).

        A writer first removes what killed writers left behind (temp files, staging folders).
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no run at {path}; train one with 'mindscope train --out {path}'")
        if not is_run(path):
            raise ValueError(
                f"{path} is not a mindscope run (no {CONFIG} and {DATABASE}); "
                "give a directory written by 'mindscope train'"
            )
        lock = WriterLock(path, name=str(path)) if write else None
        try:
            run = cls(path, lock=lock)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if lock is not None:
                lock.release(discard=True)
            raise ValueError(
                f"{path} is not a readable mindscope run: its {CONFIG} is damaged ({exc}); "
                "give a directory written by 'mindscope train'"
            ) from exc
        problem = config_problem(run.config)
        if problem:
            run.close(discard=True)
            raise ValueError(
                f"{path} is not a readable mindscope run: its {CONFIG} {problem}; "
                "give a directory written by 'mindscope train'"
            )
        try:
            run.db.execute("SELECT epoch, step FROM checkpoints LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            run.close(discard=True)
            raise ValueError(
                f"{path} is not a readable mindscope run: its {DATABASE} is damaged ({exc}); "
                "give a directory written by 'mindscope train'"
            ) from exc
        if write:
            remove_leftovers(path)
        return run

    def close(self, *, discard: bool = False) -> None:
        """Close the database and let the writer lock go (`discard`: remove a lock file this opening made)."""
        self.db.close()
        if self.lock is not None:
            self.lock.release(discard=discard)

    # --- checkpoints -------------------------------------------------------------------
    def snapshot_path(self, epoch: int) -> Path:
        return self.path / "snapshots" / f"epoch_{epoch:04d}.safetensors"

    def state_path(self, epoch: int) -> Path:
        return self.path / "state" / f"epoch_{epoch:04d}.pt"

    def checkpoint(self, epoch: int, step: int, model: nn.Module, state: dict[str, Any]) -> None:
        """Save weights and resume state for `epoch`, then mark the checkpoint complete."""
        weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        _atomic_save(self.snapshot_path(epoch), lambda tmp: save_file(weights, tmp))
        _atomic_save(self.state_path(epoch), lambda tmp: torch.save(state, tmp))
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?)", (epoch, step))

    def last_checkpoint(self) -> tuple[int, int] | None:
        row = self.db.execute("SELECT epoch, step FROM checkpoints ORDER BY epoch DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def rewind(self, step: int) -> None:
        """Drop every row logged after `step`: what a killed process wrote past its checkpoint."""
        with self.db:
            self.db.execute("DELETE FROM metrics WHERE step > ?", (step,))
            self.db.execute("DELETE FROM histograms WHERE step > ?", (step,))

    # --- logging -------------------------------------------------------------------------
    def log_metrics(
        self, step: int, epoch: float, split: str, values: Mapping[str, float], *, scope: str = "step"
    ) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                [(step, epoch, split, name, scope, float(v)) for name, v in values.items()],
            )

    def log_histograms(self, step: int, epoch: float, histograms: Mapping[str, Any]) -> None:
        """Store `weights.weight_histograms` output: counts, edges and statistics per tensor."""
        from dataclasses import asdict

        rows = []
        for name, h in histograms.items():
            edges = h.edges.detach().to("cpu", torch.float64).numpy()
            counts = h.counts.detach().to("cpu", torch.int64).numpy()
            rows.append((step, epoch, name, edges.tobytes(), counts.tobytes(), json.dumps(asdict(h.stats))))
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO histograms VALUES (?, ?, ?, ?, ?, ?)", rows)


def read_metrics(db: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = db.execute("SELECT step, epoch, split, name, scope, value FROM metrics ORDER BY step, split, name")
    # SQLite stores NaN as NULL: give it back as NaN, the value that was logged.
    return [
        dict(zip(("step", "epoch", "split", "name", "scope", "value"), (*r[:5], math.nan if r[5] is None else r[5])))
        for r in rows
    ]


def load_state(run: Run, epoch: int) -> dict[str, Any]:
    """The resume state of a checkpoint, loaded with weights_only=True (no code runs)."""
    return torch.load(run.state_path(epoch), map_location="cpu", weights_only=True)


class RunRecorder:
    """Send training's logged points, weight histograms and checkpoints to a run directory."""

    def __init__(self, run: Run, *, bins: int = 64, extra: list[Any] | None = None) -> None:
        self.run, self.bins = run, bins
        self.extra = list(extra or [])  # e.g. a TensorBoard writer with the same methods

    def log(self, step: int, epoch: float, split: str, values: dict[str, float], *, scope: str) -> None:
        self.run.log_metrics(step, epoch, split, values, scope=scope)
        for other in self.extra:
            other.log(step, epoch, split, values, scope=scope)

    def log_weights(self, step: int, epoch: float, model: nn.Module) -> None:
        from mindscope.weights import weight_histograms

        histograms = weight_histograms(model, bins=self.bins)
        self.run.log_histograms(step, epoch, histograms)
        for other in self.extra:
            other.log_histograms(step, epoch, histograms)

    def checkpoint(self, epoch: int, step: int, model: nn.Module, state: dict[str, Any]) -> None:
        self.run.checkpoint(epoch, step, model, state)

    def close(self) -> None:
        for other in self.extra:
            other.close()
        self.run.close()
