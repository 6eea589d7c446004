"""`mindscope activations`: channel grids and a GIF through the layers for one image.

Optionally the per-channel statistics over the test split (`--stats`) and the test
images that drive one channel hardest (`--top CHANNEL`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import torch
from PIL import Image

from mindscope.activations import activation_statistics, capture_activations, top_activating
from mindscope.cli.source import default_out, model_source, open_source
from mindscope.data import DataSplits, read_image
from mindscope.layers import explain_layer, numbered_layers
from mindscope.render.activations import (
    channel_grid,
    channel_statistics_figure,
    layer_gif_frames,
    layer_statistics_figure,
    save_gif,
    top_activating_figure,
)
from mindscope.subject import Subject
from mindscope.training import resolve_device


def parse_layers(model: torch.nn.Module, spec: str) -> dict[str, str]:
    """Resolve "3,6,features.4" to {dotted name: label}; numbers mean the output after the layer."""
    labels: dict[str, str] = {}
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        choice = explain_layer(model, token, output=True)
        if choice.layer is not None:  # a layer number: say which module's output that is
            click.echo(f"layer: {choice}")
        name = choice.name
        labels.setdefault(name, f"layer {token} ({name})" if choice.layer is not None else name)
    if not labels:
        raise ValueError(f"--layers {spec!r} names no layer; give e.g. 3,6,9 or features.4")
    return labels


def _spatial_hint(model: torch.nn.Module, inputs: torch.Tensor) -> str:
    """Which numbered layers of this model output channel maps, as advice: "choose ... (layers 1-3, 5)"."""
    numbers = numbered_layers(model)
    acts = capture_activations(model, inputs, list(numbers.values())) if numbers else {}
    spatial = [i for i, name in numbers.items() if acts[name].dim() == 4]
    if not spatial:
        return "this model has no numbered layer with (N, C, H, W) output; see 'mindscope layers' for one that has"
    runs: list[list[int]] = []
    for i in spatial:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    listed = ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
    return f"choose a convolution (layer{'s' if len(spatial) > 1 else ''} {listed}) or the activation after one"


def parse_channels(spec: str) -> int | list[int]:
    """ "27" -> the first 27 channels; "0,5,7" -> exactly those."""
    try:
        values = [int(t) for t in spec.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--channels must be a count like 27 or a list like 0,5,7, got {spec!r}") from None
    if not values:
        raise ValueError(f"--channels must be a count like 27 or a list like 0,5,7, got {spec!r}")
    return values[0] if "," not in spec else values


def load_image(spec: str, subject: Subject) -> tuple[torch.Tensor, str]:
    """Return (1, C, H, W) pixels in [0, 1] for a test-split index or an image file, and a caption."""
    if spec.strip().lstrip("-").isdigit():
        test = subject.require_data(f"--image {spec} (a test-split index)").test
        index = int(spec)
        if not 0 <= index < len(test):
            raise ValueError(
                f"image index {index} is out of range; the test split has {len(test)} "
                f"images (0..{len(test) - 1}), or give a PNG/JPEG path"
            )
        label = test.classes[int(test.labels[index])]
        return test.pixels([index]), f"test image {index} ({label})"
    path = Path(spec).expanduser()
    if not path.is_file():
        where = f"a test-image index (0..{len(subject.data.test) - 1}) or " if subject.data is not None else ""
        raise FileNotFoundError(f"no image file {spec!r}; give {where}a PNG/JPEG path")
    if subject.image_shape is None:
        raise ValueError(
            f"--image {spec}: the model's input is not an image of known size; "
            "give --input-size CxHxW (or HxWxC with --layout NHWC)"
        )
    channels, height, width = subject.image_shape
    array = read_image(path, size=(height, width), channels=channels)
    with Image.open(path) as img:
        original = img.size
    if original != (width, height):
        click.echo(f"resized {path.name} from {original[0]}x{original[1]} to {width}x{height}, the model's input size")
    return torch.tensor(array)[None].float() / 255, path.name


def test_inputs(data: DataSplits, limit: int | None, batch_size: int) -> Iterator[torch.Tensor]:
    n = len(data.test) if limit is None else min(limit, len(data.test))
    for start in range(0, n, batch_size):
        yield data.inputs(data.test, list(range(start, min(start + batch_size, n))))


def save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120)
    click.echo(f"wrote {path}")


@click.command("activations")
@model_source
@click.option(
    "--image",
    "image_spec",
    default="0",
    show_default=True,
    help="Test-split index, or a PNG/JPEG file (resized to the model's input size).",
)
@click.option(
    "--layers",
    "layer_spec",
    default="3,6,9",
    show_default=True,
    help="Layer numbers (the activation after the layer) or dotted names, comma-separated.",
)
@click.option(
    "--channels",
    "channel_spec",
    default="27",
    show_default=True,
    help="How many channels to draw (the first N), or a list like 0,5,7.",
)
@click.option(
    "--shared-scale", is_flag=True, help="One colour scale for the whole layer (default: each channel its own)."
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Output folder (default RUN_DIR/activations)."
)
@click.option("--stats", is_flag=True, help="Also compute per-channel statistics over the test split.")
@click.option(
    "--top",
    "top_channel",
    type=int,
    default=None,
    help="Also draw the test images that most activate this channel, for each layer.",
)
@click.option("-k", "top_k", type=int, default=9, show_default=True, help="Images in the --top grid.")
@click.option("--limit", type=int, default=None, help="Use only the first N test images for --stats/--top.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--epoch", type=int, default=None, help="Snapshot to load (default: the last).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda")
def activations(
    image_spec,
    layer_spec,
    channel_spec,
    shared_scale,
    out,
    stats,
    top_channel,
    top_k,
    limit,
    batch_size,
    epoch,
    device,
    **source,
) -> None:
    """Draw channel grids and a GIF of one image through the layers of a run or a model."""
    device = resolve_device(device)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    subject = open_source(source, epoch=epoch)
    model = subject.model.to(device)
    labels = parse_layers(model, layer_spec)
    channels = parse_channels(channel_spec)
    pixels, caption = load_image(image_spec, subject)
    out = Path(out) if out is not None else default_out(subject, "activations")
    out.mkdir(parents=True, exist_ok=True)

    inputs = subject.inputs(pixels.to(device))
    acts = subject.channels_first(capture_activations(model, inputs, list(labels)))
    flat = [n for n, a in acts.items() if a.dim() != 4]
    if flat:
        raise ValueError(
            f"layer {flat[0]!r} outputs shape {tuple(acts[flat[0]].shape)}, no channel maps to draw; "
            + _spatial_hint(model, inputs)
        )
    for name, label in labels.items():
        fig = channel_grid(
            acts[name][0], image=pixels[0], channels=channels, per_channel=not shared_scale, title=f"{caption}, {label}"
        )
        save(fig, out / f"grid_{name}.png")
    frames = layer_gif_frames(
        pixels[0],
        {n: a[0] for n, a in acts.items()},
        labels={"input": caption, **labels},
        channels=channels,
        per_channel=not shared_scale,
    )
    click.echo(f"wrote {save_gif(frames, out / 'layers.gif')}")

    data = subject.require_data("--stats and --top") if stats or top_channel is not None else None
    if stats:
        result = activation_statistics(model, test_inputs(data, limit, batch_size), list(labels), batch_size=batch_size)
        save(layer_statistics_figure(result, labels=labels), out / "stats_layers.png")
        for name, s in result.items():
            save(channel_statistics_figure(s, label=labels[name]), out / f"stats_{name}.png")
            summary = s.summary
            saturated = (
                f"{summary.saturated:.1%} saturated ({s.saturation})"
                if s.saturation is not None
                else "saturation n/a (no saturating activation)"
            )
            click.echo(
                f"{labels[name]}: {summary.active:.1%} active, {saturated}, "
                f"{len(s.dead_channels)}/{summary.channels} channels dead"
            )

    if top_channel is not None:
        drawn = 0
        for name, label in labels.items():
            width = acts[name].shape[1]
            if not 0 <= top_channel < width:
                click.echo(f"{label} has {width} channels; no top-{top_k} grid for channel {top_channel}")
                continue
            top = top_activating(
                model,
                test_inputs(data, limit, batch_size),
                name,
                top_channel,
                k=top_k,
                batch_size=batch_size,
            )
            fig = top_activating_figure(data.test.pixels(top.indices.tolist()), top, label=label)
            save(fig, out / f"top_{name}_channel{top_channel}.png")
            drawn += 1
        if not drawn:
            widths = ", ".join(f"{labels[n]}: {acts[n].shape[1]}" for n in labels)
            raise ValueError(
                f"--top {top_channel} is out of range for every layer ({widths} channels); channels count from 0"
            )


commands = [activations]
