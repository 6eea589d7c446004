"""A run directory -> one self-contained HTML page that walks through the network.

Sections follow the walk-through: the experiment, weights, activations, interior
gradients, integrated gradients, and how far to trust the maps. Every figure is drawn
by `mindscope.render` and embedded as a data URI, so the page opens from disk with no
network and no folder beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import torch
from matplotlib.figure import Figure as MplFigure

from mindscope.activations import activation_statistics, capture_activations
from mindscope.layers import numbered_layers, resolve_layers
from mindscope.render.activations import channel_grid, layer_gif_frames, layer_statistics_figure
from mindscope.render.html import data_uri, figure_png, gif_bytes
from mindscope.render.training import training_curves
from mindscope.render.weights import weight_histogram_figures, weight_percentile_figure, weight_ridge_figure
from mindscope.run import LoadedRun, atomic_write_bytes, load_run
from mindscope.weights import paired_histograms, weight_changes


@dataclass
class Figure:
    src: str
    caption: str
    alt: str
    pixel: bool = False


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Section:
    id: str
    title: str
    lead: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)

    def add(self, fig: MplFigure | bytes, caption: str, *, alt: str | None = None, gif: bool = False) -> None:
        if isinstance(fig, MplFigure):
            src = data_uri(figure_png(fig), "image/png")
        else:
            src = data_uri(fig, "image/gif" if gif else "image/png")
        self.figures.append(Figure(src, caption, alt or caption, pixel=gif))


@dataclass(frozen=True)
class ReportOptions:
    image: int = 0  # test image for activations
    layers: tuple[int, ...] = (3, 6, 9)  # layers for activation grids and the GIF
    attribution_images: int = 6  # test images for integrated gradients
    interior_image: int | None = None  # default: the first correctly classified test image
    tolerance: float = 0.01  # IG relative completeness error target
    statistics_images: int = 500  # test images for per-channel statistics
    evaluation_images: int = 6  # test images for the trust checks (0: skip)
    device: str = "cpu"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def experiment_section(run: LoadedRun) -> Section:
    cfg = run.config
    epoch_rows = [m for m in run.metrics if m["scope"] == "epoch"]
    final = {(m["split"], m["name"]): m["value"] for m in epoch_rows if m["epoch"] == max(run.epochs)}
    model, data = cfg["model"], cfg["data"]
    sec = Section(
        "experiment",
        "1. The experiment",
        f"AllConvNet (width {model['width']}, nine convolutions with ELU, mean pooling after "
        f"layers 3 and 6, global average pooling) trained for {max(run.epochs)} epochs on "
        f"{data['name']} ({data['train_size']} training and {data['test_size']} test images).",
    )
    acc = final.get(("test", "accuracy"))
    caption = (
        f"Accuracy and cost for training and test over {max(run.epochs)} epochs; final test accuracy "
        f"{pct(acc)}, training accuracy {pct(final.get(('train', 'accuracy'), float('nan')))}."
        if acc is not None
        else "Accuracy and cost over training."
    )
    sec.add(training_curves(run.metrics), caption)
    sec.tables.append(
        Table("Class numbers and names.", ["class", "name"], [[i, name] for i, name in enumerate(run.classes)])
    )
    return sec


def weights_section(run: LoadedRun) -> Section:
    last = max(run.epochs)
    before, after = paired_histograms(run.state_dict_at(0), run.state_dict_at(last))
    weights = [n for n in before if n.endswith("weight")]
    changes = weight_changes(before, after)
    sec = Section(
        "weights",
        "2. Weights before and after training",
        "Histograms of every layer's weights before training (epoch 0) and after the last epoch, "
        "three layers to a figure, then each layer's whole path through training.",
    )
    rows = []
    for c in changes:
        rows.append(
            [
                c.tensor,
                f"{c.mean[0]:+.4f} → {c.mean[1]:+.4f}",
                f"{c.std[0]:.4f} → {c.std[1]:.4f}",
                f"[{c.min[0]:+.3f}, {c.max[0]:+.3f}] → [{c.min[1]:+.3f}, {c.max[1]:+.3f}]",
                f"{100 * c.l2_change:+.1f}%",
            ]
        )
    sec.tables.append(
        Table(
            f"What changed between epoch 0 and epoch {last}.",
            ["tensor", "mean", "std", "range", "L2 norm change"],
            rows,
        )
    )
    figures = weight_histogram_figures({n: before[n] for n in weights}, {n: after[n] for n in weights}, per_figure=3)
    by_name = {c.tensor: c for c in changes}
    for i, fig in enumerate(figures):
        names = weights[3 * i : 3 * i + 3]
        spans = "; ".join(f"{n}: std {by_name[n].std[0]:.3f} → {by_name[n].std[1]:.3f}" for n in names)
        sec.add(fig, f"Before vs after training (density), {spans}.")
    history = run.histograms()
    if history:
        points = len({row["step"] for row in history})
        sec.add(
            weight_ridge_figure(history, tensors=weights),
            f"Each layer's weight histogram at {points} recorded points, oldest at the top.",
        )
        sec.add(
            weight_percentile_figure(history, tensors=weights),
            f"Percentile bands of each layer's weights over {points} recorded points (median line).",
        )
    return sec


def activations_section(run: LoadedRun, options: ReportOptions) -> Section:
    model, data = run.model, run.data
    if not 0 <= options.image < len(data.test):
        raise ValueError(f"image {options.image} is out of range; the test set has {len(data.test)} images")
    x = data.inputs(data.test, [options.image])
    names = resolve_layers(model, list(options.layers), output=True)
    acts = capture_activations(model, x, names)
    pixels = data.test.pixels([options.image])[0]
    label = run.classes[int(data.test.labels[options.image])]
    sec = Section(
        "activations",
        "3. Activations",
        f"Test image {options.image} (a {label}) after layers "
        f"{', '.join(map(str, options.layers))}: the first channels of each, each scaled to its own range.",
    )
    number_of = {v: k for k, v in numbered_layers(model).items()}
    labels = {}
    for spec, name in zip(options.layers, names):
        labels[name] = f"layer {spec} ({name})"
        sec.add(
            channel_grid(acts[name][0], image=pixels, title=labels[name]),
            f"Layer {spec} ({name}): {acts[name].shape[1]} channels of {acts[name].shape[2]}x{acts[name].shape[3]}.",
        )
    frames = layer_gif_frames(pixels, {n: acts[n][0] for n in names}, labels=labels)
    sec.add(gif_bytes(frames, duration_ms=1200), "Animated: input → " + " → ".join(labels.values()) + ".", gif=True)
    all_layers = resolve_layers(model, sorted(number_of.values()), output=True)
    n_stats = min(options.statistics_images, len(data.test))
    stats = activation_statistics(model, data.inputs(data.test, torch.arange(n_stats)), all_layers)
    dead = {name: int(s.dead.sum()) for name, s in stats.items()}
    total_dead = sum(dead.values())
    sec.add(
        layer_statistics_figure(stats),
        f"Per layer over {n_stats} test images: fraction of positions active (> 0), saturated "
        f"(ELU within 0.05 of -1) and channels dead (never active); {total_dead} dead channels in all.",
    )
    return sec


def build_sections(
    run: LoadedRun, options: ReportOptions, *, progress: Callable[[str], None] | None = None
) -> list[Section]:
    say = progress or (lambda _msg: None)
    say("training curves")
    sections = [experiment_section(run)]
    say("weights")
    sections.append(weights_section(run))
    say("activations")
    sections.append(activations_section(run, options))
    from mindscope import report_attribution

    say("interior and integrated gradients")
    sections.extend(report_attribution.attribution_sections(run, options))
    if options.evaluation_images:
        say("trust checks")
        sections.append(report_attribution.trust_section(run, options))
    return sections


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mindscope", "templates"), autoescape=jinja2.select_autoescape(["html"])
    )
    return env.get_template("report.html").render(title=title, subtitle=subtitle, sections=sections)


def write_report(
    run_dir: Path | str,
    out: Path | str | None = None,
    *,
    options: ReportOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Analyse a run and write its report; return the path of the (self-contained) HTML file."""
    options = options or ReportOptions()
    run = load_run(run_dir)
    if not 0 <= options.image < len(run.data.test):
        raise ValueError(f"--image {options.image} is out of range; the test set has {len(run.data.test)} images")
    run.model.to(options.device)
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    sections = build_sections(run, options, progress=progress)
    cfg = run.config
    subtitle = (
        f"run {Path(run_dir).resolve()} · data {cfg['data']['spec']} · mindscope "
        f"{cfg['versions']['mindscope']} · torch {cfg['versions']['torch']}"
    )
    html = render_page(f"Inside AllConvNet on {cfg['data']['name']}", subtitle, sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, html.encode("utf-8"))
    return out
