"""What a model expects and what its outputs mean: the model card, read from JSON or given in Python.

A card comes from three places, in this order of precedence: what the caller gives
(`card=` in Python, flags on the command line), a JSON file `<model file>.card.json` next
to the model, and what the model file itself carries (an ONNX or Keras input shape). Every
field still missing is defaulted and its name listed in `ModelCard.assumed`, so that a
wrong guess (a model trained on 0..255 pixels fed 0..1) is visible rather than silent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["LAYOUTS", "ModelCard", "build_card", "card_fields", "read_card", "sidecar_path"]

# layout -> (rank of one example, the axis of one example that holds the channels or features)
LAYOUTS: Mapping[str, tuple[int, int]] = {"NCHW": (3, 0), "NHWC": (3, -1), "NF": (1, 0), "NLD": (2, -1)}
CARD_SUFFIX = ".card.json"


@dataclass(frozen=True)
class ModelCard:
    """What a model expects as input and what its outputs mean; checked when made."""

    source: str  # the spec it was loaded from
    input_shape: tuple[int, ...] | None  # ONE example in the model's own layout: (3, 32, 32), (32, 32, 3), (10,)
    layout: str  # "NCHW", "NHWC", "NF" (tabular), "NLD" (sequence)
    pixel_range: tuple[float, float] = (0.0, 1.0)  # the values the model was trained on before mean/std
    mean: tuple[float, ...] | None = None  # in pixel_range units, per channel
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None
    assumed: tuple[str, ...] = ()  # names of the fields that were defaulted, not given or read from the file
    overridden: tuple[str, ...] = ()  # "field: given X, the model file says Y": a card or flag against the file
    classes_from: str = field(default="the card", compare=False)  # who named the classes, for messages
    output_note: str | None = field(default=None, compare=False)  # what the loader did to the output

    def __post_init__(self) -> None:
        _check(self)

    @property
    def channels(self) -> int | None:
        """Channels (images), features (tabular) or embedding width (sequences); None if unknown."""
        if self.input_shape is None:
            return None
        return self.input_shape[LAYOUTS[self.layout][1]]


MAX_EXAMPLE_VALUES = 1 << 27  # one example's values: 512 MiB in float32, a 3 x 6688 x 6688 image

# The fields a card file, a mapping or a flag may set; `source` and `assumed` are the loader's.
CARD_KEYS = ("input_shape", "layout", "pixel_range", "mean", "std", "classes")


def _check(card: ModelCard) -> None:
    if card.layout not in LAYOUTS:
        raise ValueError(
            f"layout must be one of {', '.join(LAYOUTS)}, got {card.layout!r}; "
            "NCHW/NHWC for images, NF for tabular rows, NLD for sequences"
        )
    rank = LAYOUTS[card.layout][0]
    if card.input_shape is not None:
        shape = card.input_shape
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise ValueError(f"input_shape must hold positive integers, got {shape!r}; e.g. [3, 32, 32]")
        if len(shape) != rank:
            raise ValueError(
                f"input_shape {shape!r} has {len(shape)} dimensions but layout {card.layout} needs {rank} "
                "for one example (no batch axis); e.g. [3, 32, 32] for NCHW, [10] for NF"
            )
        values = math.prod(shape)
        if values > MAX_EXAMPLE_VALUES:  # refuse before anything allocates a batch of them
            raise ValueError(
                f"input_shape {'x'.join(map(str, shape))} is {values:,} values per example "
                f"({values * 4 / 2**30:,.0f} GiB in float32), more than mindscope feeds a model "
                f"({MAX_EXAMPLE_VALUES:,}); give the input size the model takes, e.g. 3x224x224"
            )
    low, high = card.pixel_range
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"pixel_range must be [low, high] with finite low < high, got {card.pixel_range!r}")
    if (card.mean is None) != (card.std is None):
        raise ValueError(
            f"mean and std come together, got mean={card.mean!r} and std={card.std!r}; give both or neither"
        )
    if card.mean is not None and card.std is not None:
        if len(card.mean) != len(card.std):
            raise ValueError(f"mean has {len(card.mean)} values but std has {len(card.std)}; give one per channel")
        if not all(math.isfinite(m) for m in card.mean):
            raise ValueError(f"mean must be finite, got {card.mean!r}")
        if not all(math.isfinite(s) and s > 0 for s in card.std):
            raise ValueError(f"std must be positive and finite, got {card.std!r}; a std of 0 divides by zero")
        channels = card.channels
        if channels is not None and len(card.mean) not in (1, channels):
            raise ValueError(
                f"mean and std have {len(card.mean)} values but input_shape {card.input_shape} in layout "
                f"{card.layout} has {channels} channels; give one value per channel"
            )
    if card.classes is not None and (not card.classes or len(set(card.classes)) != len(card.classes)):
        raise ValueError(f"classes must be distinct names, at least one, got {card.classes!r}")
    unknown = set(card.assumed) - {f.name for f in fields(ModelCard)}
    if unknown:
        raise ValueError(f"assumed names unknown fields {sorted(unknown)}; use the ModelCard field names")


def _numbers(value: Any, key: str, where: str) -> tuple[float, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{key} in {where} must be a number or a list of numbers, got {value!r}")
    return tuple(float(v) for v in items)


def card_fields(values: Mapping[str, Any], where: str = "the card") -> dict[str, Any]:
    """Check the keys and types of card values from JSON, a flag or a mapping; return them as tuples."""
    unknown = [key for key in values if key not in CARD_KEYS]
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} in {where}; a model card may give: {', '.join(CARD_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key == "input_shape":
            dims = value if isinstance(value, (list, tuple)) else [value]
            if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
                raise ValueError(
                    f"input_shape in {where} must be a list of integers such as [3, 32, 32], got {value!r}"
                )
            out[key] = tuple(dims)
        elif key == "layout":
            if not isinstance(value, str):
                raise ValueError(f"layout in {where} must be a string such as 'NCHW', got {value!r}")
            out[key] = value.upper()
        elif key == "pixel_range":
            pair = _numbers(value, key, where)
            if len(pair) != 2:
                raise ValueError(f"pixel_range in {where} must be [low, high], e.g. [0, 255], got {value!r}")
            out[key] = pair
        elif key in ("mean", "std"):
            out[key] = _numbers(value, key, where)
        else:  # classes
            if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
                raise ValueError(f"classes in {where} must be a list of names, got {value!r}")
            out[key] = tuple(value)
    return out


def read_card(path: str | Path) -> dict[str, Any]:
    """Read a JSON model card and return the fields it gives, checked and as tuples."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'no model card at {path}; write a JSON file such as {{"pixel_range": [0, 255]}}')
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"model card {path} is not valid JSON ({error}); fix the file or remove it") from None
    if not isinstance(values, dict):
        raise ValueError(f"model card {path} must hold a JSON object of fields, got {type(values).__name__}")
    return card_fields(values, str(path))


