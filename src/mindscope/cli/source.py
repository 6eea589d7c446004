"""The model a command looks at: RUN_DIR, or --model SPEC with what the model expects.

Every command that looks at a model takes the same options through `model_source`, and
opens it with `open_source`, which prints what was assumed about an outside model's input
(a wrong pixel range or layout is silent everywhere else).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mindscope.subject import Subject, open_subject

MODEL_HELP = (
    "The model, instead of RUN_DIR: run:DIR, torch:FILE (.pt2 export or TorchScript), "
    "python:MODULE:FACTORY (with --weights), onnx:FILE or keras:FILE."
)

_OPTIONS = [
    click.argument("run_dir", required=False, type=click.Path(path_type=Path)),
    click.option("--model", "model_spec", default=None, metavar="SPEC", help=MODEL_HELP),
    click.option("--weights", type=click.Path(path_type=Path), default=None, help="Weights for python:MODULE:FACTORY."),
    click.option(
        "--card",
        type=click.Path(path_type=Path),
        default=None,
        help="A JSON model card (default: MODEL_FILE.card.json when it exists).",
    ),
    click.option(
        "--data",
        "data_spec",
        default=None,
        metavar="SPEC",
        help="Images to look with: folder:PATH (class folders), builtin, cifar10:PATH, fashion-mnist:PATH.",
    ),
    click.option("--input-size", default=None, help="One example's shape in the model's layout, e.g. 3x32x32."),
    click.option("--layout", type=click.Choice(["NCHW", "NHWC", "NF", "NLD"]), default=None),
    click.option("--pixel-range", default=None, help="Values the model was trained on, e.g. 0,255 (default 0,1)."),
    click.option("--mean", default=None, help="Per-channel mean in --pixel-range units, e.g. 125.3,123.0,113.9."),
    click.option("--std", default=None, help="Per-channel std in --pixel-range units."),
    click.option("--classes", "class_names", default=None, help="Class names, comma-separated, in output order."),
]
SOURCE_KEYS = (
    "run_dir",
    "model_spec",
    "weights",
    "card",
    "data_spec",
    "input_size",
    "layout",
    "pixel_range",
    "mean",
    "std",
    "class_names",
)


def model_source(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add RUN_DIR and the --model options to a click command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def model_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --weights, --card and the card's flags (not RUN_DIR, --model or --data) to a click command."""
    for option in reversed(_OPTIONS[2:4] + _OPTIONS[5:]):  # --weights, --card; --input-size ... --classes
        command = option(command)
    return command


def pop_source(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the source options out of a command's keyword arguments."""
    return {key: kwargs.pop(key) for key in SOURCE_KEYS}


def _numbers(text: str, flag: str, example: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        values = ()
    if not values:
        raise ValueError(f"{flag} must be numbers like {example}, got {text!r}")
    return values


def card_overrides(source: dict[str, Any]) -> dict[str, Any]:
    """The model-card fields given as flags."""
    card: dict[str, Any] = {}
    if source["input_size"]:
        shape = _numbers(source["input_size"], "--input-size", "3x32x32 (or 6 for rows of 6 features)")
        if any(not math.isfinite(v) or v != int(v) or v < 1 for v in shape):
            raise ValueError(f"--input-size must be positive whole numbers like 3x32x32, got {source['input_size']!r}")
        card["input_shape"] = tuple(int(v) for v in shape)
    if source["layout"]:
        card["layout"] = source["layout"]
    if source["pixel_range"]:
        card["pixel_range"] = _numbers(source["pixel_range"], "--pixel-range", "0,255")
    for key in ("mean", "std"):
        if source[key]:
            card[key] = _numbers(source[key], f"--{key}", "125.3,123.0,113.9 (one per channel)")
    if source["class_names"]:
        card["classes"] = tuple(c.strip() for c in source["class_names"].split(",") if c.strip())
    return card


def source_card(source: dict[str, Any]) -> Path | dict[str, Any] | None:
    """The model card the options give: --card FILE, the flags, or the file's fields with the flags over them."""
    overrides = card_overrides(source)
    is_run = source["model_spec"] is None or str(source["model_spec"]).startswith("run:")
    if is_run and overrides:
        raise ValueError(
            f"--{next(iter(overrides)).replace('_', '-')} describes an outside model's input; "
            "a run directory records its own"
        )
    card: Any = source["card"]
    if overrides and card is not None:  # flags win over the card file's fields
        from mindscope.models import read_card

        card = {**read_card(card), **overrides}
    elif overrides:
        card = overrides
    return card


def open_source(source: dict[str, Any], *, epoch: int | None = None, quiet: bool = False) -> Subject:
    """Open RUN_DIR or --model with its data; print what the model is and what was assumed."""
    subject = open_subject(
        source["run_dir"],
        model=source["model_spec"],
        weights=source["weights"],
        card=source_card(source),
        data=source["data_spec"],
        epoch=epoch,
    )
    if not quiet and not subject.is_run:
        for line in subject.describe():
            click.echo(line)
    return subject


def default_out(subject: Subject, name: str) -> Path:
    """RUN_DIR/name for a run; ./mindscope-MODEL-KIND/name (e.g. mindscope-net-onnx) for an outside model."""
    if subject.run is not None:
        return subject.run.path / name
    kind, _, spec = subject.source.partition(":")
    stem = Path(spec.split(":")[0]).stem or "model"
    return Path(f"mindscope-{stem}-{kind}") / name  # net.onnx and net.keras write apart
