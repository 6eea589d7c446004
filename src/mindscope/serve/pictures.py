"""Figures for the page: a PNG drawn once, plus the places on it that a pointer can ask about.

`mindscope.render` draws every figure; here it is rendered with Agg and read back: where
each plotted point and each channel tile landed, in the PNG's own pixels. The page lays
transparent boxes over those places (as percentages of the picture, so they stay put when
the picture is scaled), each labelled from the figure's own data: hovering shows the values
that were drawn, and clicking a channel tile asks for that channel.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

DPI = 100
POINT_BOX = 14  # px: the hover box around a plotted point


@dataclass(frozen=True)
class Spot:
    """A box on a picture, in percent of its width and height, with what it shows or asks for."""

    left: float
    top: float
    width: float
    height: float
    label: str
    channel: int | None = None  # a channel tile: clicking it asks for that channel


@dataclass(frozen=True)
class Marker:
    """A vertical line across one panel of a picture (in percent), such as the current alpha."""

    left: float
    top: float
    height: float


@dataclass(frozen=True)
class Picture:
    """A rendered figure: PNG bytes, its size in pixels, and its spots."""

    png: bytes
    width: int
    height: int
    spots: tuple[Spot, ...] = ()

    @property
    def src(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


class Rendered:
    """A figure drawn on an Agg canvas at `dpi`: its PNG, and data -> pixel positions on it."""

    def __init__(self, fig: Figure, *, dpi: int = DPI) -> None:
        fig.set_dpi(dpi)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        self.fig = fig
        self.width, self.height = canvas.get_width_height()
        rgb = np.asarray(canvas.buffer_rgba())[..., :3]
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG", compress_level=3)
        self.png = buffer.getvalue()

    def percent(self, ax: Axes, x: float, y: float) -> tuple[float, float]:
        """Data (x, y) on `ax` -> (left, top) in percent of the picture."""
        px, py = ax.transData.transform((x, y))
        return 100 * px / self.width, 100 * (1 - py / self.height)

    def picture(self, spots: tuple[Spot, ...] | list[Spot] = ()) -> Picture:
        return Picture(self.png, self.width, self.height, tuple(spots))

    def line_spots(self, *, x_name: str = "epoch") -> list[Spot]:
        """One hover box per plotted point of every labelled line, labelled with its values as drawn."""
        spots = []
        w, h = 100 * POINT_BOX / self.width, 100 * POINT_BOX / self.height
        for ax in self.fig.axes:
            y_name = ax.get_ylabel()
            for line in ax.get_lines():
                series = line.get_label()
                if series.startswith("_"):
                    continue
                for x, y in np.asarray(line.get_xydata(), dtype=np.float64):
                    if not (math.isfinite(x) and math.isfinite(y)):
                        continue
                    left, top = self.percent(ax, x, y)
                    label = f"{series}: {x_name} {x:.4g}, {y_name} {y:.4g}"
                    spots.append(Spot(left - w / 2, top - h / 2, w, h, label))
        return spots

    def tile_spots(self, ax: Axes) -> list[Spot]:
        """One box per channel tile of a `channel_grid` panel, found from its labels and its image.

        Each tile's label sits one pixel inside its top-left corner; the tile runs right and
        down until the background (NaN) begins.
        """
        data = np.ma.filled(np.ma.asarray(ax.images[-1].get_array(), dtype=np.float64), np.nan)
        spots = []
        for text in ax.texts:
            words = text.get_text().split()
            if not words or not words[0].isdigit():
                continue
            x0, y0 = (int(round(v)) - 1 for v in text.get_position())
            row, column = data[y0, x0:], data[y0:, x0]
            tile_w = int(np.argmax(np.isnan(row))) if np.isnan(row).any() else row.size
            tile_h = int(np.argmax(np.isnan(column))) if np.isnan(column).any() else column.size
            left, top = self.percent(ax, x0 - 0.5, y0 - 0.5)
            right, bottom = self.percent(ax, x0 + tile_w - 0.5, y0 + tile_h - 0.5)
            channel = int(words[0])
            label = f"channel {channel}{' (flat)' if 'flat' in words else ''}: click to see it large"
            spots.append(Spot(left, top, right - left, bottom - top, label, channel))
        return spots

    def panel_spot(self, ax: Axes, label: str) -> Spot:
        """One box over the whole panel `ax`."""
        x0, y0, x1, y1 = ax.bbox.extents  # display pixels, origin at the bottom
        return Spot(100 * x0 / self.width, 100 * (1 - y1 / self.height), 100 * (x1 - x0) / self.width,
                    100 * (y1 - y0) / self.height, label)  # fmt: skip

    def bar_spots(self, ax: Axes, *, x_name: str, noun: str = "images") -> list[Spot]:
        """One hover box per non-empty bar of a histogram on `ax`, labelled with its count and edges as drawn."""
        spots = []
        for bar in ax.patches:
            x, width, height = bar.get_x(), bar.get_width(), bar.get_height()
            if not height > 0:
                continue
            left, top = self.percent(ax, x, height)
            right, bottom = self.percent(ax, x + width, ax.get_ylim()[0])
            what = noun if height != 1 else noun.removesuffix("s")
            label = f"{height:.0f} {what} with {x_name} from {x:.6g} to {x + width:.6g}"
            spots.append(Spot(left, top, right - left, bottom - top, label))
        return spots

    def marker(self, ax: Axes, x: float) -> Marker:
        """A vertical line at data x across the panel `ax`."""
        left, _ = self.percent(ax, x, ax.get_ylim()[0])
        x0, y0, x1, y1 = ax.bbox.extents  # display pixels, origin at the bottom
        top = 100 * (1 - y1 / self.height)
        return Marker(left, top, 100 * (y1 - y0) / self.height)


def image_src(pixels: np.ndarray | object, *, scale: int = 1) -> str:
    """A data URI of one image's (C, H, W) pixels in [0, 1] (a tensor or an array), enlarged `scale` times."""
    a = np.asarray(pixels.detach().cpu().numpy() if hasattr(pixels, "detach") else pixels, dtype=np.float64)
    a = np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)
    img = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
