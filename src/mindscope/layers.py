"""Name the layers of any model: dotted `named_modules()` names, or walk-through layer numbers.

Layer numbers count the model's parameterised layers (Conv*d and Linear) in
registration order, from 1, so the nine convolutions of `AllConvNet` are layers 1..9.
Asked for its *output*, a numbered layer means the activation that directly follows
it in the same `nn.Sequential` (the walk-through's "after layer 3" is post-ELU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

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


def resolve_layer(model: nn.Module, spec: str | int, *, output: bool = False) -> str:
    """Turn a dotted name or a layer number into a dotted module name.

    With `output=True` a layer *number* resolves to the activation right after that
    layer where there is one; a dotted name always means exactly that module.
    """
    modules = dict(model.named_modules())
    numbers = numbered_layers(model)
    if isinstance(spec, str) and spec.strip().lstrip("-").isdigit():
        spec = int(spec)
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec not in numbers:
            raise ValueError(f"no layer {spec}; layer numbers run from 1 to {len(numbers)} (see 'mindscope layers')")
        name = numbers[spec]
        return (_following_activation(model, name) or name) if output else name
    if isinstance(spec, str) and spec in modules and spec != "":
        return spec
    listed = ", ".join(n for n in modules if n)
    raise ValueError(f"no layer {spec!r}; layers are: {listed} (see 'mindscope layers')")


def resolve_layers(model: nn.Module, specs, *, output: bool = False) -> list[str]:
    """Resolve several layer specs: a list, or a comma-separated string like "3,6,9"."""
    if isinstance(specs, (str, int)):
        specs = [s for s in str(specs).split(",") if s.strip()] if isinstance(specs, str) else [specs]
    names = [resolve_layer(model, s.strip() if isinstance(s, str) else s, output=output) for s in specs]
    if not names:
        raise ValueError("no layers given; name at least one, e.g. '3,6,9' or 'features.4'")
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
