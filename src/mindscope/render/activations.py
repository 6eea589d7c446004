"""Draw activations: channel grids, a GIF through the layers, channel statistics, top images.

Every function returns a matplotlib `Figure` (built without pyplot, so it is safe under
the Agg backend) or PIL images; saving is the caller's business, except `save_gif`.
Showing feature maps as image grids and the inputs that drive a unit hardest follows
Zeiler & Fergus 2014 ("Visualizing and Understanding Convolutional Networks").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from mindscope.activations import LayerStatistics, TopActivations
from mindscope.render.html import gif_bytes

Array = np.ndarray | torch.Tensor
CMAP = "viridis"


def _numpy(a: Array) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _pixels_hwc(image: Array) -> np.ndarray:
    """(C, H, W) pixels, float in [0, 1] or uint8, -> (H, W, 3) float in [0, 1]."""
    a = _numpy(image)
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(
            f"image must have shape (C, H, W) with C = 1 or 3, got {a.shape}; "
            f"pass one un-normalised image, e.g. normalization.invert(x)[0]"
        )
    a = a / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    a = np.clip(np.moveaxis(a, 0, -1), 0.0, 1.0)
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def _pick_channels(num_channels: int, channels: int | Sequence[int]) -> list[int]:
    if isinstance(channels, int) and not isinstance(channels, bool):
        if channels < 1:
            raise ValueError(f"channels must be a positive count or a list of indices, got {channels}")
        return list(range(min(channels, num_channels)))
    picked = [int(c) for c in channels]
    bad = [c for c in picked if not 0 <= c < num_channels]
    if bad or not picked:
        raise ValueError(
            f"channel {bad[0] if bad else '(none)'} is out of range; this layer has channels 0 to {num_channels - 1}"
        )
    return picked


def scale_channels(
    activation: Array, channels: int | Sequence[int] = 27, *, per_channel: bool = True
) -> tuple[np.ndarray, list[int], tuple[float, float]]:
    """Pick channels of one example's (C, H, W) activation and map them to [0, 1].

    With `per_channel`, each map is stretched over its own min..max (a flat map becomes 0);
    otherwise all share the min..max of the chosen channels.

    Returns:
        tiles (n, H, W) in [0, 1], the channel indices, and the shared (low, high) range.
    """
    a = _numpy(activation).astype(np.float64)
    if a.ndim == 1:
        a = a[:, None, None]
    if a.ndim != 3:
        raise ValueError(
            f"activation must be one example's (C, H, W) map, got shape {a.shape}; "
            f"index the batch first, e.g. acts[name][0]"
        )
    picked = _pick_channels(a.shape[0], channels)
    tiles = a[picked]  # (n, H, W)
    if per_channel:
        low = tiles.min(axis=(1, 2), keepdims=True)
        span = tiles.max(axis=(1, 2), keepdims=True) - low
    else:
        low = np.full((1, 1, 1), tiles.min())
        span = np.full((1, 1, 1), tiles.max() - tiles.min())
    scaled = np.divide(tiles - low, span, out=np.zeros_like(tiles), where=span > 0)
    return scaled, picked, (float(tiles.min()), float(tiles.max()))


def channel_count(drawn: int, total: int) -> str:
    """ "27 of 32 channels" where some are left out, "8 channels" where all are drawn."""
    return f"{drawn} of {total} channels" if drawn < total else f"{total} channel{'s' if total != 1 else ''}"


def flat_channels(activation: Array, picked: Sequence[int]) -> np.ndarray:
    """Return (len(picked),) bool: the channel's range is numerically zero beside the layer's values.

    A per-channel scale would stretch such a channel, float rounding and all, to full contrast;
    the grid labels it "flat" instead. Numerically zero: at most 1e-6 of the largest |value|.
    """
    a = _numpy(activation).astype(np.float64)
    a = a[:, None, None] if a.ndim == 1 else a
    tiles = a[list(picked)].reshape(len(picked), -1)
    return np.ptp(tiles, axis=1) <= 1e-6 * np.abs(a).max()


def mosaic_tiles(tiles: np.ndarray, columns: int, cell: int, gap: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Upscale tiles by a whole factor (nearest neighbour) into cells; NaN marks the background."""
    n, h, w = tiles.shape
    factor = max(1, cell // max(h, w))
    big = tiles.repeat(factor, axis=1).repeat(factor, axis=2)  # (n, h*f, w*f)
    cell_h, cell_w = max(cell, big.shape[1]), max(cell, big.shape[2])
    rows = math.ceil(n / columns)
    out = np.full((rows * (cell_h + gap) - gap, columns * (cell_w + gap) - gap), np.nan)
    corners = []
    for i, tile in enumerate(big):
        top, left = (i // columns) * (cell_h + gap), (i % columns) * (cell_w + gap)
        oy, ox = (cell_h - tile.shape[0]) // 2, (cell_w - tile.shape[1]) // 2
        out[top + oy : top + oy + tile.shape[0], left + ox : left + ox + tile.shape[1]] = tile
        corners.append((top + oy, left + ox))
    return out, corners


def channel_grid(
    activation: Array,
    *,
    image: Array | None = None,
    channels: int | Sequence[int] = 27,
    per_channel: bool = True,
    columns: int = 9,
    title: str | None = None,
    cmap: str = CMAP,
) -> Figure:
    """Draw the first `channels` maps (or the listed ones) of one example, with its input.

    Scaling is per channel by default: each tile spans its own min..max, so every
    channel's spatial pattern is visible (which is what the grid is for: seeing which
    channel answers to green, to edges, to the object). With one shared scale the few
    strongest channels would take the whole colour range and most tiles would look flat.
    Pass `per_channel=False` to compare magnitudes across channels; a colour bar in
    activation units is then drawn. Small maps are enlarged with nearest-neighbour so
    that an 8x8 map stays 64 crisp squares.

    Args:
        activation: (C, H, W) for one example.
        image: (C, H, W) input pixels in [0, 1] (un-normalised) or uint8, drawn at left.
    """
    tiles, picked, (low, high) = scale_channels(activation, channels, per_channel=per_channel)
    columns = max(1, min(columns, len(picked)))
    mosaic, corners = mosaic_tiles(tiles, columns, cell=64, gap=6)
    rows = math.ceil(len(picked) / columns)
    fig = Figure(figsize=(1.1 * columns + (2.6 if image is not None else 0.4), 1.1 * rows + 0.8), layout="constrained")
    grid = fig.add_gridspec(
        1, 2 if image is not None else 1, width_ratios=[1, 0.9 * columns / max(rows, 1)] if image is not None else None
    )
    if image is not None:
        ax_in = fig.add_subplot(grid[0, 0])
        ax_in.imshow(_pixels_hwc(image), interpolation="nearest")
        ax_in.set_title("input", fontsize=9)
        ax_in.set_axis_off()
    ax = fig.add_subplot(grid[0, -1])
    colours = matplotlib.colormaps[cmap].with_extremes(bad="white")
    shown = ax.imshow(
        mosaic if per_channel else low + mosaic * (high - low),
        cmap=colours,
        interpolation="nearest",
        vmin=None if per_channel else low,
        vmax=None if per_channel else high,
    )
    flat = flat_channels(activation, picked) if per_channel else np.zeros(len(tiles), bool)
    for channel, (y, x), is_flat in zip(picked, corners, flat):
        ax.text(
            x + 1,
            y + 1,
            f"{channel}{' flat' if is_flat else ''}",
            fontsize=6,
            va="top",
            ha="left",
            color="white",
            bbox=dict(boxstyle="square,pad=0.1", fc="black", ec="none", alpha=0.6),
        )
    ax.set_axis_off()
    scale = "per-channel scale" if per_channel else f"shared scale {low:.3g} .. {high:.3g}"
    drawn = channel_count(len(picked), _numpy(activation).shape[0])
    ax.set_title(f"{title + ': ' if title else ''}{drawn}, {scale}", fontsize=9)
    if not per_channel:
        fig.colorbar(shown, ax=ax, shrink=0.8, label="activation")
    return fig


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def layer_gif_frames(
    image: Array,
    activations: Mapping[str, Array],
    *,
    labels: Mapping[str, str] | None = None,
    channels: int | Sequence[int] = 27,
    per_channel: bool = True,
    columns: int = 9,
    cell: int = 64,
    cmap: str = CMAP,
) -> list[Image.Image]:
    """Return equal-sized frames: the input, then each layer's channel grid, each labelled.

    Tiles carry their channel number, and "flat" where the channel is numerically flat (see
    `flat_channels`), as in `channel_grid`.

    Args:
        image: (C, H, W) input pixels in [0, 1] or uint8.
        activations: {name: (C, H, W)} for the same example, in the order to show.
        labels: frame captions by name (default: the name itself).
    """
    labels = dict(labels or {})
    colours = matplotlib.colormaps[cmap]
    bodies, captions = [], []
    pixels = _pixels_hwc(image)
    bodies.append(pixels)
    captions.append(labels.get("input", f"input ({pixels.shape[1]}x{pixels.shape[0]})"))
    for name, activation in activations.items():
        tiles, picked, _ = scale_channels(activation, channels, per_channel=per_channel)
        mosaic, corners = mosaic_tiles(tiles, max(1, min(columns, len(picked))), cell=cell, gap=4)
        rgb = colours(np.nan_to_num(mosaic))[..., :3]
        rgb[np.isnan(mosaic)] = 1.0
        flat = flat_channels(activation, picked) if per_channel else np.zeros(len(picked), bool)
        bodies.append((rgb, [f"{c}{' flat' if f else ''}" for c, f in zip(picked, flat)], corners))
        captions.append(labels.get(name, name) + f"  ({channel_count(len(picked), _numpy(activation).shape[0])})")
    height = max(b[0].shape[0] if isinstance(b, tuple) else 0 for b in bodies) or 4 * cell
    width = max(b[0].shape[1] if isinstance(b, tuple) else 0 for b in bodies) or 4 * cell
    header, font, small = 28, _font(16), _font(10)
    frames = []
    for body, caption in zip(bodies, captions):
        frame = Image.new("RGB", (width + 16, height + header + 8), "white")
        if isinstance(body, tuple):
            rgb, picked, corners = body
            tile = Image.fromarray((rgb * 255).round().astype(np.uint8))
        else:
            factor = max(1, height // body.shape[0])  # whole-number nearest upscaling
            tile = Image.fromarray((body * 255).round().astype(np.uint8)).resize(
                (body.shape[1] * factor, body.shape[0] * factor), Image.Resampling.NEAREST
            )
            picked, corners = [], []
        left, top = 8 + (width - tile.width) // 2, header + (height - tile.height) // 2
        frame.paste(tile, (left, top))
        draw = ImageDraw.Draw(frame)
        draw.text((8, 5), caption, fill="black", font=font)
        for channel, (y, x) in zip(picked, corners):  # "5", or "5 flat" for a numerically flat channel
            draw.text(
                (left + x + 2, top + y + 1), channel, fill="white", font=small, stroke_width=1, stroke_fill="black"
            )
        frames.append(frame)
    return frames


def save_gif(frames: Sequence[Image.Image], path: str | Path, *, duration_ms: int = 1000) -> Path:
    """Write frames as an animated GIF that loops forever; return the path."""
    path = Path(path)
    path.write_bytes(gif_bytes(frames, duration_ms=duration_ms))
    return path


def _saturation_label(stats: Mapping[str, LayerStatistics]) -> str:
    rules = sorted({s.saturation for s in stats.values() if s.saturation is not None})
    label = f"saturated (values {' / '.join(rules)})" if rules else "saturated (values)"
    return label + (", n/a: no saturating activation" if any(s.saturation is None for s in stats.values()) else "")


def layer_statistics_figure(stats: Mapping[str, LayerStatistics], *, labels: Mapping[str, str] | None = None) -> Figure:
    """Bar chart of the active, saturated and dead fractions of each layer.

    A layer without a saturation rule (no saturating activation) gets "n/a" instead of a bar.
    Sized to be shown at full size on the report's page, so no text falls below 8 pt.
    """
    labels = dict(labels or {})
    names = list(stats)
    summaries = [stats[n].summary for n in names]
    fig = Figure(figsize=(min(9.0, max(5.5, 0.8 * len(names) + 2)), 4.4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(names))
    fields = (
        ("active", "tab:green", "active (values > 0)"),
        ("saturated", "tab:orange", _saturation_label(stats)),
        ("dead", "tab:red", "dead (channels never > 0)"),
    )
    for i, (field, colour, label) in enumerate(fields):
        values = np.array([getattr(s, field) for s in summaries], dtype=np.float64)
        ax.bar(x + (i - 1) * 0.27, np.nan_to_num(values), width=0.27, color=colour, label=label)
        for k in np.flatnonzero(np.isnan(values)):
            ax.text(x[k] + (i - 1) * 0.27, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [labels.get(n, n) for n in names], fontsize=8, rotation=30 if len(names) > 6 else 0, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    examples = stats[names[0]].examples if names else 0
    ax.set_title(f"activation statistics over {examples} examples", fontsize=10)
    return fig


def channel_statistics_figure(stats: LayerStatistics, *, label: str | None = None) -> Figure:
    """Per channel of one layer: mean ± std above, active and saturated fractions below.

    Dead channels (never > 0) are marked with a red band.
    """
    c = np.arange(len(stats.mean))
    fig = Figure(figsize=(max(5.0, 0.08 * len(c) + 3), 4.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.errorbar(c, stats.mean, yerr=stats.std, fmt="o", ms=3, lw=0.8, color="tab:blue")
    top.axhline(0, color="grey", lw=0.5)
    top.set_ylabel("mean ± std")
    bottom.bar(c, stats.active, color="tab:green", label="active (> 0)")
    if stats.saturation is not None:
        bottom.bar(c, stats.saturated, bottom=stats.active, color="tab:orange", label=f"saturated ({stats.saturation})")
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("fraction")
    bottom.set_xlabel("channel")
    for d in stats.dead_channels:
        for ax in (top, bottom):
            ax.axvspan(d - 0.5, d + 0.5, color="tab:red", alpha=0.25, lw=0)
    bottom.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncols=2, frameon=False)
    s = stats.summary
    saturated = f"{s.saturated:.0%} saturated" if stats.saturation is not None else "no saturating activation"
    top.set_title(
        f"{label or stats.layer}: {s.channels} channels, {len(stats.dead_channels)} dead\n"
        f"{s.active:.0%} active, {saturated} ({stats.examples} examples)",
        fontsize=9,
    )
    return fig


def top_activating_figure(
    images: Array,
    top: TopActivations,
    *,
    label: str | None = None,
    columns: int = 3,
    alpha: float = 0.55,
    cmap: str = "magma",
) -> Figure:
    """Draw the top-k images with the channel's activation map laid over each one.

    All maps share one colour scale, so the tiles compare. Maps are stretched over the
    image with nearest-neighbour, so each square is one position of the layer.

    Args:
        images: (k, C, H, W) pixels in [0, 1] or uint8, in the order of `top.indices`.
    """
    pixels = [_pixels_hwc(im) for im in images]
    if len(pixels) != len(top.indices):
        raise ValueError(
            f"got {len(pixels)} images for {len(top.indices)} top examples; pass the "
            f"images at top.indices, in that order"
        )
    maps = top.maps.reshape(len(top.maps), *(top.maps.shape[1:] or (1,)))
    maps = maps if maps.ndim == 3 else maps[:, :, None]
    low, high = float(maps.min()), float(maps.max())
    columns = max(1, min(columns, len(pixels)))
    rows = math.ceil(len(pixels) / columns)
    fig = Figure(figsize=(2.0 * columns + 0.8, 2.1 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    shown = None
    for ax, px, amap, index, score in zip(axes, pixels, maps, top.indices, top.scores):
        h, w = px.shape[:2]
        ax.imshow(px, interpolation="nearest")
        shown = ax.imshow(
            amap,
            cmap=cmap,
            alpha=alpha,
            vmin=low,
            vmax=high,
            interpolation="nearest",
            extent=(-0.5, w - 0.5, h - 0.5, -0.5),
        )
        ax.set_title(f"#{index}  mean {score:.3g}", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    if shown is not None:
        fig.colorbar(shown, ax=axes.tolist(), shrink=0.7, label="activation")
    fig.suptitle(f"{label or top.layer}, channel {top.channel}: top {len(pixels)} examples", fontsize=10)
    return fig