def sidecar_path(model_file: Path) -> Path:
    """Return where the card of `model_file` lives: `<model file>.card.json` beside it."""
    return model_file.with_name(model_file.name + CARD_SUFFIX)


def _default_layout(shape: tuple[int, ...] | None) -> str:
    if shape is None or len(shape) == 3:  # an image: channels first unless the last axis looks like colours
        channels_last = shape is not None and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4)
        return "NHWC" if channels_last else "NCHW"
    return "NF" if len(shape) == 1 else "NLD"


def build_card(
    source: str,
    *,
    given: ModelCard | Mapping[str, Any] | str | Path | None = None,
    sidecar: Path | None = None,
    carried: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Merge the given card, the sidecar file and what the model carries; default and list the rest.

    `given` wins over the sidecar, the sidecar over `carried`; a ModelCard given gives the
    fields it does not list as assumed, except those that are None. Defaults: input_shape None
    (unknown), layout from the input's rank (an image channels first unless its last axis
    has 1, 3 or 4 entries and its first does not), pixel_range (0, 1), no mean/std, no
    class names.
    """
    if isinstance(given, ModelCard):
        given_fields = {k: getattr(given, k) for k in CARD_KEYS if k not in given.assumed}
        explicit = {k: v for k, v in given_fields.items() if v is not None}  # None: not known, so not given
        where = given.classes_from
    elif isinstance(given, (str, Path)):
        explicit = read_card(given)
        where = f"the card {given}"
    elif given is None:
        explicit, where = {}, ""
    elif isinstance(given, Mapping):
        explicit = card_fields(given, "card= (or a command-line flag)")
        where = "--classes (or card= in Python)"
    else:
        raise TypeError(f"card must be a ModelCard, a mapping or a path to a JSON card, got {type(given).__name__}")
    from_file = read_card(sidecar) if sidecar is not None and sidecar.is_file() else {}
    if "classes" not in explicit:
        where = f"the card {sidecar}" if "classes" in from_file else "the model file"
    values = {**(carried or {}), **from_file, **explicit}
    overridden = tuple(
        f"{key}: given {_show(values[key])}, the model file says {_show(value)}"
        for key, value in (carried or {}).items()
        if key in values and _show(values[key]) != _show(value)
    )
    assumed = [key for key in CARD_KEYS if key not in values]
    shape = values.get("input_shape")
    defaults = {"input_shape": None, "layout": _default_layout(shape), "pixel_range": (0.0, 1.0)}
    values = {key: values.get(key, defaults.get(key)) for key in CARD_KEYS}
    note = (carried or {}).get("output")
    return ModelCard(
        source, assumed=tuple(assumed), overridden=overridden, classes_from=where, output_note=note, **values
    )


def _show(value: Any) -> str:
    """A card value as a person writes it: 3x32x32, 0..255, (0.5, 0.5)."""
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, int) for v in value):
        return "x".join(map(str, value))
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(f"{float(v):g}" for v in value) + ")"
    return str(value)
