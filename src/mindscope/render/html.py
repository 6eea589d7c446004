"""Turn figures and frames into bytes and data URIs for a self-contained page."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from matplotlib.figure import Figure
from PIL import Image


def figure_png(fig: Figure, *, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def gif_bytes(frames: Sequence[Image.Image], *, duration_ms: int | Sequence[int] = 900) -> bytes:
    """An animated GIF (looping forever) of PIL frames, as bytes."""
    if not frames:
        raise ValueError("a GIF needs at least one frame; pass a non-empty list of images")
    buffer = io.BytesIO()
    first, *rest = [f.convert("RGB") for f in frames]
    first.save(buffer, format="GIF", save_all=True, append_images=rest, duration=duration_ms, loop=0)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
