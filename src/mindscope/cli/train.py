"""`mindscope train` and `mindscope layers`."""

from __future__ import annotations

import json
import pickle
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import click
import torch

import mindscope
from mindscope.data import DataSplits, load_data
from mindscope.layers import describe_layers
from mindscope.model import AllConvNet
from mindscope.run import (
    CONFIG,
    Run,
    RunRecorder,
    atomic_write_bytes,
    data_from_config,
    is_run,
    load_run,
    load_state,
    read_metrics,
)
from mindscope.train import TrainConfig, initial_state, resolve_device, train

DATA_HELP = "builtin | cifar10:PATH | fashion-mnist:PATH | folder:PATH"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(mindscope.__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_config(
    config: TrainConfig, data, model: AllConvNet, *, data_spec: str, train_limit: int | None, test_limit: int | None
) -> dict:
    norm = data.normalization
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "mindscope": mindscope.__version__,
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


def echo_epoch(result: dict) -> None:
    click.echo(
        f"epoch {result['epoch']}: train loss {result['train_loss']:.4f} "
        f"acc {100 * result['train_accuracy']:.1f}% | test loss {result['test_loss']:.4f} "
        f"acc {100 * result['test_accuracy']:.1f}% | {result['seconds']:.1f} s"
    )


def start_run(
    out: Path,
    config: TrainConfig,
    *,
    data_spec: str,
    width: int,
    train_limit: int | None,
    test_limit: int | None,
    download: bool = False,
) -> tuple[Run, AllConvNet, DataSplits]:
    """Check everything, then create the run directory with its epoch-0 checkpoint."""
    resolve_device(config.device)
    if out.exists():
        hint = f"or continue it with --resume {out}" if is_run(out) else "it is not a run; nothing was changed"
        raise FileExistsError(f"{out} already exists; choose a new --out ({hint})")
    if download:
        from mindscope.data import cifar10 as archives

        kind, _, path = data_spec.partition(":")
        if kind != "cifar10":
            raise ValueError("--download fetches CIFAR-10 only; use --data cifar10[:FOLDER]")
        where = archives.download_cifar10(Path(path).expanduser() if path else None)
        data_spec = f"cifar10:{where}"
    data = load_data(data_spec, seed=config.seed, train_limit=train_limit, test_limit=test_limit)
    torch.manual_seed(config.seed)
    channels = data.image_shape[0]
    model = AllConvNet(width=width, num_classes=len(data.classes), in_channels=channels)
    cfg = run_config(config, data, model, data_spec=data_spec, train_limit=train_limit, test_limit=test_limit)
    return Run.create(out, cfg, model, initial_state(model, config)), model, data


def tensorboard_extra(enabled: bool, run: Run) -> list:
    if not enabled:
        return []
    from mindscope.tensorboard import TensorBoardRecorder

    try:
        return [TensorBoardRecorder(run.path / "tensorboard")]
    except ImportError as exc:
        raise ValueError(str(exc)) from exc


@click.command("train")
@click.option("--data", "data_spec", default="builtin", show_default=True, help=DATA_HELP)
@click.option("--epochs", type=int, default=None, help="Epochs to train (default 7; with --resume, the new total).")
@click.option("--width", type=int, default=128, show_default=True, help="Channels per hidden convolution.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Adam peak learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--train-limit", type=int, default=None, help="Use only the first N training images.")
@click.option("--test-limit", type=int, default=None, help="Use only the first N test images.")
@click.option("--log-every", type=int, default=50, show_default=True, help="Steps between logged points.")
@click.option(
    "--histogram-every",
    type=int,
    default=50,
    show_default=True,
    help="Steps between weight histograms (0: at epoch ends only).",
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="New run directory.")
@click.option("--resume", type=click.Path(path_type=Path), default=None, help="Continue this run.")
@click.option("--download", is_flag=True, help="Fetch CIFAR-10 (network needed) and check its MD5.")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard event files into RUN/tensorboard.")
def train_command(
    data_spec,
    epochs,
    width,
    batch_size,
    lr,
    seed,
    train_limit,
    test_limit,
    log_every,
    histogram_every,
    device,
    out,
    resume,
    download,
    tensorboard,
) -> None:
    """Train the all-convolutional network and record the run in a directory."""
    if (out is None) == (resume is None):
        raise click.UsageError("give exactly one of --out RUN_DIR (a new run) or --resume RUN_DIR")
    if resume is not None:
        return resume_run(resume, epochs=epochs, device=device, tensorboard=tensorboard)
    config = TrainConfig(
        epochs=7 if epochs is None else epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        log_every=log_every,
        histogram_every=histogram_every,
        device=device,
    )
    new_run(
        out,
        config,
        data_spec=data_spec,
        width=width,
        train_limit=train_limit,
        test_limit=test_limit,
        download=download,
        tensorboard=tensorboard,
    )
    click.echo(f"done: {out}")


def new_run(
    out: Path,
    config: TrainConfig,
    *,
    data_spec: str,
    width: int,
    train_limit: int | None,
    test_limit: int | None,
    download: bool = False,
    tensorboard: bool = False,
) -> None:
    """Create a run directory and train it, echoing each epoch."""
    run, model, data = start_run(
        out, config, data_spec=data_spec, width=width, train_limit=train_limit, test_limit=test_limit, download=download
    )
    click.echo(
        f"training AllConvNet(width={width}) on {data.name}: {len(data.train)} train / "
        f"{len(data.test)} test images, {config.epochs} epochs, run in {out}"
    )
    recorder = RunRecorder(run, bins=config.histogram_bins, extra=tensorboard_extra(tensorboard, run))
    try:
        train(model, data, config, recorder, on_epoch=echo_epoch)
    finally:
        recorder.close()
    save_curves(out)


def save_curves(path: Path) -> None:
    """Draw the walk-through's accuracy and cost panels into RUN/curves.png."""
    from mindscope.render.html import figure_png
    from mindscope.render.training import training_curves

    run = Run.open(path)
    try:
        metrics = read_metrics(run.db)
    finally:
        run.close()
    atomic_write_bytes(path / "curves.png", figure_png(training_curves(metrics)))
    click.echo(f"curves: {path / 'curves.png'}")


def resume_run(path: Path, *, epochs: int | None, device: str, tensorboard: bool) -> None:
    """Continue a run after its last checkpoint; check everything before changing anything."""
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
        data = data_from_config(run.config)
        extra = tensorboard_extra(tensorboard, run)
    except BaseException:
        run.close()
        raise
    # Every check passed: only now change the run.
    if config.epochs != saved.epochs:  # the config records how far the run goes
        run.config["train"]["epochs"] = config.epochs
        atomic_write_bytes(path / CONFIG, json.dumps(run.config, indent=2, sort_keys=True).encode())
    run.rewind(step)
    click.echo(f"resuming {path} after epoch {epoch} (step {step}) up to epoch {config.epochs}")
    recorder = RunRecorder(run, bins=config.histogram_bins, extra=extra)
    try:
        train(model, data, config, recorder, resume=state, on_epoch=echo_epoch)
    finally:
        recorder.close()
    save_curves(path)


@click.command("layers")
@click.argument("run_dir", type=click.Path(path_type=Path), required=False)
@click.option("--width", type=int, default=None, help="Describe a fresh AllConvNet of this width instead.")
def layers_command(run_dir, width) -> None:
    """List every module: dotted name, layer number, output shape, parameters."""
    if (run_dir is None) == (width is None):
        raise click.UsageError("give a RUN_DIR or --width W")
    if run_dir is not None:
        loaded = load_run(run_dir)
        model, shape = loaded.model, tuple(loaded.config["data"]["image_shape"])
    else:
        model, shape = AllConvNet(width=width), (3, 32, 32)
    click.echo(f"{'name':<14} {'layer':>5}  {'type':<18} {'output shape':<18} {'parameters':>10}")
    for info in describe_layers(model, shape):
        number = "" if info.number is None else str(info.number)
        out_shape = "" if info.output_shape is None else "x".join(map(str, info.output_shape[1:]))
        click.echo(f"{info.name:<14} {number:>5}  {info.kind:<18} {out_shape:<18} {info.parameters:>10,}")
    total = sum(p.numel() for p in model.parameters())
    click.echo(f"total parameters: {total:,}")


commands = [train_command, layers_command]
