"""Name the layers of any model: dotted `named_modules()` names, or walk-through layer numbers.

A name that exists always means that module. Layer numbers (3, "3" where no module has
that name, or "L3") count the model's parameterised layers (Conv*d and Linear) in
registration order, from 1, so the nine convolutions of `AllConvNet` are layers 1..9.
Asked for its *output*, a numbered layer means the activation module that follows it,
past any normalisation or dropout in between: the next ones in the same `nn.Sequential`,
or the modules its output flows into in a `torch.fx.GraphModule`, or in the graph of a
Keras or ONNX model from `mindscope.models` (their `next_module`); the walk-through's
"after layer 3" is post-ELU. Where none can be found (an activation written as a
function in `forward`, or any other model), it means the layer's own output, before
its activation. `explain_layer` says, in one line, which module a spec gave and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "LayerChoice",
    "LayerInfo",
    "LayerSpec",
    "describe_layers",
    "explain_layer",
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


# Converted models (torch.export unflattened, TorchScript and Keras wrappers from mindscope.models)
# call their layers through classes named after the original; they count by that name.
NUMBERED_NAMES = frozenset({t.__name__ for t in NUMBERED_TYPES} | {"Conv1D", "Conv2D", "Conv3D", "Dense"})
ACTIVATION_NAMES = frozenset({t.__name__ for t in ACTIVATION_TYPES} | {"Activation"})


def is_numbered(module: nn.Module) -> bool:
    """A convolution or linear layer: what the walk-through's layer numbers count."""
    return isinstance(module, NUMBERED_TYPES) or type(module).__name__ in NUMBERED_NAMES


def is_activation(module: nn.Module) -> bool:
    return isinstance(module, ACTIVATION_TYPES) or type(module).__name__ in ACTIVATION_NAMES


@dataclass(frozen=True)
class LayerInfo:
    name: str  # dotted name, as in named_modules() and state_dict()
    number: int | None  # walk-through layer number, for parameterised layers
    kind: str  # class name
    output_shape: tuple[int, ...] | None
    parameters: int


def numbered_layers(model: nn.Module) -> dict[int, str]:
    """Return {layer number: dotted name} for the model's Conv and Linear layers."""
    names = [n for n, m in model.named_modules() if is_numbered(m)]
    return {i: n for i, n in enumerate(names, start=1)}


# What may sit between a layer and its activation without being "the output" itself.
PASS_THROUGH_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
)
# The same in Keras layers and ONNX nodes (mindscope.models), which count by class name.
PASS_THROUGH_NAMES = frozenset(
    {"BatchNormalization", "LayerNormalization", "GroupNormalization", "Dropout", "SpatialDropout2D"}
)


def _next_in_sequential(model: nn.Module, name: str) -> str | None:
    """The module right after `name` in its nn.Sequential, climbing out of Sequentials it ends."""
    while name:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if not isinstance(parent, nn.Sequential):
            return None
        keys = list(parent._modules.keys())
        i = keys.index(child)
        if i + 1 < len(keys):
            return f"{parent_name}.{keys[i + 1]}" if parent_name else keys[i + 1]
        name = parent_name  # the last child's output is its Sequential's output
    return None


def _graph(model: nn.Module) -> torch.fx.Graph | None:
    """The model's fx graph: its own (a GraphModule, torch.export's unflattened module), else a symbolic trace."""
    graph = getattr(model, "graph", None)
    if isinstance(graph, torch.fx.Graph):
        return graph
    try:
        return torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - a forward fx cannot follow (control flow on values, foreign code): no graph
        return None


def _next_in_graph(graph: torch.fx.Graph | None, name: str) -> tuple[str | None, str]:
    """(the module that alone takes `name`'s output in the fx graph, or None; why not, if None)."""
    if graph is None:
        return None, ""
    for node in graph.nodes:
        if node.op == "call_module" and node.target == name:
            users = list(node.users)
            if len(users) != 1:
                return None, f"{len(users)} operations take its output"
            if users[0].op == "output":
                return None, "its output is the model's output"
            if users[0].op != "call_module":
                what = getattr(users[0].target, "__name__", str(users[0].target))
                return None, f"the activation after it, if any, is the function {what}, which has no module to hook"
            return str(users[0].target), ""
    return None, ""


def own_activation(module: nn.Module) -> str | None:
    """The activation a layer applies itself (Keras's Conv2D(activation="relu")), or None."""
    wrapped = getattr(module, "_layer", None)  # mindscope.models.keras wraps each Keras layer so
    activation = getattr(wrapped, "activation", None)
    name = getattr(activation, "__name__", None)
    return name if name not in (None, "linear") else None


