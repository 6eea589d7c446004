"""What kind of batch x is, and where it keeps its channels: images, tabular rows, sequences.

Every look takes a batch (N, ...) of examples. The attributions need nothing more: a map
is shaped like x. Whatever needs one value per *unit* (the pixels that deletion removes and
localisation scores, the features of a table, the positions of a sequence) sums the map
over the channel axis, and so must know where that is. A layout says it, in the names a
model card uses:

* "NCHW": images, channels first (PyTorch's convention); units are the H x W pixels;
* "NHWC": images, channels last (Keras's convention); units are the H x W pixels;
* "NF": tabular rows of F features; each feature is a unit, nothing is summed;
* "NLD": sequences of L positions with D values each (embeddings); units are positions.

The rule without a layout: 2 dims are NF, 3 are NLD, 4 are NCHW, except a 4-dim batch
whose *last* dim looks like colour channels (1, 3 or 4, and smaller than both dims before
it), e.g. (N, 32, 32, 3). That one is refused: it is most likely channels-last images, yet
reads as 32 channels of 32 x 3 just as well, and the wrong guess gives meaningless pixel
maps without any error. Pass layout="NHWC" (or "NCHW") for it. A single-channel image
batch (N, H, W) is read as a sequence; give it a channel axis, x.unsqueeze(1), to make it
images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
from torch import Tensor

__all__ = [
    "LAYOUTS",
    "batch_layout",
    "channel_axis",
    "channels_second",
    "check_batch",
    "check_layout",
    "spread_units",
    "to_channels_first",
    "unit_map",
    "unit_name",
    "unit_shape",
]

# layout -> (its channel axis, summed for one value per unit; the unit's name); read-only
LAYOUTS: Mapping[str, tuple[int | None, str]] = MappingProxyType(
    {"NCHW": (1, "pixels"), "NHWC": (3, "pixels"), "NF": (None, "features"), "NLD": (2, "positions")}
)
_COLOUR_CHANNELS = (1, 3, 4)


def check_batch(x: object, *, name: str = "x", floating: bool = True) -> Tensor:
    """Return x if it is a non-empty batch (N, ...) of examples; refuse it with one line otherwise.

    `floating` asks for a floating-point tensor (gradients need one); token ids pass without it.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor batch (N, ...), got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}; convert it with .float()")
    shape = tuple(x.shape)
    if x.dim() == 0:
        raise ValueError(f"{name} is a single number (shape ()); give a batch (N, ...) of examples")
    if x.dim() == 1:
        raise ValueError(
            f"{name} has shape {shape}, a single example; add the batch dimension with {name}.unsqueeze(0)"
        )
    if shape[0] == 0:
        raise ValueError(f"{name} has shape {shape}, no examples; give at least one")
    return x


def _looks_like_channels(size: int, others: Sequence[int]) -> bool:
    return size in _COLOUR_CHANNELS and all(size < other for other in others)


