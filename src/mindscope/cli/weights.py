"""`mindscope weights` (figures and the change table) and `mindscope export-tensorboard`."""

from __future__ import annotations

from pathlib import Path

import click

from mindscope._util import check_fits, positive_int
from mindscope.cli.source import default_out, model_source, open_source

MAX_BINS = 100_000

LAYERS_HELP = "Layer numbers or dotted names, e.g. '1,2,3' or 'features.0' (default: all)."


def _tensor_names(run, layers: str | None) -> list[str]:
    """Parameter names of the chosen layers, resolved on the run's model."""
    from mindscope.weights import select_tensors

    return list(select_tensors(run.model, layers))


@click.command("weights")
@model_source
@click.option("--layers", default=None, help=LAYERS_HELP)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Folder for the PNGs (default: RUN_DIR/weights)."
)
@click.option("--bins", type=int, default=64, show_default=True, help="Bins per before/after histogram.")
def weights(layers: str | None, out: Path | None, bins: int, **source) -> None:
    """Draw weight histograms before vs after training, their evolution, and print what changed."""
    from mindscope.render.tables import format_change_table
    from mindscope.render.weights import weight_histogram_figures, weight_percentile_figure, weight_ridge_figure
    from mindscope.weights import (
        histogram_rows,
        paired_histograms,
        weight_changes,
        weight_histograms,
    )

    positive_int(bins, "--bins", maximum=MAX_BINS, hint="a figure shows no more bins than it has pixels across")
    subject = open_source(source)
    names = _tensor_names(subject, layers)
    out = default_out(subject, "weights") if out is None else out
    run = subject.run
    if run is None:
        _weights_as_loaded(subject, names, out, bins)
        return
    # counts and edges (int64/float64) per tensor, for two states and the evolution figures
    check_fits(bins * len(names) * 8 * 2 * (2 + len(run.epochs)), f"--bins {bins:,}", "use fewer --bins")
    drawn = [n for n in names if n.endswith(("weight", "kernel"))] or names
    first, last = run.epochs[0], run.epochs[-1]
    before_sd, after_sd = run.state_dict_at(first), run.state_dict_at(last)
    before, after = paired_histograms({n: before_sd[n] for n in names}, {n: after_sd[n] for n in names}, bins=bins)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    labels = (f"epoch {first}", f"epoch {last}")
    for i, fig in enumerate(weight_histogram_figures(before, after, tensors=drawn, labels=labels), start=1):
        written.append(out / f"weights_before_after_{i}.png")
        fig.savefig(written[-1], dpi=110)

    rows = [r for r in run.histograms() if r["tensor"] in drawn]
    time = "step"
    if not rows:  # nothing recorded during training: fall back on the epoch snapshots
        time = "epoch"
        for epoch in run.epochs:
            state = run.state_dict_at(epoch)
            rows += histogram_rows(weight_histograms({n: state[n] for n in drawn}, bins=bins), step=epoch, epoch=epoch)
    elif min(r["step"] for r in rows) > 0 and first == 0:  # start the story before training
        rows = histogram_rows(weight_histograms({n: before_sd[n] for n in drawn}, bins=bins), step=0, epoch=0) + rows
    for name, plot in (("ridge", weight_ridge_figure), ("percentiles", weight_percentile_figure)):
        written.append(out / f"weights_{name}.png")
        plot(rows, tensors=drawn, time=time).savefig(written[-1], dpi=110)

    changes = weight_changes({n: before_sd[n] for n in names}, {n: after_sd[n] for n in names})
    click.echo(format_change_table(changes, before=labels[0], after=labels[1]))
    for path in written:
        click.echo(f"wrote {path}")


def _weights_as_loaded(subject, names: list[str], out: Path, bins: int) -> None:
    """An outside model has one set of weights: draw them as they are, say why there is no before/after."""
    from mindscope.render.weights import weight_histogram_figures
    from mindscope.weights import select_tensors, weight_histograms

    check_fits(bins * len(names) * 8 * 2, f"--bins {bins:,}", "use fewer --bins")
    tensors = select_tensors(subject.model, None)
    histograms = weight_histograms({n: tensors[n] for n in names}, bins=bins)
    drawn = [n for n in names if n.endswith(("weight", "kernel"))] or names
    out.mkdir(parents=True, exist_ok=True)
    click.echo(f"{subject.source} has no training history: the weights as loaded, with no before/after or change table")
    for i, fig in enumerate(weight_histogram_figures(histograms, None, tensors=drawn, labels=("as loaded",)), 1):
        path = out / f"weights_{i}.png"
        fig.savefig(path, dpi=110)
        click.echo(f"wrote {path}")


@click.command("export-tensorboard")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def export_tensorboard(run_dir: Path, out: Path) -> None:
    """Write a run's metrics and weight histograms as TensorBoard event files in OUT."""
    from mindscope.run import load_run

    run = load_run(run_dir)
    try:
        from mindscope.tensorboard import export_tensorboard as export

        export(run, out)
    except ImportError as exc:
        if "tensorboard" not in str(exc):
            raise
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote TensorBoard logs to {out}; view them with 'tensorboard --logdir {out}'")


commands = [weights, export_tensorboard]
