"""`mindscope train` and `mindscope layers`."""

from __future__ import annotations

from pathlib import Path

import click

from mindscope.cli.source import model_source, open_source
from mindscope.layers import describe_layers
from mindscope.model import AllConvNet
from mindscope.run import resume_run, train_run
from mindscope.run.store import require
from mindscope.training import TrainConfig

DATA_HELP = "builtin | cifar10:PATH | fashion-mnist:PATH | folder:PATH"


def echo_epoch(result: dict) -> None:
    click.echo(
        f"epoch {result['epoch']}: train loss {result['train_loss']:.4f} "
        f"acc {100 * result['train_accuracy']:.1f}% | test loss {result['test_loss']:.4f} "
        f"acc {100 * result['test_accuracy']:.1f}% | {result['seconds']:.1f} s"
    )


def download(data_spec: str) -> str:
    """Fetch CIFAR-10 for --download; return the spec that points at the archive."""
    from mindscope.data import cifar10

    kind, _, path = data_spec.partition(":")
    if kind != "cifar10":
        raise ValueError("--download fetches CIFAR-10 only; use --data cifar10[:FOLDER]")
    return f"cifar10:{cifar10.download_cifar10(Path(path).expanduser() if path else None)}"


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
@click.option("--download", "download_data", is_flag=True, help="Fetch CIFAR-10 (network needed) and check its MD5.")
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
    download_data,
    tensorboard,
) -> None:
    """Train the all-convolutional network and record the run in a directory."""
    if (out is None) == (resume is None):
        raise click.UsageError("give exactly one of --out RUN_DIR (a new run) or --resume RUN_DIR")
    if resume is not None:
        resume_run(resume, epochs=epochs, device=device, tensorboard=tensorboard, on_epoch=echo_epoch, say=click.echo)
        return
    config = TrainConfig(
        epochs=7 if epochs is None else epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        log_every=log_every,
        histogram_every=histogram_every,
        device=device,
    )
    if out.exists():  # checked before any download
        raise FileExistsError(f"{out} already exists; choose a new --out")
    train_run(
        out,
        config,
        data=download(data_spec) if download_data else data_spec,
        width=width,
        train_limit=train_limit,
        test_limit=test_limit,
        tensorboard=tensorboard,
        on_epoch=echo_epoch,
        say=click.echo,
    )
    click.echo(f"done: {out}")


@click.command("layers")
@model_source
@click.option("--width", type=int, default=None, help="Describe a fresh AllConvNet of this width instead.")
def layers_command(width, **source) -> None:
    """List every module: dotted name, layer number, output shape, parameters."""
    given = source["run_dir"] is not None or source["model_spec"] is not None
    if given == (width is not None):
        raise click.UsageError("give a RUN_DIR, --model SPEC or --width W")
    if given:
        subject = open_source(source)
        model = subject.model
        shape = subject.image_shape or (subject.card.input_shape if subject.card is not None else None)
        if subject.run is not None:
            require(subject.run.config, subject.run.path, "data")
            shape = tuple(subject.run.config["data"]["image_shape"])
        if shape is None:
            raise ValueError(
                f"the input size of {subject.source} is unknown, so no output shapes can be listed; "
                "give --input-size (e.g. 3x32x32) or input_shape in MODEL.card.json"
            )
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
