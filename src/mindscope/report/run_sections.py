"""The report's first sections: the experiment, the weights, the activations."""

from __future__ import annotations

import torch

from mindscope._util import count
from mindscope.activations import activation_statistics, capture_activations
from mindscope.layers import numbered_layers, resolve_layers
from mindscope.render.activations import channel_count, channel_grid, layer_gif_frames, layer_statistics_figure
from mindscope.render.html import gif_bytes
from mindscope.render.tables import format_change
from mindscope.render.training import training_curves
from mindscope.render.weights import weight_histogram_figures, weight_percentile_figure, weight_ridge_figure
from mindscope.report.options import ReportOptions
from mindscope.report.page import Section, Table, pct
from mindscope.run import LoadedRun
from mindscope.weights import paired_histograms, weight_changes

GRID_CHANNELS = 27  # channels drawn per layer: three rows of nine


def experiment_section(run: LoadedRun) -> Section:
    cfg = run.config
    epoch_rows = [m for m in run.metrics if m["scope"] == "epoch"]
    final = {(m["split"], m["name"]): m["value"] for m in epoch_rows if m["epoch"] == max(run.epochs)}
    model, data = cfg["model"], cfg["data"]
    sec = Section(
        "experiment",
        "1. The experiment",
        f"AllConvNet (width {model['width']}, nine convolutions, ELU after the first eight, mean pooling "
        f"after layers 3 and 6, global average pooling) trained for {count(max(run.epochs), 'epoch')} on "
        f"{data['name']} ({data['train_size']} training and {data['test_size']} test images).",
    )
    acc = final.get(("test", "accuracy"))
    caption = (
        f"Accuracy and cost for training and test over {count(max(run.epochs), 'epoch')}; final test accuracy "
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
    first_state, last_state = run.state_dict_at(0), run.state_dict_at(last)
    before, after = paired_histograms(first_state, last_state)
    weights = [n for n in before if n.endswith("weight")]
    changes = weight_changes(first_state, last_state)  # from the tensors: how far each moved, too
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
                *format_change(c),
            ]
        )
    sec.tables.append(
        Table(
            f"What changed between epoch 0 and epoch {last}: 'norm change' is (‖W_{last}‖ − ‖W_0‖) / ‖W_0‖, "
            f"'moved' is ‖W_{last} − W_0‖ / ‖W_0‖, how far the weights went; both are absolute where "
            "W_0 = 0 (biases start at zero).",
            ["tensor", "mean", "std", "range", "norm change", "moved"],
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
    if getattr(run, "channels_last", False):  # a Subject of a Keras model: its maps are (N, H, W, C)
        acts = run.channels_first(acts)
    pixels = data.test.pixels([options.image])[0]
    label = run.classes[int(data.test.labels[options.image])]
    sec = Section("activations", "3. Activations")
    number_of = {v: k for k, v in numbered_layers(model).items()}
    labels, drawn = {}, []
    for spec, name in zip(options.layers, names):
        labels[name] = f"layer {spec} ({name})"
        total, shape = acts[name].shape[1], "x".join(map(str, acts[name].shape[2:]))
        shown = min(GRID_CHANNELS, total)
        drawn.append(f"layer {spec}: {channel_count(shown, total)}")
        sec.add(
            channel_grid(acts[name][0], image=pixels, channels=GRID_CHANNELS, title=labels[name]),
            f"Layer {spec} ({name}): {channel_count(shown, total)} of {shape} (channels 0–{shown - 1}), "
            "each on its own colour scale; a channel whose range is numerically zero is labelled flat.",
        )
    sec.lead = (
        f"Test image {options.image} (labelled {label}) after layers {', '.join(map(str, options.layers))}: "
        f"{'; '.join(drawn)}, each channel scaled to its own range."
    )
    frames = layer_gif_frames(pixels, {n: acts[n][0] for n in names}, labels=labels, channels=GRID_CHANNELS)
    sec.add(gif_bytes(frames, duration_ms=1200), "Animated: input → " + " → ".join(labels.values()) + ".", gif=True)
    numbers = sorted(number_of.values())
    all_layers = resolve_layers(model, numbers, output=True)
    n_stats = min(options.statistics_images, len(data.test))
    stats = activation_statistics(model, data.inputs(data.test, torch.arange(n_stats)), all_layers)
    dead = sum(int(s.dead.sum()) for s in stats.values())
    short = {name: f"L{n}" for n, name in zip(numbers, all_layers)}
    rules = sorted({s.saturation for s in stats.values() if s.saturation is not None})
    without = [short[name] for name, s in stats.items() if s.saturation is None]
    saturation = f"saturated ({' / '.join(rules)}, the floor of the layer's activation)" if rules else "saturated"
    if without:
        saturation += f", which does not apply to {', '.join(without)} (no saturating activation: n/a)"
    sec.add(
        layer_statistics_figure(stats, labels={name: f"{short[name]}\n{name}" for name in stats}),
        f"Per layer over {n_stats} test images: fraction of positions active (> 0), {saturation}, and "
        f"channels dead (never active); {dead} dead channels in all.",
    )
    return sec