def _following_activation(model: nn.Module, name: str) -> tuple[str | None, list[str], str]:
    """(the activation module after layer `name`, the pass-through modules on the way, why none)."""
    modules = dict(model.named_modules())
    passed: list[str] = []
    current, graph, traced = name, None, False
    while True:
        nxt = _next_in_sequential(model, current)
        why = ""
        if nxt is None and callable(getattr(model, "next_module", None)):  # a graph of its own (Keras, ONNX)
            nxt = model.next_module(current)
        if nxt is None:
            if not traced and not callable(getattr(model, "next_module", None)):  # once; Keras, ONNX: their own
                graph, traced = _graph(model), True
            nxt, why = _next_in_graph(graph, current)
        if nxt is None:
            why = why or "no activation module found after it (followed: nn.Sequential, fx, Keras and ONNX graphs)"
            return None, passed, why
        if is_activation(modules[nxt]):
            return nxt, passed, ""
        if not (isinstance(modules[nxt], PASS_THROUGH_TYPES) or type(modules[nxt]).__name__ in PASS_THROUGH_NAMES):
            return None, passed, f"{type(modules[nxt]).__name__} {nxt} follows it, not an activation"
        passed.append(nxt)
        current = nxt


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


@dataclass(frozen=True)
class LayerChoice:
    """Which module a layer spec gave, and why, in words a person can check."""

    spec: str  # what was asked, as text: "L3", "3", or the module's name for a name or a module
    name: str  # the dotted module name it resolved to
    kind: str  # that module's class name
    layer: str | None  # for a layer number: the numbered layer itself (name is its activation when found)
    description: str  # one line, e.g. "L3 -> features.5 (ELU after layer 3, Conv2d features.4)"

    def __str__(self) -> str:
        return self.description


def explain_layer(model: nn.Module, spec: LayerSpec, *, output: bool = False) -> LayerChoice:
    """Resolve a layer spec as `resolve_layer` does, and say in one line what was chosen and why.

    For a layer number asked for its output, the line names the activation taken and the
    layer it follows ("L3 -> features.8 (ReLU after layer 3, Conv2d features.6, through
    BatchNorm2d features.7)"), or says that the layer's own output, before any activation, is
    returned, and why ("no activation module follows it ..."). A name or a module always
    means exactly itself.
    """
    modules = dict(model.named_modules())
    name = None
    if isinstance(spec, nn.Module):
        name = next((n for n, m in modules.items() if m is spec and n), None)
        if name is None:
            raise ValueError(
                f"the {type(spec).__name__} given is not a submodule of {type(model).__name__}; "
                "pass a module of this model, or its dotted name (see 'mindscope layers')"
            )
    elif isinstance(spec, str) and spec in modules and spec != "":
        name = spec
    if name is not None:  # a module or a name means exactly itself
        kind = type(modules[name]).__name__
        note = ", the module given" if isinstance(spec, nn.Module) else ""
        note += ": its own output" if output and is_numbered(modules[name]) else ""
        return LayerChoice(name, name, kind, None, f"{name} ({kind}{note})")
    text = str(spec).strip()
    number = layer_number(spec) if isinstance(spec, (str, int)) else None
    if number is None:
        listed = ", ".join(n for n in modules if n)
        raise ValueError(f"no layer {spec!r}; layers are: {listed} (see 'mindscope layers')")
    numbers = numbered_layers(model)
    if number not in numbers:
        raise ValueError(
            f"no layer {spec}; layer numbers run from 1 to {len(numbers)} "
            f"(L1 .. L{len(numbers)}; see 'mindscope layers')"
        )
    layer = numbers[number]
    kind = type(modules[layer]).__name__
    if not output:
        return LayerChoice(text, layer, kind, layer, f"{text} -> {layer} (layer {number}, {kind})")
    own = own_activation(modules[layer])
    if own is not None:
        line = f"{text} -> {layer} (layer {number}, {kind} with its own activation {own}: its output is after it)"
        return LayerChoice(text, layer, kind, layer, line)
    after, passed, why = _following_activation(model, layer)
    if after is None:
        line = f"{text} -> {layer} (layer {number}, {kind}: its own output, before any activation; {why})"
        return LayerChoice(text, layer, kind, layer, line)
    through = "".join(f", through {type(modules[p]).__name__} {p}" for p in passed)
    act = type(modules[after]).__name__
    return LayerChoice(
        text, after, act, layer, f"{text} -> {after} ({act} after layer {number}, {kind} {layer}{through})"
    )


def resolve_layer(model: nn.Module, spec: LayerSpec, *, output: bool = False) -> str:
    """Turn a module, a dotted name or a layer number into a dotted module name.

    A name that exists in `model.named_modules()` always means that module, so in an
    `nn.Sequential` "2" is its third child. A layer number is an int, "L3", or digits that
    name no module. With `output=True` a layer *number* resolves to the activation after
    that layer where one is found (see the module's docstring), else to the layer itself;
    a name or a module always means exactly itself. `explain_layer` says which, and why.
    """
    return explain_layer(model, spec, output=output).name


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
