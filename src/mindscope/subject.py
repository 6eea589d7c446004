"""What a command looks at: a training run of ours, or the user's own model, with data to look with.

Every command, the report, the dashboard and a scan open their model here, so a run
directory and an outside model (`torch:`, `python:`, `onnx:`, `keras:`; see
`mindscope.models`) reach the looks in one shape:

- `model` takes normalised (N, C, H, W) images. A channels-last model (Keras) gets a
  forward pre-hook that permutes its input, so its layers keep their own names.
- `normalization` maps pixels in [0, 1] to that input. A model card's pixel range and
  mean/std (in that range's units) fold into one affine map, so a model trained on 0..255
  values is fed 0..255 values.
- `assumed` lists what no card, flag or file said, so the CLI and the report can print it:
  a wrong guess here is silent everywhere else. An image model whose input size nobody
  gave is fed the data's own size (a folder's first image), tried once on zeros of that
  shape, and the size is listed as assumed.
- An outside model's weights are checked when it opens (NaN is refused, see
  `mindscope.models.load_model`), and the data must fit it: images for an image layout,
  no more classes than the model has outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mindscope.data import DataSplits, ImageSet, Normalization, load_data, parse_spec
from mindscope.inputs import layer_channel_axis
from mindscope.run import LoadedRun, load_run

if TYPE_CHECKING:
    from mindscope.models import ModelCard

__all__ = ["Subject", "normalization_from_card", "open_subject"]


@dataclass
class Subject:
    """A model to look at, how to feed it, and (when given) the data to look at it with.

    For a run, the data, normalisation, classes and image shape are read from the run when
    first used, so a command that needs only the weights never opens the data set.
    """

    source: str  # "run:DIR" or the model spec
    model: nn.Module  # eval mode; takes normalised (N, C, H, W) input
    run: LoadedRun | None = None  # the training history, when the source is a run
    card: ModelCard | None = None
    assumed: tuple[str, ...] = ()
    open_data: Callable[[], DataSplits | None] = field(default=lambda: None, repr=False)
    given_normalization: Normalization | None = None
    given_classes: tuple[str, ...] = ()
    given_image_shape: tuple[int, int, int] | None = None

    @cached_property
    def data(self) -> DataSplits | None:
        return self.open_data()

    @property
    def normalization(self) -> Normalization:
        """Pixels in [0, 1] -> the model's input."""
        if self.given_normalization is not None:
            return self.given_normalization
        return self.require_data("the model's input normalisation").normalization

    @property
    def classes(self) -> tuple[str, ...]:
        if self.run is not None:
            return self.run.classes
        return self.given_classes or (self.data.classes if self.data is not None else ())

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) as mindscope feeds the model; None for inputs that are not images."""
        if self.given_image_shape is None and self.data is not None:
            return self.data.image_shape
        return self.given_image_shape

    @property
    def channels_last(self) -> bool:
        """True when the model's own layers work channels last (Keras): its activations are (N, H, W, C).

        The model states it (`layer_channel_axis`), so the looks read its layers right by default.
        """
        return layer_channel_axis(self.model, None) == -1

    def channels_first(self, activations: dict[str, Tensor]) -> dict[str, Tensor]:
        """Captured activations as (N, C, H, W), whatever layout the model's layers use."""
        if not self.channels_last:
            return activations
        return {name: a.movedim(-1, 1) if a.dim() == 4 else a for name, a in activations.items()}

    @property
    def is_run(self) -> bool:
        return self.run is not None

    def require_data(self, what: str) -> DataSplits:
        """The data, or a ValueError that says how to give it."""
        if self.data is None:
            raise ValueError(f"{what} needs images: give --data folder:PATH (class folders of PNG/JPEG files)")
        return self.data

    def inputs(self, pixels: Tensor) -> Tensor:
        """(N, C, H, W) pixels in [0, 1] -> the model's (normalised) input."""
        return self.normalization.apply(pixels)

    def describe(self) -> list[str]:
        """Lines that say what the model is and what mindscope assumed about its input."""
        if self.run is not None:
            return [f"model: run {self.run.path} at epoch {self.run.epoch}"]
        card = self.card
        lines = [f"model: {self.source}"]
        if card is not None:
            shape = "x".join(map(str, card.input_shape)) if card.input_shape else "unknown"
            lo, hi = card.pixel_range
            stats = f"mean {_fmt(card.mean)} std {_fmt(card.std)}" if card.mean else "no mean/std"
            lines.append(f"input: {card.layout} {shape}, pixels scaled to {lo:g}..{hi:g}, {stats}")
        if card is not None and card.output_note:
            lines.append(f"output: {card.output_note}")
        if card is not None and card.overridden:
            lines.append(f"note: a card or flag contradicts the model file: {'; '.join(card.overridden)}")
        if self.assumed:
            lines.append(f"assumed (no card said): {', '.join(self.assumed)}; if wrong, pass the flags or a .card.json")
        return lines


