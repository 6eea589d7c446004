"""`mindscope visualise`: synthesise the image each channel of a layer responds to most.

Feature visualisation of a run's model (see `mindscope.visualisation`), at the size and
normalisation of the run's images. Writes a grid of all channels asked for, titled with
the mean activation each image reaches, and one PNG per channel (enlarged without
smoothing, so every pixel stays a pixel).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from PIL import Image

from mindscope._util import positive_int
from mindscope.cli.source import default_out, model_source, open_source
from mindscope.layers import resolve_layer
from mindscope.render.visualisation import feature_visualisation_figure
from mindscope.training import resolve_device
from mindscope.visualisation import feature_visualisation

MAX_CHANNELS = 256
PNG_SIDE = 128  # pixels at least: a 32x32 image is written 4x larger


def parse_channels(spec: str) -> list[int]:
    """Turn "0-26" or "0,3,7-9" into channel numbers, in order, once each."""
    channels: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"--channels {spec!r} is not a list of channels; write e.g. 0-26 or 0,3,7-9")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"--channels range {part} runs backwards; write it as {last}-{first}")
        channels.extend(range(first, last + 1))
    channels = list(dict.fromkeys(channels))
    if len(channels) > MAX_CHANNELS:
        raise ValueError(f"--channels names {len(channels)} channels, over {MAX_CHANNELS}; visualise fewer at once")
    return channels


def write_png(image: np.ndarray, path: Path) -> None:
    """Write one (C, H, W) image in [0, 1] as an RGB or grey PNG, enlarged by a whole factor."""
    factor = max(1, -(-PNG_SIDE // max(image.shape[1:])))
    pixels = np.clip(image, 0.0, 1.0).repeat(factor, axis=1).repeat(factor, axis=2)
    array = (np.moveaxis(pixels, 0, -1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


@click.command("visualise")
@model_source
@click.option("--layer", required=True, help="L3 (the activation after conv 3) or a module name such as features.5")
@click.option("--channels", "channel_spec", default="0-8", show_default=True, help="e.g. 0-26 or 0,3,7-9")
@click.option("--steps", type=int, default=256, show_default=True, help="optimisation steps")
@click.option("--lr", type=float, default=0.05, show_default=True, help="Adam learning rate on the spectrum")
@click.option("--seed", type=int, default=0, show_default=True, help="the same seed gives the same images")
@click.option("--epoch", type=int, default=None, help="snapshot to load (default: the last)")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="output folder (default RUN_DIR/visualisations)"
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda")
def visualise(
    layer: str,
    channel_spec: str,
    steps: int,
    lr: float,
    seed: int,
    epoch: int | None,
    out: Path | None,
    device: str,
    **source,
) -> None:
    """Synthesise, per channel of a layer, the image that drives its mean activation highest."""
    channels = parse_channels(channel_spec)
    positive_int(steps, "--steps", maximum=10000, hint="a few hundred are enough")
    subject = open_source(source, epoch=epoch)
    model = subject.model.to(resolve_device(device))
    shape = subject.image_shape  # (C, H, W) as the model is fed
    if shape is None:
        raise ValueError("feature visualisation draws images: give the model's --input-size (e.g. 3x32x32)")
    name = resolve_layer(model, layer, output=True)
    click.echo(f"layer {layer} -> {name}" if name != layer else f"layer {name}")
    result = feature_visualisation(
        model,
        name,
        channels,
        steps=steps,
        size=shape[1:],
        image_channels=shape[0],
        seed=seed,
        lr=lr,
        normalise=subject.normalization.apply,
    )
    out = default_out(subject, "visualisations") if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = name.replace(".", "_")
    images = result.images.cpu().numpy()
    for k, channel in enumerate(result.channels):
        write_png(images[k], out / f"{stem}_channel_{channel}.png")
        click.echo(f"channel {channel}: mean activation reached {float(result.activations[k]):.4g}")
    grid = out / f"{stem}_grid.png"
    feature_visualisation_figure(result).savefig(grid, dpi=120)
    click.echo(f"wrote {grid} and {len(channels)} channel PNG(s) to {out}")


commands = [visualise]
