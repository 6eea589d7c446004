"""Name the layers of any model: dotted `named_modules()` names, or walk-through layer numbers.

A name that exists always means that module. Layer numbers (3, "3" where no module has
that name, or "L3") count the model's parameterised layers (Conv*d and Linear) in
registration order, from 1, so the nine convolutions of `AllConvNet` are layers 1..9.
Asked for its *output*, a numbered layer means the activation that directly follows
it in the same `nn.Sequential` (the walk-through's "after layer 3" is post-ELU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "LayerInfo",
    "LayerSpec",
    "describe_layers",
    "layer_number",
    "numbered_layers",
    "resolve_layer",
    "resolve_layers",
    "split_specs",
]

NUMBERED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
ACTIVATION_TYPES = (
    nn.ELU,
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.ReLU6,
    nn.SELU,
    nn.CELU,
    nn.Mish,
    nn.Hardswish,
)


@dataclass(frozen=True)
class LayerInfo:
    name: str  # dotted name, as in named_modules() and state_dict()
    number: int | None  # walk-through layer number, for parameterised layers
    kind: str  # class name
    output_shape: tuple[int, ...] | None
    parameters: int


def numbered_layers(model: nn.Module) -> dict[int, str]:
    """Return {layer number: dotted name} for the model's Conv and Linear layers."""
    names = [n for n, m in model.named_modules() if isinstance(m, NUMBERED_TYPES)]
    return {i: n for i, n in enumerate(names, start=1)}


def _following_activation(model: nn.Module, name: str) -> str | None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return None
    keys = list(parent._modules.keys())
    i = keys.index(child)
    if i + 1 < len(keys) and isinstance(parent._modules[keys[i + 1]], ACTIVATION_TYPES):
        return f"{parent_name}.{keys[i + 1]}" if parent_name else keys[i + 1]
    return None


LayerSpec = str | int | nn.Module


def split_specs(specs: LayerSpec | Sequence[LayerSpec]) -> list[LayerSpec]:
    """Turn "3,6,9", one spec, or a list of specs into a list; strings are stripped."""
    if isinstance(specs, str):
        return [s.strip() for s in specs.split(",") if s.strip()]
    if isinstance(specs, (int, nn.Module)):
        return [specs]
    return [s.strip() if isinstance(s, str) else s for s in specs]


def layer_number(spec: str | int) -> int | None:
    """3, "3" and "L3" are layer numbers; anything else is not."""
    if isinstance(spec, bool):
        return None
    if isinstance(spec, int):
        return spec
    text = spec.strip()
    text = text[1:] if text[:1] in ("L", "l") else text
    return int(text) if text.lstrip("-").isdigit() else None


def resolve_layer(model: nn.Module, spec: LayerSpec, *, output: bool = False) -> str:
    """Turn a module, a dotted name or a layer number into a dotted module name.

    A name that exists in `model.named_modules()` always means that module, so in an
    `nn.Sequential` "2" is its third child. A layer number is an int, "L3", or digits that
    name no module. With `output=True` a layer *number* resolves to the activation right
    after that layer where there is one; a name or a module always means exactly itself.
    """
    modules = dict(model.named_modules())
    if isinstance(spec, nn.Module):
        for name, module in modules.items():
            if module is spec and name:
                return name
        raise ValueError(
            f"the {type(spec).__name__} given is not a submodule of {type(model).__name__}; "
            "pass a module of this model, or its dotted name (see 'mindscope layers')"
        )
    if isinstance(spec, str) and spec in modules and spec != "":
        return spec
    number = layer_number(spec) if isinstance(spec, (str, int)) else None
    if number is not None:
        numbers = numbered_layers(model)
        if number not in numbers:
            raise ValueError(
                f"no layer {spec}; layer numbers run from 1 to {len(numbers)} "
                f"(L1 .. L{len(numbers)}; see 'mindscope layers')"
            )
        name = numbers[number]
        return (_following_activation(model, name) or name) if output else name
    listed = ", ".join(n for n in modules if n)
    raise ValueError(f"no layer {spec!r}; layers are: {listed} (see 'mindscope layers')")


def resolve_layers(model: nn.Module, specs: LayerSpec | Sequence[LayerSpec], *, output: bool = False) -> list[str]:
    """Resolve several layer specs: a list, or a comma-separated string like "3,6,9"."""
    names = [resolve_layer(model, s, output=output) for s in split_specs(specs)]
    if not names:
        raise ValueError("no layers given; name at least one, e.g. 'L3,L6,L9' or 'features.4'")
    return list(dict.fromkeys(names))


def describe_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerInfo]:
    """List every module with its number, output shape (for one input) and own parameter count."""
    numbers = {name: i for i, name in numbered_layers(model).items()}
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def hook_for(name):
        def hook(_module, _inputs, out):
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(out.shape)

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # no BatchNorm statistics change for a description
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        for module, training in modes:
            module.train(training)
    return [
        LayerInfo(
            name,
            numbers.get(name),
            type(m).__name__,
            shapes.get(name),
            sum(p.numel() for p in m.parameters(recurse=False)),
        )
        for name, m in model.named_modules()
        if name
    ]
