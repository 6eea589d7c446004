"""`mindscope demo` (train, then report) and `mindscope report RUN_DIR` (or a scan folder)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import click

from mindscope._util import count, positive_int
from mindscope.cli.source import model_source, open_source
from mindscope.cli.train import DATA_HELP, echo_epoch
from mindscope.report import ReportOptions, write_report
from mindscope.run import Run, is_run, resume_run, train_run
from mindscope.scan import open_scan
from mindscope.scan.plan import is_scan
from mindscope.training import TrainConfig, resolve_device

# Demo defaults: chosen so that the whole demo (data, training, every analysis) takes
# under 3 minutes on 2 CPU cores while the network passes 90% test accuracy on shapes10.
DEMO_WIDTH = 32
DEMO_EPOCHS = 4
DEMO_TRAIN_IMAGES = 5000
DEMO_TEST_IMAGES = 1000
DEMO_BATCH = 32
MAX_IMAGES = 48
MAX_EVALUATION_IMAGES = 256


def check_writable_file(out: Path) -> None:
    """Refuse an --out that cannot become a file, before any work: a folder, or under a file."""
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"--out {out} lies under {parent}, which is a file; choose another --out")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"--out {out}: cannot write in {parent}; choose another --out")


def _say(message: str) -> None:
    click.echo(f"  {message}")


def _options(image: int, images: int, evaluation_images: int, tolerance: float, device: str) -> ReportOptions:
    positive_int(images, "--images", maximum=MAX_IMAGES, hint="the attribution figure draws one row per image")
    if evaluation_images > MAX_EVALUATION_IMAGES:
        raise ValueError(
            f"--evaluation-images must be at most {MAX_EVALUATION_IMAGES}, got {evaluation_images}; "
            "the trust checks re-attribute every image once per layer"
        )
    if evaluation_images < 0:
        raise ValueError(f"--evaluation-images must be >= 0 (0 skips the checks), got {evaluation_images}")
    if not 0 < tolerance < 1:
        raise ValueError(f"--tolerance must lie in (0, 1), got {tolerance}")
    resolve_device(device)
    return ReportOptions(
        image=image, attribution_images=images, evaluation_images=evaluation_images, tolerance=tolerance, device=device
    )


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("mindscope-demo"),
    show_default=True,
    help="Folder for the run (OUT/run) and the report (OUT/report.html).",
)
@click.option("--data", "data_spec", default="builtin", show_default=True, help=DATA_HELP)
@click.option("--epochs", type=int, default=DEMO_EPOCHS, show_default=True)
@click.option("--width", type=int, default=DEMO_WIDTH, show_default=True)
@click.option("--train-limit", type=int, default=DEMO_TRAIN_IMAGES, show_default=True)
@click.option("--test-limit", type=int, default=DEMO_TEST_IMAGES, show_default=True)
@click.option("--images", type=int, default=6, show_default=True, help="Test images for integrated gradients.")
@click.option(
    "--evaluation-images",
    type=int,
    default=6,
    show_default=True,
    help="Test images for the trust checks (0 skips them).",
)
@click.option("--retrain", is_flag=True, help="Train again even if OUT/run holds a finished run.")
@click.option("--device", default="cpu", show_default=True)
def demo_command(
    out, data_spec, epochs, width, train_limit, test_limit, images, evaluation_images, retrain, device
) -> None:
    """Train the reference network and write the whole walk-through as one HTML page."""
    began = time.perf_counter()
    options = _options(0, images, evaluation_images, 0.01, device)
    run_dir = out / "run"
    config = TrainConfig(epochs=epochs, batch_size=DEMO_BATCH, device=device)
    if run_dir.exists() and not is_run(run_dir):
        raise ValueError(f"{run_dir} exists and is not a mindscope run; move it away or choose another --out")

    def train(where: Path) -> None:
        train_run(where, config, data=data_spec, width=width, train_limit=train_limit, test_limit=test_limit,
                  on_epoch=echo_epoch, say=click.echo)  # fmt: skip

    if retrain and is_run(run_dir):
        # Train beside the old run and swap only once the new one is complete.
        staging, old = out / "run.retrain", out / "run.old"
        for leftover in (staging, old):
            if leftover.exists():
                shutil.rmtree(leftover)
        train(staging)
        os.replace(run_dir, old)
        os.replace(staging, run_dir)
        shutil.rmtree(old)
    elif is_run(run_dir):
        run = Run.open(run_dir)
        last = run.last_checkpoint()
        run.close()
        done = last[0] if last else 0
        if done >= epochs:
            click.echo(f"reusing the trained run in {run_dir} ({count(done, 'epoch')}; --retrain trains again)")
        else:
            resume_run(run_dir, epochs=epochs, device=device, on_epoch=echo_epoch, say=click.echo)
    else:
        train(run_dir)
    click.echo("analysing:")
    report = write_report(run_dir, out / "report.html", options=options, progress=_say)
    click.echo(
        f"report: {report.resolve()} (self-contained; open it in a browser) [{time.perf_counter() - began:.0f} s]"
    )


@click.command("report")
@model_source
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="HTML file to write (default RUN_DIR/report.html or SCAN_DIR/report.html, or mindscope-report.html "
    "for --model).",
)
@click.option("--image", type=int, default=0, show_default=True, help="Test image for the activations.")
@click.option("--images", type=int, default=6, show_default=True, help="Test images for integrated gradients.")
@click.option(
    "--evaluation-images",
    type=int,
    default=6,
    show_default=True,
    help="Test images for the trust checks (0 skips them).",
)
@click.option(
    "--tolerance",
    type=float,
    default=0.01,
    show_default=True,
    help="Relative completeness error for integrated gradients.",
)
@click.option("--device", default="cpu", show_default=True)
def report_command(out, image, images, evaluation_images, tolerance, device, **source) -> None:
    """Write one self-contained HTML page that walks through a run, a scan folder or a model trained elsewhere."""
    options = _options(image, images, evaluation_images, tolerance, device)
    if out is not None:
        check_writable_file(out)  # before minutes of work, not after
    if source["run_dir"] is not None and is_scan(source["run_dir"]):
        given = [key for key, value in source.items() if key != "run_dir" and value is not None]
        if given:
            raise ValueError(
                f"{source['run_dir']} is a scan folder, which records its own model and data; "
                f"drop --{given[0].removesuffix('_spec').replace('_', '-')}"
            )
        if (problem := open_scan(source["run_dir"]).unfinished()) is not None:
            raise ValueError(problem)  # before saying anything on stdout
        click.echo("drawing the scan:")
        path = write_report(source["run_dir"], out, options=options, progress=_say)
        click.echo(f"report: {path.resolve()} (self-contained; open it in a browser)")
        return
    subject = open_source(source)
    click.echo("analysing:")
    path = write_report(subject, out, options=options, progress=_say)
    click.echo(f"report: {path.resolve()} (self-contained; open it in a browser)")


commands = [demo_command, report_command]
