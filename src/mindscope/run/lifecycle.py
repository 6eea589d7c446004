"""Start, continue and finish a recorded training run: what `mindscope train` does, for Python too.

`train_run` checks everything, creates the run directory with its epoch-0 checkpoint, trains
and draws `curves.png`. `resume_run` checks everything before it changes anything, then
continues after the last checkpoint. Both record what produced the run in `config.json`:
every setting, the versions, the git commit and the data's normalisation.
"""

from __future__ import annotations

import errno
import json
import pickle
import platform
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from mindscope._util import check_fits, count, positive_int
from mindscope._version import __version__
from mindscope.data import DataSplits, load_data
from mindscope.model import AllConvNet
from mindscope.run.loaded import data_from_config, load_run
from mindscope.run.store import CONFIG, Run, RunRecorder, atomic_write_bytes, is_run, load_state, read_metrics, require
from mindscope.training import TrainConfig, TrainingDiverged, initial_state, resolve_device, train
from mindscope.weights import weight_histograms

Say = Callable[[str], None]
EpochCallback = Callable[[dict[str, float]], None]


def git_commit() -> str | None:
    """The commit of the mindscope checkout this runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_config(
    config: TrainConfig,
    data: DataSplits,
    model: AllConvNet,
    *,
    data_spec: str,
    train_limit: int | None,
    test_limit: int | None,
) -> dict[str, Any]:
    """Everything that produced a run, as `config.json` records it."""
    norm = data.normalization
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "mindscope": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "git_commit": git_commit(),
        "train": asdict(config),
        "model": {"class": "AllConvNet", **asdict(model.config)},
        "data": {
            "spec": data_spec,
            "name": data.name,
            "train_limit": train_limit,
            "test_limit": test_limit,
            "classes": list(data.classes),
            "image_shape": list(data.image_shape),
            "train_size": len(data.train),
            "test_size": len(data.test),
            "normalization": {"mean": list(norm.mean), "std": list(norm.std)},
        },
    }


def _quiet(_message: str) -> None:
    pass


def _extra_recorders(tensorboard: bool, run: Run) -> list[Any]:
    if not tensorboard:
        return []
    from mindscope.tensorboard import TensorBoardRecorder

    try:
        return [TensorBoardRecorder(run.path / "tensorboard")]
    except ImportError as exc:
        raise ValueError(str(exc)) from exc


def create_run(
    out: Path | str,
    config: TrainConfig,
    *,
    data: str = "builtin",
    width: int = 128,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> tuple[Run, AllConvNet, DataSplits]:
    """Check everything, then create the run directory with its epoch-0 checkpoint."""
    out = Path(out)
    resolve_device(config.device)
    positive_int(width, "width")
    if out.exists():
        hint = f"or continue it with --resume {out}" if is_run(out) else "it is not a run; nothing was changed"
        raise FileExistsError(f"{out} already exists; choose a new --out ({hint})")
    splits = load_data(data, seed=config.seed, train_limit=train_limit, test_limit=test_limit)
    channels, height, width_px = splits.image_shape
    classes = len(splits.classes)
    # Weights, gradients and Adam's two moments, plus one batch of activations (two per layer).
    needed = 4 * (
        4 * AllConvNet.parameter_count(width, classes, channels) + 2 * 9 * config.batch_size * width * height * width_px
    )
    check_fits(
        needed,
        f"training AllConvNet(width={width}) with batches of {config.batch_size}",
        "choose a smaller --width or --batch-size",
    )
    torch.manual_seed(config.seed)
    model = AllConvNet(width=width, num_classes=classes, in_channels=channels)
    cfg = run_config(config, splits, model, data_spec=data, train_limit=train_limit, test_limit=test_limit)
    before = weight_histograms(model, bins=config.histogram_bins) if config.histogram_every else None
    with disk_full_hint(out, resume=False):
        run = Run.create(out, cfg, model, initial_state(model, config), histograms=before)
    return run, model, splits


def save_curves(path: Path | str) -> Path:
    """Draw the walk-through's accuracy and cost panels into RUN/curves.png; return its path."""
    from mindscope.render.html import figure_png
    from mindscope.render.training import training_curves

    path = Path(path)
    run = Run.open(path)
    try:
        metrics = read_metrics(run.db)
    finally:
        run.close()
    atomic_write_bytes(path / "curves.png", figure_png(training_curves(metrics)))
    return path / "curves.png"


def train_run(
    out: Path | str,
    config: TrainConfig | None = None,
    *,
    data: str = "builtin",
    width: int = 128,
    train_limit: int | None = None,
    test_limit: int | None = None,
    tensorboard: bool = False,
    on_epoch: EpochCallback | None = None,
    say: Say | None = None,
    progress: bool | None = None,
) -> Path:
    """Create a run directory at `out`, train `AllConvNet(width)` on `data`, draw its curves.

    `say(message)` hears what happens (the CLI prints it); `on_epoch(metrics)` gets each
    epoch's figures. Returns the run directory, ready for `load_run`.
    """
    config = config or TrainConfig()
    say = say or _quiet
    run, model, splits = create_run(out, config, data=data, width=width, train_limit=train_limit, test_limit=test_limit)
    say(
        f"training AllConvNet(width={width}) on {splits.name}: {len(splits.train)} train / "
        f"{len(splits.test)} test images, {count(config.epochs, 'epoch')}, run in {out}"
    )
    recorder = RunRecorder(run, bins=config.histogram_bins, extra=_extra_recorders(tensorboard, run))
    try:
        with disk_full_hint(Path(out)), curves_even_if_diverged(Path(out)):
            train(model, splits, config, recorder, on_epoch=on_epoch, progress=progress)
            say(f"curves: {save_curves(out)}")
    finally:
        recorder.close()
    return Path(out)


