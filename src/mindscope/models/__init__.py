"""Outside models as inspectable `nn.Module`s, with a card of what they expect.

One spec string names a model source:
  torch:FILE               a torch.export program (.pt2) or a TorchScript file (`.exported`, `.script`)
  python:MODULE:FACTORY    the user's own class, with weights= a safetensors file or a state dict (`.factory`)
  onnx:FILE                an ONNX graph, converted to torch modules named after its nodes (`.onnx`)
  keras:FILE               a Keras 3 model (.keras, .h5), its layers exposed by their Keras names (`.keras`)
`load_model(spec)` returns the module in eval mode, float32, on the CPU, with a `ModelCard`;
its layers are capturable by name with `capture_activations` and listed by `describe_layers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mindscope._util import eval_mode
from mindscope.models.card import ModelCard, build_card, read_card, sidecar_path

__all__ = ["MODEL_KINDS", "LoadedModel", "ModelCard", "check_forward", "load_model", "read_card"]

MODEL_KINDS = ("torch", "python", "onnx", "keras")
_SUFFIX_KINDS = {".pt2": "torch", ".ts": "torch", ".pt": "torch", ".onnx": "onnx", ".keras": "keras", ".h5": "keras"}


@dataclass
class LoadedModel:
    """An outside model ready for the looks, and what it expects."""

    model: nn.Module  # in eval mode, float32, on CPU
    card: ModelCard
    outputs: int | None = None  # scores per example, when a forward pass on the card's input shape ran


def _parse(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string such as 'onnx:model.onnx', got {type(spec).__name__}")
    kind, sep, rest = spec.partition(":")
    if kind not in MODEL_KINDS or not rest:
        guess = _SUFFIX_KINDS.get(Path(spec).suffix.lower()) if not sep or kind not in MODEL_KINDS else None
        hint = f"; for this file write {guess}:{spec}" if guess else ""
        raise ValueError(
            f"unknown model source {spec!r}; use torch:FILE, onnx:FILE, keras:FILE or python:MODULE:FACTORY "
            f"(a mindscope run directory is run:DIR){hint}"
        )
    return kind, rest


def _model_file(kind: str, rest: str) -> Path:
    path = Path(rest).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no model file {path}; give the path of an existing file after '{kind}:'")
    return path


def _float32(model: nn.Module) -> nn.Module:
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors):
        model.float()
    return model


def _check_finite(model: nn.Module, source: str) -> None:
    """Refuse a model whose weights hold NaN, or Inf in a parameter: every look would be NaN or meaningless.

    A buffer may hold -inf or inf on purpose (an attention mask, a constant of the graph);
    NaN is never a value a trained model needs.
    """
    tensors = [(name, t, "parameter") for name, t in model.named_parameters()]
    tensors += [(name, t, "buffer") for name, t in model.named_buffers()]
    for name, tensor, kind in tensors:
        if not tensor.is_floating_point():
            continue
        bad = ~torch.isfinite(tensor) if kind == "parameter" else torch.isnan(tensor)
        count = int(bad.sum())
        if count:
            what = "NaN" if torch.isnan(tensor).any() else "Inf"
            raise ValueError(
                f"{source} holds {what} in {kind} {name!r} ({count} of {tensor.numel()} values): the weights are "
                "broken, most likely by a training run that diverged; give weights saved before it diverged"
            )


def _one_line(error: Exception) -> str:
    """The line of an error that says what went wrong; TorchScript puts it last, after its traceback."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if lines[0].startswith("The following operation failed in the TorchScript") else lines[0]


def check_forward(model: nn.Module, card: ModelCard, shape: tuple[int, ...], *, origin: str = "") -> int:
    """Run a zero batch of two examples of `shape`; return the scores per example the model gives.

    The model must return one row of scores per example, one score per class the card
    names. `origin` says where `shape` came from when no card or flag gave it.
    """
    batch = (2, *shape)
    hint = "give the input size the model expects (--input-size, or input_shape in the model card)"
    with eval_mode(model), torch.no_grad():
        try:
            out = model(torch.zeros(batch))
        except Exception as error:  # the user's model failed: say on what input, and how to change it
            where = origin or f"input_shape {shape}, layout {card.layout}"
            raise ValueError(
                f"the model fails on a zero batch of shape {batch} ({where}): {_one_line(error)}; {hint}"
            ) from None
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"the model returns {type(out).__name__}, not one tensor of scores; mindscope needs a model that "
            "returns (N, classes) scores: wrap it so that it returns only those"
        )
    if out.dim() != 2 or out.shape[0] != 2:
        raise ValueError(
            f"the model returns shape {tuple(out.shape)} for a batch of shape {batch}; mindscope needs one row of "
            "scores per example, (N, classes): if the batch size was fixed at export, export with a dynamic "
            "batch dimension; otherwise wrap the model so that it returns (N, classes)"
        )
    if card.classes is not None and len(card.classes) != out.shape[1]:
        raise ValueError(
            f"{card.classes_from} names {len(card.classes)} classes ({', '.join(card.classes)}) but "
            f"the model returns {out.shape[1]} scores per example; give one class name per output"
        )
    return int(out.shape[1])


def load_model(
    spec: str,
    *,
    weights: str | Path | None = None,
    card: ModelCard | Mapping[str, Any] | str | Path | None = None,
) -> LoadedModel:
    """Load an outside model named by `spec` as an inspectable module, with its card.

    The card merges `card=` (a ModelCard, a mapping of its fields, or a JSON file), the
    JSON file `<model file>.card.json` next to the model, and what the file carries; the
    fields still missing are defaulted and named in `card.assumed`. Weights holding NaN (or
    Inf in a parameter) are refused. Where the input shape is known, one forward pass on
    zeros checks that the model returns (N, classes) scores.
    """
    kind, rest = _parse(spec)
    if weights is not None and kind != "python":
        raise ValueError(f"weights= is only for python:MODULE:FACTORY; a {kind}: file carries its own weights")
    carried: dict[str, Any] = {}
    if kind == "python":
        from mindscope.models.factory import load_factory

        model = load_factory(rest, weights)
        file = Path(weights).expanduser() if weights is not None else None
    else:
        file = _model_file(kind, rest)
        if kind == "torch":
            from mindscope.models.exported import load_torch

            model, carried = load_torch(file)
        elif kind == "onnx":
            from mindscope.models.onnx import load_onnx

            model, carried = load_onnx(file)
        else:
            from mindscope.models.keras import load_keras

            model, carried = load_keras(file)
    model_card = build_card(spec, given=card, sidecar=None if file is None else sidecar_path(file), carried=carried)
    model = _float32(model.to("cpu")).eval()
    _check_finite(model, spec if weights is None else f"{spec} with weights {weights}")
    if model_card.input_shape is None:
        return LoadedModel(model, model_card)
    return LoadedModel(model, model_card, check_forward(model, model_card, model_card.input_shape))
