"""python:MODULE:FACTORY - the user's own model class, with weights from a safetensors file or a state dict.

MODULE is a dotted importable name (`mypkg.nets`) or a path to a .py file; FACTORY is a
callable in it that takes no arguments and returns an `nn.Module` (a class works). The
weights are read without running code from the weights file: safetensors, or
`torch.load(weights_only=True)`. Every parameter and buffer of the model must be in the
file and nothing else may be: a missing, surplus or reshaped tensor is refused by name.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["load_factory", "read_weights"]


def _failure(error: BaseException) -> str:
    """The user's code's exception in one line: its type, message and, for a SyntaxError, where."""
    if isinstance(error, SyntaxError):
        return f"{type(error).__name__}: {error.msg} (line {error.lineno})"
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def _import(module: str) -> Any:
    path = Path(module).expanduser()
    if module.endswith(".py") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"no Python file {path}; give an existing .py file or a dotted module name")
        name = f"mindscope_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {path} as Python; give a .py file that defines the model")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded  # so that classes defined there can find their own module
        try:
            spec.loader.exec_module(loaded)
        except Exception as error:  # the user's code failed: a SyntaxError, bad bytes, a raise at import
            sys.modules.pop(name, None)
            raise ValueError(f"importing {path} failed: {_failure(error)}; fix the file and try again") from error
        return loaded
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and module != error.name and not module.startswith(f"{error.name}."):
            raise ValueError(f"importing module {module!r} failed: {_failure(error)}; install what it needs") from error
        raise ValueError(
            f"cannot import module {module!r} ({error}); add its folder to PYTHONPATH or give the path to its .py file"
        ) from None
    except Exception as error:  # found, but the user's code failed while it ran
        raise ValueError(
            f"importing module {module!r} failed: {_failure(error)}; fix the module and try again"
        ) from error


def read_weights(path: Path) -> dict[str, Tensor]:
    """Read a state dict from a safetensors file or a `torch.save`d dict, never running code from it."""
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}; give the file saved from model.state_dict()")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{path} is not a readable safetensors file ({error}); save it with safetensors") from None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any refusal of the safe loader: junk, or a pickle that would run code
        raise ValueError(
            f"{path} is not a state dict that loads without running code ({str(error).splitlines()[0]}); "
            "save torch.save(model.state_dict(), FILE) or a .safetensors file"
        ) from None
    if not isinstance(content, dict) or not all(isinstance(v, Tensor) for v in content.values()):
        keys = list(content)[:6] if isinstance(content, dict) else type(content).__name__
        raise ValueError(
            f"{path} holds {keys}, not a state dict of tensors; save torch.save(model.state_dict(), FILE) "
            "(from a training checkpoint, save its model's state dict alone)"
        )
    return content


def _check_keys(model: nn.Module, weights: dict[str, Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing:
        raise ValueError(
            f"{path} lacks {len(missing)} of the model's tensors, first {missing[0]!r}; "
            "save the state dict of the same architecture the factory builds"
        )
    if unexpected:
        raise ValueError(
            f"{path} holds {len(unexpected)} tensors the model does not have, first {unexpected[0]!r}; "
            "save the state dict of the same architecture the factory builds"
        )
    for key, tensor in expected.items():
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{key!r} has shape {tuple(weights[key].shape)} in {path} but {tuple(tensor.shape)} in the model; "
                "build the model with the same sizes as the one that was saved"
            )


def load_factory(target: str, weights: str | Path | None) -> nn.Module:
    """Build the model with MODULE:FACTORY and load `weights` into it, checking every key and shape."""
    module_name, sep, factory_name = target.rpartition(":")
    if not sep or not module_name or not factory_name:
        raise ValueError(
            f"python:{target} must name a module and a factory, e.g. python:mypkg.nets:make_model or python:nets.py:Net"
        )
    if weights is None:
        raise ValueError(
            f"python:{target} needs weights=FILE (--weights FILE): a state dict saved from the trained model, "
            "as .safetensors or torch.save(model.state_dict(), FILE)"
        )
    module = _import(module_name)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        found = ", ".join(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ValueError(f"{module_name} has no callable {factory_name!r}; it has: {found or 'none'}")
    try:
        model = factory()
    except Exception as error:  # the user's factory failed: their code, their error, in one line
        raise ValueError(
            f"{module_name}:{factory_name}() failed: {_failure(error)}; fix the factory so that it builds the model"
        ) from error
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{module_name}:{factory_name}() returned {type(model).__name__}, not a torch nn.Module; "
            "give a factory that builds the model"
        )
    path = Path(weights).expanduser()
    state = read_weights(path)
    _check_keys(model, state, path)
    model.load_state_dict(state)
    return model