def resume_run(
    path: Path | str,
    *,
    epochs: int | None = None,
    device: str = "cpu",
    tensorboard: bool = False,
    on_epoch: EpochCallback | None = None,
    say: Say | None = None,
    progress: bool | None = None,
) -> Path:
    """Continue a run after its last checkpoint, up to `epochs` (default: its own total).

    Everything is checked before the run is changed. Resuming with the same total
    reproduces an uninterrupted run exactly; a larger total restarts the cosine decay.
    """
    path, say = Path(path), say or _quiet
    if not path.exists():
        raise FileNotFoundError(f"no run at {path} to resume; start one with 'mindscope train --out {path}'")
    run = Run.open(path, write=True)  # the only writer from here on; cleans what killed writers left
    try:
        require(run.config, path, "model", "data", "train")
        last = run.last_checkpoint()
        if last is None:
            raise ValueError(f"run {path} was never started (no checkpoint); start it again with --out")
        try:
            saved = TrainConfig(**run.config["train"])
        except TypeError as exc:
            raise ValueError(
                f"{path / CONFIG} holds unknown training settings ({exc}); "
                "it was not written by this version of mindscope"
            ) from exc
        config = TrainConfig(
            **{**asdict(saved), "device": device, "epochs": saved.epochs if epochs is None else epochs}
        )
        resolve_device(config.device)
        epoch, step = last
        if epoch >= config.epochs:
            repaired = _complete(run, config)
            if repaired:
                done = count(epoch, "epoch")
                say(f"run {path} had trained all {done}; filled in what a kill had left out: {repaired}")
                run.close()
                return path
            if epochs is not None and epochs < epoch:
                raise ValueError(
                    f"run {path} has trained {epoch} epochs, more than --epochs {epochs}; "
                    f"pass --epochs N with N > {epoch} to train more"
                )
            raise ValueError(
                f"run {path} is complete ({epoch} of {config.epochs} epochs); "
                f"pass --epochs N with N > {epoch} to train more"
            )
        model = load_run(path, epoch=epoch).model  # refuses a damaged or non-finite snapshot
        try:
            state = load_state(run, epoch)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise ValueError(
                f"resume state {run.state_path(epoch)} is missing or damaged ({exc}); "
                "the weights are intact: start a new run from them, or train again"
            ) from exc
        splits = data_from_config(run.config)
        extra = _extra_recorders(tensorboard, run)
    except BaseException:
        run.close(discard=True)
        raise
    # Every check passed: only now change the run.
    with disk_full_hint(path):
        if config.epochs != saved.epochs:  # the config records how far the run goes
            run.config["train"]["epochs"] = config.epochs
            atomic_write_bytes(path / CONFIG, json.dumps(run.config, indent=2, sort_keys=True).encode())
        run.rewind(step)
        _fill_step_zero(run, config)
    say(f"resuming {path} after epoch {epoch} (step {step}) up to epoch {config.epochs}")
    recorder = RunRecorder(run, bins=config.histogram_bins, extra=extra)
    try:
        with disk_full_hint(path), curves_even_if_diverged(path):
            train(model, splits, config, recorder, resume=state, on_epoch=on_epoch, progress=progress)
            say(f"curves: {save_curves(path)}")
    finally:
        recorder.close()
    return path


def _fill_step_zero(run: Run, config: TrainConfig) -> bool:
    """Record step 0's weight histograms from the epoch-0 snapshot if a kill lost them."""
    if not config.histogram_every:
        return False
    if run.db.execute("SELECT 1 FROM histograms WHERE step = 0 LIMIT 1").fetchone():
        return False
    from safetensors.torch import load_file

    weights = load_file(run.snapshot_path(0))
    run.log_histograms(0, 0.0, weight_histograms(weights, bins=config.histogram_bins))
    return True


def _complete(run: Run, config: TrainConfig) -> str:
    """Fill in what a finished run lacks after a kill (step-0 histograms, curves.png); say what."""
    done = []
    with disk_full_hint(run.path):
        if _fill_step_zero(run, config):
            done.append("the weight histograms before training")
        if not (run.path / "curves.png").is_file():
            save_curves(run.path)
            done.append("curves.png")
    return " and ".join(done)


@contextmanager
def disk_full_hint(path: Path, *, resume: bool = True) -> Iterator[None]:
    """Turn "no space left" from any writer (files, SQLite, safetensors) into one clear OSError."""
    try:
        yield
    except (OSError, sqlite3.OperationalError, SafetensorError, RuntimeError) as exc:
        text = str(exc).lower()
        full = getattr(exc, "errno", None) == errno.ENOSPC or "disk is full" in text or "no space left" in text
        if not full:
            raise
        then = f"run 'mindscope train --resume {path}'" if resume else "train again"
        raise OSError(errno.ENOSPC, f"disk full while writing {path}; free space and {then}") from exc


@contextmanager
def curves_even_if_diverged(path: Path) -> Iterator[None]:
    """Draw curves.png from what was logged before the loss became non-finite, then re-raise."""
    try:
        yield
    except TrainingDiverged:
        save_curves(path)
        raise
