"""What a scan computes (`ScanOptions`) and what it opens (`ScanSource`), both plain frozen values.

Both are recorded in the scan's manifest and shipped to every worker (a thread, a Ray actor,
another machine with `--shard`), so they hold names and numbers, not functions; the names
map to the looks here, in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mindscope._util import positive_int
from mindscope.attribution import Attribution, class_logit, class_probability, gradients, integrated_gradients
from mindscope.attribution import smoothgrad as smooth_gradients
from mindscope.baselines import NAMES as BASELINES
from mindscope.quadrature import gauss_legendre

if TYPE_CHECKING:
    from mindscope.subject import Subject

METHODS = ("gradient", "integrated", "smoothgrad")
SCORES = ("probability", "logit")
TARGETS = ("predicted", "label")
MAX_SHARD_SIZE = 65536
MAX_BATCH_SIZE = 1024
MAX_TOLERANCE_STEPS = 65536  # gradients kept per image in tolerance mode


@dataclass(frozen=True)
class ScanOptions:
    """How each image is looked at. Every field is part of the scan's identity."""

    methods: tuple[str, ...] = ("integrated",)
    tolerance: float | None = 0.01  # integrated: refine to this; None: a fixed Gauss-Legendre rule of `steps`
    steps: int = 32  # integrated without a tolerance
    max_steps: int = 2048  # integrated with a tolerance: per-image cap
    baseline: str = "black"  # black, mean (dataset-mean grey), noise, blur; in pixel space
    score: str = "probability"  # F: the target's softmax probability, or its logit
    target: str = "predicted"  # the class attributed: the model's prediction or the label
    samples: int = 16  # smoothgrad's noisy copies
    seed: int = 0  # smoothgrad's noise: batch b draws with seed + its first image index
    layers: tuple[str, ...] | None = None  # layer specs for activation statistics; None: every numbered layer
    float16: bool = False  # store maps as float16 (with a float32 scale per map)
    shard_size: int = 256  # images per shard file: the unit of resuming and of work
    batch_size: int = 32  # images per call of the looks (tolerance mode keeps steps x image per image)

    def __post_init__(self) -> None:
        methods = tuple(dict.fromkeys(m.strip() for m in self.methods if m.strip()))
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"unknown method {(unknown or [''])[0]!r}; use one or more of: {', '.join(METHODS)}")
        object.__setattr__(self, "methods", methods)
        for name, value, allowed in (
            ("baseline", self.baseline, BASELINES),
            ("score", self.score, SCORES),
            ("target", self.target, TARGETS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; use one of: {', '.join(allowed)}")
        if self.tolerance is not None:
            if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)):
                raise ValueError(f"tolerance must be a number such as 0.01, got {self.tolerance!r}")
            if not 0 < self.tolerance < 1:
                raise ValueError(f"tolerance must lie between 0 and 1 (e.g. 0.01 for 1%), got {self.tolerance!r}")
        positive_int(self.steps, "steps", maximum=4096, hint="use a tolerance to refine only where a path needs it")
        positive_int(self.max_steps, "max_steps", maximum=MAX_TOLERANCE_STEPS, hint="tolerance mode keeps every step")
        positive_int(self.samples, "samples", maximum=1024, hint="each copy costs one gradient per image")
        positive_int(self.shard_size, "shard_size", maximum=MAX_SHARD_SIZE)
        positive_int(self.batch_size, "batch_size", maximum=MAX_BATCH_SIZE)
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(str(s) for s in self.layers))

    def record(self) -> dict:
        """The options as JSON-ready values, for the manifest."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, record: dict) -> ScanOptions:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}
        return cls(**fields)


@dataclass(frozen=True)
class ScanSource:
    """What to open, in any process: `open_subject`'s arguments (a run directory is `run:DIR`).

    `card` is a card file's path or the card's fields themselves (what the command line's
    --input-size, --mean, ... give), so that every worker, a Ray actor included, opens the
    model with the same card.
    """

    model: str
    data: str | None = None
    epoch: int | None = None
    weights: str | None = None
    card: str | dict | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.model.startswith("run:"):  # one run, however its path is written, in every process
            object.__setattr__(self, "model", f"run:{Path(self.model[4:]).expanduser().resolve()}")
        if isinstance(self.weights, Path):
            object.__setattr__(self, "weights", str(self.weights))
        if isinstance(self.card, Path):
            object.__setattr__(self, "card", str(self.card))
        elif isinstance(self.card, Mapping):  # as JSON gives it back, so the manifest reads back equal
            object.__setattr__(self, "card", plain_card(self.card))

    def open(self, device: str | None = None) -> Subject:
        """Open the model and its data in eval mode with frozen parameters, on `device` (default: the recorded one)."""
        from mindscope.subject import open_subject

        subject = open_subject(model=self.model, data=self.data, epoch=self.epoch, weights=self.weights, card=self.card)
        prepare_model(subject.model, torch.device(self.device if device is None else device))
        return subject


def plain_card(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Card fields as JSON holds them: lists for tuples, in a plain dict."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device`, in eval mode, parameters frozen: workers then share no mutable flag."""
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def attribute(
    method: str,
    model: nn.Module,
    x: Tensor,
    targets: Tensor | None,
    options: ScanOptions,
    baseline: Callable[[Tensor], Tensor],
    seed: int,
) -> Attribution:
    """Run one of METHODS on a batch, as the options say."""
    output = class_probability if options.score == "probability" else class_logit
    if method == "gradient":
        return gradients(model, x, targets, output=output)
    if method == "smoothgrad":
        return smooth_gradients(gradients, model, x, targets, samples=options.samples, seed=seed, output=output)
    if options.tolerance is None:
        rule = gauss_legendre(options.steps)
        return integrated_gradients(model, x, targets, baseline=baseline, rule=rule, output=output)
    return integrated_gradients(
        model, x, targets, baseline=baseline, tolerance=options.tolerance, max_steps=options.max_steps, output=output
    )