def check_layout(layout: object) -> str:
    """Return `layout` if it is one of LAYOUTS; refuse it with one line otherwise."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def batch_layout(shape: Sequence[int], layout: str | None = None, *, name: str = "x") -> str:
    """Return the layout of a batch of `shape`: `layout` checked against it, or the rule above."""
    shape = tuple(int(s) for s in shape)
    if layout is not None:
        if len(check_layout(layout)) != len(shape):
            raise ValueError(
                f"layout {layout!r} is for {len(layout)}-dim batches, but {name} has shape {shape}; "
                f"pass the layout of {name} itself"
            )
        return layout
    if len(shape) == 2:
        return "NF"
    if len(shape) == 3:
        return "NLD"
    if len(shape) == 4:
        if _looks_like_channels(shape[3], shape[1:3]):
            raise ValueError(
                f"{name} has shape {shape}: channels last (N, H, W, C) or {shape[1]} channels first? "
                f"Pass layout='NHWC' for channels-last images, or layout='NCHW' if dim 1 ({shape[1]}) "
                "really holds the channels"
            )
        return "NCHW"
    raise ValueError(
        f"{name} has shape {shape}; per-pixel, per-feature and per-position maps know batches "
        "(N, F), (N, L, D), (N, C, H, W) and (N, H, W, C)"
    )


def channel_axis(layout: str) -> int | None:
    """The axis summed for one value per unit: 1 for NCHW, 3 for NHWC, 2 for NLD, None for NF."""
    return LAYOUTS[layout][0]


def unit_name(layout: str) -> str:
    """What a unit of this layout is called: "pixels", "features" or "positions"."""
    return LAYOUTS[layout][1]


def unit_shape(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """The units of one example: (H, W) for images, (F,) for rows, (L,) for sequences."""
    axis = channel_axis(layout)
    return tuple(int(s) for i, s in enumerate(shape) if i > 0 and i != axis)


def _expected(n: int, units: tuple[int, ...], layout: str) -> tuple[str, str]:
    """(what the units are, e.g. 'N=3, H=4, W=4'; what shapes fit them) for an error message."""
    letters = {"NCHW": "HW", "NHWC": "HW", "NF": "F", "NLD": "L"}[layout]
    sizes = ", ".join(f"{letter}={size}" for letter, size in zip(letters, units))
    forms = {
        "NCHW": "one map per image, (N, C, H, W) or (N, H, W)",
        "NHWC": "one map per image, (N, H, W, C) or (N, H, W)",
        "NF": "one value per feature, (N, F)",
        "NLD": "(N, L, D) or one value per position, (N, L)",
    }[layout]
    return f"N={n}, {sizes}", forms


def unit_map(
    values: object,
    n: int,
    units: Sequence[int],
    layout: str,
    *,
    name: str = "attributions",
    against: str | None = None,
) -> Tensor:
    """Sum `values` over the channel axis to one value per unit, (N, *units); check they fit.

    `values` are shaped like the batch (their channels summed) or already like the units.
    """
    units = tuple(int(u) for u in units)
    if not isinstance(values, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(values).__name__}")
    axis = channel_axis(layout)
    summed = values.sum(dim=axis) if axis is not None and values.dim() == len(layout) else values
    if tuple(summed.shape) == (n, *units):
        return summed
    sizes, forms = _expected(n, units, layout)
    against = against or {"NF": "rows", "NLD": "sequences"}.get(layout, "images")
    raise ValueError(f"{name} of shape {tuple(values.shape)} do not fit the {against} ({sizes}); give {forms}")


def layer_channel_axis(model: object, given: int | None, fallback: int = 1) -> int:
    """Where `model`'s layers keep their channels: `given`; else what the model states; else `fallback`.

    A model whose layers work channels last (mindscope's Keras adapter) says so with a
    `layer_channel_axis = -1` attribute, so that the looks read its layers right by default.
    """
    return given if given is not None else getattr(model, "layer_channel_axis", fallback)


def channels_second(values: Tensor, axis: int, *, name: str = "x") -> Tensor:
    """Move the channel axis `axis` of a batch to dim 1, (N, C, ...); refuse a batch without one."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"channel_axis must be an int (1 for (N, C, ...), -1 for channels last), got {axis!r}")
    if values.dim() < 2:
        raise ValueError(f"{name} has shape {tuple(values.shape)}; no channel axis (N, C, ...)")
    if not -values.dim() < axis < values.dim() or axis == 0:
        raise ValueError(
            f"channel_axis {axis} is not a channel axis of {name} {tuple(values.shape)}; "
            "use 1 for (N, C, ...) or -1 for channels last"
        )
    return values.movedim(axis, 1)


def spread_units(mask: Tensor, layout: str) -> Tensor:
    """Give a per-unit tensor (N, *units) a channel axis of size 1, so that it broadcasts over x."""
    axis = channel_axis(layout)
    return mask if axis is None else mask.unsqueeze(axis)


def to_channels_first(values: Tensor | np.ndarray, layout: str) -> Tensor | np.ndarray:
    """Return an image batch in (N, C, H, W) order: NHWC moved, NCHW as it is; refuse other layouts."""
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(
            f"this figure draws images, but the input is {'tabular' if layout == 'NF' else 'a sequence'} "
            f"({layout}); draw it with render.feature_bars or render.sequence_heatmap"
        )
    if layout == "NCHW":
        return values
    # contiguous, so that what is computed from it is computed exactly as from NCHW input
    return (
        values.movedim(-1, 1).contiguous()
        if isinstance(values, Tensor)
        else np.ascontiguousarray(np.moveaxis(values, -1, 1))
    )
