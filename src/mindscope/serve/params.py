"""Read a request's parameters: each one checked, a bad one a BadRequest (400) that says what to give.

Images are named by a test-split index ("5") or an upload's id ("u" and 16 hex digits).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

UPLOAD_ID = re.compile(r"u[0-9a-f]{16}")
MAX_TEXT = 200  # characters of any one parameter; names and numbers are far shorter


class BadRequest(ValueError):
    """A parameter that is missing, malformed or out of range: a 400 with one line."""


@dataclass(frozen=True)
class ImageRef:
    """A test image (index) or an uploaded one (upload id)."""

    index: int | None = None
    upload: str | None = None

    @property
    def key(self) -> str:
        return self.upload if self.upload is not None else str(self.index)

    @property
    def label(self) -> str:
        return f"uploaded image {self.upload[:7]}" if self.upload is not None else f"test image #{self.index}"


class Query:
    """Typed, checked access to a request's query parameters."""

    def __init__(self, params: Mapping[str, str]) -> None:
        self.params = params

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.params.get(name)
        if value is None or value == "":
            return default
        if len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
            raise BadRequest(f"{name} is not a plausible value ({len(value)} characters); give a short plain name")
        return value

    def integer(self, name: str, default: int | None = None, *, low: int | None = None, high: int | None = None) -> int:
        value = self.text(name)
        if value is None:
            if default is None:
                raise BadRequest(f"{name} is missing; give an integer")
            return default
        try:
            number = int(value)
        except ValueError:
            raise BadRequest(f"{name} must be an integer, got {value!r}") from None
        if (low is not None and number < low) or (high is not None and number > high):
            span = f"{low if low is not None else '...'}..{high if high is not None else '...'}"
            raise BadRequest(f"{name} must lie in {span}, got {number}")
        return number

    def number(
        self, name: str, default: float, *, low: float, high: float, closed: bool = False, hint: str = ""
    ) -> float:
        """A float in the open interval (low, high), or in [low, high] when `closed`."""
        value = self.text(name)
        if value is None:
            return default
        span = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"
        try:
            number = float(value)
        except ValueError:
            raise BadRequest(f"{name} must be a number in {span}, got {value!r}") from None
        inside = low <= number <= high if closed else low < number < high
        if not math.isfinite(number) or not inside:
            raise BadRequest(f"{name} must lie in {span}, got {value}{'; ' + hint if hint else ''}")
        return number

    def choice(self, name: str, options: Sequence[str], default: str) -> str:
        value = self.text(name, default)
        if value not in options:
            raise BadRequest(f"unknown {name} {value!r}; choose one of: {', '.join(options)}")
        return value

    def target(self, classes: Sequence[str]) -> int | None:
        """The class to explain: None (the prediction) for "pred" or nothing, else a class index."""
        value = self.text("target", "pred")
        if value == "pred":
            return None
        try:
            number = int(value)
        except ValueError:
            raise BadRequest(f"target must be 'pred' or a class number 0..{len(classes) - 1}, got {value!r}") from None
        if not 0 <= number < len(classes):
            raise BadRequest(f"target class {number} is out of range; use 0..{len(classes) - 1} or 'pred'")
        return number

    def image(self, test_size: int | None) -> ImageRef:
        """The chosen image: a test index (default 0 where there is a test split) or an upload id."""
        value = self.text("image")
        if value is None:
            if not test_size:
                raise BadRequest("no image chosen and no test images to choose from; upload a PNG or JPEG")
            return ImageRef(index=0)
        if UPLOAD_ID.fullmatch(value):
            return ImageRef(upload=value)
        try:
            index = int(value)
        except ValueError:
            index = None
        if index is None or not test_size or not 0 <= index < test_size:
            span = f"0..{test_size - 1}" if test_size else "none here"
            raise BadRequest(
                f"image {value!r} is out of range or unknown; give a test-image index ({span}) or upload a PNG/JPEG"
            )
        return ImageRef(index=index)
