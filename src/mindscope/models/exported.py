"""torch:FILE - a `torch.export` program (.pt2) or a TorchScript file, as an inspectable module.

`torch.export.load(f).module()` is one flat graph: its submodules only hold parameters and
are never called, so no forward hook fires and no activation can be captured. The program
is therefore rebuilt with `torch.export.unflatten`, which restores the original module
tree (`features.0`, `classifier`, ...) as `InterpreterModule`s that are called, so the
original dotted names work in `capture_activations` and `describe_layers`. The input
shape recorded in the program becomes the card's input shape.

A TorchScript module refuses Python hooks, so it goes through `mindscope.models.script`.
A pickled whole model (`torch.save(model)`) is refused: unpickling it runs code from the
file. Only archives whose format is known are opened, each with its own safe reader.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mindscope.models.naming import named_class

__all__ = ["archive_kind", "load_torch"]

EXPORT_HOWTO = (
    "export it with torch.export.save(torch.export.export(model, (x,)), 'model.pt2') or "
    "torch.jit.save(torch.jit.trace(model, x), 'model.ts'), or save model.state_dict() and load it "
    "with python:MODULE:FACTORY and weights=FILE"
)


def archive_kind(path: Path) -> str:
    """Tell a torch.export program, a TorchScript file and a torch.save file apart by their contents."""
    if not zipfile.is_zipfile(path):
        return "unknown"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return "export"
    if any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "pickle"
    return "unknown"


def _refuse_pickle(path: Path) -> None:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any refusal of the safe loader means code or junk in the file
        raise ValueError(
            f"{path} is a pickled model (torch.save(model)); loading it would run arbitrary code from "
            f"the file, so mindscope does not; {EXPORT_HOWTO}"
        ) from None
    raise ValueError(
        f"{path} holds {type(content).__name__} of tensors (weights), not a model; give the code that builds "
        f"the model as python:MODULE:FACTORY with weights={path.name}"
    )


def _input_shape(program: torch.export.ExportedProgram) -> tuple[int, ...] | None:
    """The shape of one example the program was exported for; None where a dimension other than the batch varies."""
    user_inputs = program.graph_signature.user_inputs
    if len(user_inputs) != 1:
        raise ValueError(
            f"the exported program takes {len(user_inputs)} inputs {list(user_inputs)}; mindscope feeds one "
            "batch, so export a wrapper that takes one tensor"
        )
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            value = node.meta.get("val")
            dims = tuple(getattr(value, "shape", ()))[1:]
            if dims and all(isinstance(d, int) for d in dims):
                return tuple(int(d) for d in dims)
    return None


def _load_export(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    try:
        with warnings.catch_warnings():  # torch's own deprecation notes about its pytree internals
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.load(str(path))
    except Exception as error:  # noqa: BLE001 - a damaged or foreign archive
        raise ValueError(f"{path} looks like a torch.export program but does not load: {error}") from None
    carried = {}
    shape = _input_shape(program)
    if shape is not None:
        carried["input_shape"] = shape
    module = _named_kinds(program, torch.export.unflatten(program))
    _drop_fake_values(module)
    return module, carried


def _drop_fake_values(module: nn.Module) -> None:
    """Remove the symbolic example tensors kept in the graphs' metadata; running never reads them.

    They make `copy.deepcopy` fail ("Cannot call numel() on tensor with symbolic sizes"), and
    the randomisation check deep-copies the model it randomises.
    """
    for sub in module.modules():
        graph = getattr(sub, "graph", None)
        for node in getattr(graph, "nodes", ()):
            for key in ("val", "example_value", "tensor_meta", "unbacked_bindings"):
                node.meta.pop(key, None)


def _named_kinds(program: torch.export.ExportedProgram, module: nn.Module) -> nn.Module:
    """Give each unflattened submodule a class named after the original (Conv2d, not InterpreterModule).

    `describe_layers` reports `type(m).__name__`; the program records each original class in
    its nodes' `nn_module_stack`. The new class is an empty subclass: behaviour is unchanged.
    """
    kinds = {}
    for node in program.graph.nodes:
        for path, qualified in (node.meta.get("nn_module_stack") or {}).values():
            kinds[path] = str(qualified).rpartition(".")[2]
    for name, sub in module.named_modules():
        base = type(sub)
        if name and name in kinds and base.__name__ == "InterpreterModule":
            sub.__class__ = named_class(base, kinds[name])
    return module


def load_torch(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load torch:FILE as an inspectable module; return it with the card fields the file carries."""
    kind = archive_kind(path)
    if kind == "export":
        return _load_export(path)
    if kind == "torchscript":
        from mindscope.models.script import load_script

        return load_script(path), {}
    if kind == "pickle":
        _refuse_pickle(path)
    raise ValueError(
        f"{path} is not a torch.export program (.pt2) or a TorchScript file; torch:FILE takes one of those "
        f"({EXPORT_HOWTO})"
    )
