"""Images uploaded to the dashboard: limited in size, decoded with Pillow's decompression-bomb guard.

An upload is kept (raw bytes, at most MAX_UPLOAD_BYTES, the last MAX_KEPT of them) under an
id made from its content, and decoded for each model at that model's input size and
channels, as `mindscope activations --image FILE` reads a file.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

MAX_UPLOAD_BYTES = 8 << 20  # 8 MiB: a photo; it is shrunk to the model's input anyway
MAX_UPLOAD_PIXELS = 4096 * 4096  # far below Pillow's bomb limit (2 x 89.5 M pixels), checked from the header
MAX_KEPT = 64
FORMATS = ("PNG", "JPEG")


class TooLarge(ValueError):
    """An upload over the byte limit: a 413."""


def decode(data: bytes, shape: tuple[int, int, int], *, max_pixels: int = MAX_UPLOAD_PIXELS) -> np.ndarray:
    """PNG or JPEG bytes -> uint8 (C, H, W) at `shape`, refusing bombs before any pixel is decoded.

    Image.open reads only the header; Pillow itself refuses one that declares more than twice
    Image.MAX_IMAGE_PIXELS (DecompressionBombError), and this function anything above `max_pixels`.
    """
    channels, height, width = shape
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ValueError(
                    f"the uploaded image is {w}x{h} pixels, more than the {max_pixels:,} allowed; "
                    "shrink it (it is resized to the model's input size anyway)"
                )
            img = img.convert("RGB" if channels == 3 else "L")
            if img.size != (width, height):
                img = img.resize((width, height), Image.BILINEAR)
            array = np.array(img, dtype=np.uint8)  # a writable copy: torch shares it
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"the uploaded image was refused as a possible decompression bomb ({exc}); upload a smaller PNG or JPEG"
        ) from None
    except UnidentifiedImageError:
        raise ValueError("the upload is not a PNG or JPEG image Pillow can read; upload a PNG or JPEG file") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"the uploaded image is truncated or corrupt ({exc}); upload the file again") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


class Uploads:
    """Uploaded images by id, the most recent MAX_KEPT."""

    def __init__(self, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS) -> None:
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self._guard = threading.Lock()

    def add(self, data: bytes, shape: tuple[int, int, int]) -> str:
        """Check that `data` decodes at `shape`; keep it; return its id ("u" and 16 hex digits)."""
        if len(data) > self.max_bytes:
            raise TooLarge(f"the upload is {len(data):,} bytes, more than the {self.max_bytes:,} allowed")
        if not data:
            raise ValueError("the upload is empty; choose a PNG or JPEG file")
        decode(data, shape, max_pixels=self.max_pixels)
        key = "u" + hashlib.sha256(data).hexdigest()[:16]
        with self._guard:
            self._kept[key] = data
            self._kept.move_to_end(key)
            while len(self._kept) > MAX_KEPT:
                self._kept.popitem(last=False)
        return key

    def pixels(self, key: str, shape: tuple[int, int, int]) -> Tensor:
        """(1, C, H, W) float pixels in [0, 1] of an upload, at `shape`."""
        with self._guard:
            data = self._kept.get(key)
        if data is None:
            raise ValueError(f"no uploaded image {key!r} (uploads are kept while the server runs); upload it again")
        return torch.from_numpy(decode(data, shape, max_pixels=self.max_pixels))[None].float() / 255
