"""What the Activations view computes: a layer's channel grid, one channel large, its top images.

The top-k images of every channel of a layer come from one pass over the test split that
keeps each image's mean activation per channel, (N, C); ranking follows `top_activating`
(highest mean first, ties to the earlier image), so any channel's top images are then
ready without another pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from mindscope._util import model_device
from mindscope.activations import TopActivations, capture_activations
from mindscope.layers import resolve_layer
from mindscope.render.activations import channel_grid, top_activating_figure
from mindscope.render.visualisation import feature_visualisation_figure
from mindscope.serve.catalog import Entry
from mindscope.serve.pictures import Picture, Rendered
from mindscope.serve.training_views import private_model
from mindscope.visualisation import feature_visualisation

LOOKS_STEPS = 128  # optimisation steps of "what this channel looks for" (mindscope visualise defaults to 256)

Progress = Callable[[float, str], None]
GRID_COLUMNS = 8  # tiles per row up to 32 channels; wider layers get 16
LARGE_DPI = 160  # one channel "large": 1.6 times the grid's resolution


def check_layer(entry: Entry, layer: str) -> tuple[str, str, tuple[int, ...]]:
    """The (name, label, (C, H, W)) of a layer with channel maps, or a ValueError that lists them."""
    with entry.lock:
        layers = entry.map_layers()
        name = resolve_layer(entry.subject.model, layer, output=True)
    for found in layers:
        if found[0] == name:
            return found
    shown = ", ".join(label.split(" ")[0] for _, label, _ in layers[:12])
    raise ValueError(f"layer {name!r} has no channel maps (its output is not (C, H, W)); choose one of: {shown}")


def _activation(entry: Entry, epoch: int | None, pixels: Tensor, layer: str) -> Tensor:
    """One image's (C, H, W) output of `layer`."""
    with entry.lock:
        model = entry.model(epoch)
        x = entry.subject.inputs(pixels).to(model_device(model))
        return entry.subject.channels_first(capture_activations(model, x, [layer]))[layer][0].cpu()


def grid_picture(entry: Entry, epoch: int | None, pixels: Tensor, layer: str, caption: str) -> Picture:
    """Every channel of `layer` for one image, each on its own scale, each tile clickable."""
    name, label, (channels, _, _) = check_layer(entry, layer)
    act = _activation(entry, epoch, pixels, name)
    columns = GRID_COLUMNS if channels <= 32 else 16
    fig = channel_grid(act, image=pixels[0], channels=channels, columns=columns, title=f"{caption}, {label}")
    rendered = Rendered(fig)
    return rendered.picture(rendered.tile_spots(fig.axes[-1]))


def channel_picture(entry: Entry, epoch: int | None, pixels: Tensor, layer: str, channel: int) -> Picture:
    """One channel large (drawn at LARGE_DPI), in activation units with a colour bar, beside the image."""
    name, label, (channels, _, _) = check_layer(entry, layer)
    if not 0 <= channel < channels:
        raise ValueError(f"channel {channel} is out of range; {label} has channels 0 to {channels - 1}")
    act = _activation(entry, epoch, pixels, name)
    fig = channel_grid(act, image=pixels[0], channels=[channel], columns=1, per_channel=False)
    return Rendered(fig, dpi=LARGE_DPI).picture()


def layer_scores(entry: Entry, epoch: int | None, layer: str, progress: Progress, *, batch: int = 128) -> np.ndarray:
    """(N, C) float64: each test image's mean activation of each channel of `layer`."""
    data = entry.subject.require_data("the top images of a channel")
    name, _, (channels, _, _) = check_layer(entry, layer)
    model = private_model(entry, epoch)
    device = model_device(model)
    test = data.test
    n = len(test)
    scores = np.zeros((n, channels), np.float64)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        x = entry.subject.inputs(test.pixels(list(range(start, stop)))).to(device)
        act = entry.subject.channels_first(capture_activations(model, x, [name]))[name]  # (B, C, H, W)
        scores[start:stop] = act.flatten(2).double().mean(dim=2).cpu().numpy()
        progress(stop / n, f"layer {name}: {stop} of {n} test images")
    return scores


@dataclass(frozen=True)
class TopView:
    picture: Picture
    indices: tuple[int, ...]
    scores: tuple[float, ...]


def top_view(entry: Entry, epoch: int | None, layer: str, channel: int, scores: np.ndarray, *, k: int = 9) -> TopView:
    """The k test images that drive `channel` hardest, with the channel's map over each."""
    name, label, (channels, _, _) = check_layer(entry, layer)
    if not 0 <= channel < channels:
        raise ValueError(f"channel {channel} is out of range; {label} has channels 0 to {channels - 1}")
    column = scores[:, channel]
    order = np.lexsort((np.arange(len(column)), -column))[:k]  # highest first, ties to the earlier image
    test = entry.subject.data.test
    pixels = test.pixels(order.tolist())
    with entry.lock:
        model = entry.model(epoch)
        x = entry.subject.inputs(pixels).to(model_device(model))
        maps = entry.subject.channels_first(capture_activations(model, x, [name]))[name][:, channel]
        maps = maps.float().cpu().numpy()
    top = TopActivations(name, channel, order.astype(np.int64), column[order], maps)
    fig = top_activating_figure(pixels, top, label=label)
    return TopView(Rendered(fig).picture(), tuple(int(i) for i in order), tuple(float(s) for s in column[order]))


def looks_picture(entry: Entry, epoch: int | None, layer: str, channel: int) -> tuple[Picture, float]:
    """The input that drives one channel's mean activation highest, and the activation it reaches."""
    name, label, (channels, _, _) = check_layer(entry, layer)
    if not 0 <= channel < channels:
        raise ValueError(f"channel {channel} is out of range; {label} has channels 0 to {channels - 1}")
    shape = entry.subject.image_shape
    if shape is None:
        raise ValueError("feature visualisation draws images: the model's input size is not known")
    model = private_model(entry, epoch)
    result = feature_visualisation(
        model,
        name,
        [channel],
        steps=LOOKS_STEPS,
        size=shape[1:],
        image_channels=shape[0],
        seed=0,
        normalise=entry.subject.normalization.apply,
    )
    fig = feature_visualisation_figure(result, title=f"what channel {channel} of {label} looks for")
    return Rendered(fig, dpi=LARGE_DPI).picture(), float(result.activations[0])