def _fmt(values: tuple[float, ...] | None) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values or ()) + ")"


def normalization_from_card(card: ModelCard, channels: int) -> Normalization:
    """One affine map from [0, 1] pixels to the model's input, from the card's range and mean/std.

    The model wants (lo + (hi - lo) p - mean) / std; written as (p - m) / s that is
    m = (mean - lo) / (hi - lo) and s = std / (hi - lo).
    """
    lo, hi = card.pixel_range
    mean = card.mean or (0.0,) * channels
    std = card.std or (1.0,) * channels
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    return Normalization(tuple((m - lo) / (hi - lo) for m in mean), tuple(s / (hi - lo) for s in std))


def _channels_last(model: nn.Module) -> None:
    """Make a channels-last model take (N, C, H, W): permute its input in a pre-hook."""

    def permute(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return (x.permute(0, 2, 3, 1) if x.dim() == 4 else x, *args[1:])

    model.register_forward_pre_hook(permute)


def open_subject(
    run_dir: Path | str | None = None,
    *,
    model: str | None = None,
    weights: Path | str | None = None,
    card: Mapping[str, Any] | Path | str | None = None,
    data: str | None = None,
    epoch: int | None = None,
    seed: int = 0,
) -> Subject:
    """Open a run directory or a model spec (`run:DIR`, `torch:`, `python:`, `onnx:`, `keras:`) with its data.

    A run brings its own data; `data` replaces it. An outside model sees `data` (a spec such
    as `folder:PATH`) read at its input size, all of it as its test set.
    """
    if run_dir is not None and model is not None:
        raise ValueError(f"give a run directory or --model, not both (got {run_dir} and {model!r})")
    if run_dir is None and model is None:
        raise ValueError("give a run directory, or --model SPEC (run:DIR, torch:FILE, onnx:FILE, keras:FILE, ...)")
    if model is not None and model.startswith("run:"):
        run_dir = model[len("run:") :]
    if run_dir is not None:
        if weights is not None or card is not None:
            raise ValueError("--weights and --card are for outside models; a run directory carries its own")
        loaded = load_run(run_dir, epoch=epoch)

        def run_data() -> DataSplits:
            if data is None:
                return loaded.data
            return load_data(data, seed=seed, normalization=loaded.data.normalization)

        return Subject(f"run:{run_dir}", loaded.model, run=loaded, open_data=run_data)
    if epoch is not None:
        raise ValueError("--epoch is for run directories; an outside model has one set of weights")
    return _open_outside(model, weights=weights, card=card, data=data, seed=seed)


def _open_outside(
    model: str,
    *,
    weights: Path | str | None,
    card: Mapping[str, Any] | Path | str | None,
    data: str | None,
    seed: int,
) -> Subject:
    """Open an outside model; check that the data fits it, taking its input size from the data if none was given."""
    from mindscope.models import check_forward, load_model

    outside = load_model(model, weights=weights, card=card)
    c, outputs, assumed = outside.card, outside.outputs, outside.card.assumed
    peek = _peek(data) if data is not None else None
    if peek is not None and c.layout not in ("NCHW", "NHWC"):
        shape = "x".join(map(str, c.input_shape)) if c.input_shape else "of unknown size"
        raise ValueError(
            f"the data {data} holds images, (N, C, H, W), but the model takes {c.layout} input {shape} "
            f"({_LAYOUT_WORDS[c.layout]}); images feed only an NCHW or NHWC model: if the model takes images, "
            "give --layout NCHW or NHWC and --input-size, otherwise leave out --data"
        )
    image_shape = _image_shape(c)
    if image_shape is None and peek is not None:  # no card or flag gave the size: the data's own, tried once
        image_shape, origin = peek.shape, peek.origin
        channels, height, width = image_shape
        if height * width > _MAX_GUESSED_PIXELS:
            raise ValueError(
                f"no card or --input-size gives the model's input size, and {origin} is {height}x{width} pixels: "
                "too large to be the size the model takes; give --input-size (e.g. 3x224x224): "
                "the images are resized to it"
            )
        size = image_shape if c.layout == "NCHW" else (height, width, channels)
        c = dataclasses.replace(c, input_shape=size)
        shown = "x".join(map(str, size))
        outputs = check_forward(outside.model, c, size, origin=f"{c.layout} {shown}, assumed from {origin}")
        assumed = tuple(f"input_shape {shown} (from {origin})" if a == "input_shape" else a for a in c.assumed)
    if peek is not None and peek.classes and outputs is not None and not c.classes and len(peek.classes) > outputs:
        raise ValueError(
            f"the data {data} has {len(peek.classes)} classes ({', '.join(peek.classes)}) but the model returns "
            f"{outputs} scores per example; give data with at most {outputs} classes, or name the model's classes "
            "(--classes, or classes in the card) so that the data's classes are matched by name"
        )
    channels = image_shape[0] if image_shape else (len(c.mean) if c.mean else 3)
    norm = normalization_from_card(c, channels)
    if c.layout == "NHWC":
        _channels_last(outside.model)

    def outside_data() -> DataSplits | None:
        if data is None:
            return None
        splits = load_data(data, seed=seed, normalization=norm, image_shape=image_shape, all_test=True)
        return splits if not c.classes else _in_model_classes(splits, tuple(c.classes))

    return Subject(
        model,
        outside.model.eval(),
        card=c,
        assumed=assumed,
        open_data=outside_data,
        given_normalization=norm,
        given_classes=tuple(c.classes or ()),
        given_image_shape=image_shape,
    )


_MAX_GUESSED_PIXELS = 1024 * 1024  # a larger first image is a photo to resize, not the model's input size
_LAYOUT_WORDS = {"NF": "rows of features", "NLD": "sequences of vectors"}


@dataclass(frozen=True)
class _Peek:
    """What a data set holds, read without decoding its images."""

    shape: tuple[int, int, int]  # (C, H, W) of its (first) image
    classes: tuple[str, ...]  # empty where only the files name them (CIFAR-10)
    origin: str  # where the shape was read, for messages


def _peek(spec: str) -> _Peek:
    """The image shape and class names of the data `spec`: a folder's first image header, or the set's own."""
    from mindscope.data import fashion_mnist, folder, shapes10

    kind, path = parse_spec(spec)
    if kind == "builtin":
        return _Peek((3, shapes10.SIZE, shapes10.SIZE), shapes10.CLASSES, "the builtin data")
    if kind == "cifar10":
        return _Peek((3, 32, 32), (), "CIFAR-10's images")
    if kind == "fashion-mnist":
        return _Peek((1, 28, 28), fashion_mnist.FASHION_CLASSES, "Fashion-MNIST's images")
    if path is None or not path.exists():
        raise FileNotFoundError(f"no such file or folder {str(path)!r} for {spec!r}; check the path")
    base, _, classes = folder.check_folder(path)
    files = (
        file
        for name in classes
        for file in sorted((base / name).iterdir())
        if file.suffix.lower() in folder.IMAGE_SUFFIXES and file.is_file()
    )
    first = next(files, None)
    if first is None:
        raise ValueError(f"no .png or .jpg images under {base}/CLASS_NAME/")
    return _Peek(_header_shape(first), tuple(classes), f"the first image, {first}")


def _header_shape(path: Path) -> tuple[int, int, int]:
    """(C, H, W) as mindscope reads the image: 1 channel for grey, 3 for anything else; no pixel decoded."""
    from PIL import Image, ImageMode

    try:
        with Image.open(path) as img:
            width, height = img.size
            grey = ImageMode.getmode(img.mode).basemode == "L"
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{path} is not an image Pillow can read ({error}); give PNG or JPEG files") from None
    return (1 if grey else 3), height, width


def _image_shape(card: ModelCard) -> tuple[int, int, int] | None:
    """(C, H, W) of an image model's input, whatever its own layout; None for other inputs."""
    shape = card.input_shape
    if shape is None or len(shape) != 3:
        return None
    if card.layout == "NHWC":
        height, width, channels = shape
        return channels, height, width
    return tuple(shape) if card.layout == "NCHW" else None


def _in_model_classes(splits: DataSplits, classes: tuple[str, ...]) -> DataSplits:
    """Relabel a data set so its labels index the model's outputs, matched by class name."""

    def relabel(split: str) -> ImageSet:
        images: ImageSet = getattr(splits, split)
        unknown = [name for name in images.classes if name not in classes]
        if unknown:
            raise ValueError(
                f"the data's class {unknown[0]!r} is not one of the model's classes ({', '.join(classes)}); "
                "rename the folder to the model's class name, or fix --classes / the card"
            )
        index = torch.tensor([classes.index(name) for name in images.classes], dtype=torch.int64)
        return ImageSet(images.images, index[images.labels], classes, images.masks)

    return DataSplits(splits.name, splits.spec, relabel, normalization=splits.normalization)
