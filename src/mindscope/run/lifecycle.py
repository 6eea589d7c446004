"""Start, continue and finish a recorded training run: what `mindscope train` does, for Python too.

`train_run` checks everything, creates the run directory with its epoch-0 checkpoint, trains
and draws `curves.png`. `resume_run` checks everything before it changes anything, then
continues after the last checkpoint. Both record what produced the run in `config.json`:
every setting, the versions, the git commit and the data's normalisation.
"""

from __future__ import annotations

import json
import pickle
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mindscope._version import __version__
from mindscope.data import DataSplits, load_data
from mindscope.model import AllConvNet
from mindscope.run.loaded import data_from_config, load_run
from mindscope.run.store import CONFIG, Run, RunRecorder, atomic_write_bytes, is_run, load_state, read_metrics
from mindscope.training import TrainConfig, initial_state, resolve_device, train

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
    if out.exists():
        hint = f"or continue it with --resume {out}" if is_run(out) else "it is not a run; nothing was changed"
        raise FileExistsError(f"{out} already exists; choose a new --out ({hint})")
    splits = load_data(data, seed=config.seed, train_limit=train_limit, test_limit=test_limit)
    torch.manual_seed(config.seed)
    model = AllConvNet(width=width, num_classes=len(splits.classes), in_channels=splits.image_shape[0])
    cfg = run_config(config, splits, model, data_spec=data, train_limit=train_limit, test_limit=test_limit)
    return Run.create(out, cfg, model, initial_state(model, config)), model, splits


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
        f"{len(splits.test)} test images, {config.epochs} epochs, run in {out}"
    )
    recorder = RunRecorder(run, bins=config.histogram_bins, extra=_extra_recorders(tensorboard, run))
    try:
        train(model, splits, config, recorder, on_epoch=on_epoch, progress=progress)
    finally:
        recorder.close()
    say(f"curves: {save_curves(out)}")
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
    run = Run.open(path)
    try:
        last = run.last_checkpoint()
        if last is None:
            raise ValueError(f"run {path} was never started (no checkpoint); start it again with --out")
        if not isinstance(run.config.get("train"), dict):
            raise ValueError(f"{path / CONFIG} lacks the training settings ('train'); nothing to resume with")
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
            raise ValueError(
                f"run {path} has already trained {epoch} of {config.epochs} epochs; "
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
        run.close()
        raise
    # Every check passed: only now change the run.
    if config.epochs != saved.epochs:  # the config records how far the run goes
        run.config["train"]["epochs"] = config.epochs
        atomic_write_bytes(path / CONFIG, json.dumps(run.config, indent=2, sort_keys=True).encode())
    run.rewind(step)
    say(f"resuming {path} after epoch {epoch} (step {step}) up to epoch {config.epochs}")
    recorder = RunRecorder(run, bins=config.histogram_bins, extra=extra)
    try:
        train(model, splits, config, recorder, resume=state, on_epoch=on_epoch, progress=progress)
    finally:
        recorder.close()
    say(f"curves: {save_curves(path)}")
    return path
