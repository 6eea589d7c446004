"""onnx:FILE - an ONNX graph converted to torch modules, one submodule per node, named after the node.

Why a converter of our own: onnx2torch imports torchvision, which does not load beside the
CPU build of torch here, and onnxruntime runs the graph out of torch's reach (no hooks, no
gradients). This one is small, reads the file with the `onnx` package only, and computes
every node with torch operations, so gradients flow and every node's output can be
captured. It covers the common vision and MLP operators (`onnx_layers`, `onnx_functions`);
an operator it does not know is refused with its name and node. Outputs agree with
onnxruntime up to float32 rounding (the tests compare).

Names: node "/features/features.0/Conv" becomes submodule "features_features_0_Conv":
every character outside [A-Za-z0-9_] becomes "_" and leading or trailing "_" go; a node
without a name is "<OpType>_<index>"; a repeated name gets "_2", "_3". The model's
`node_names` maps each submodule name back to its ONNX node name. Constants and weights
that no layer holds are buffers of the model, named `constant_<i>`.

mindscope reads outputs as logits and applies softmax itself: a graph whose (N, classes)
output is a final Softmax over the classes returns that Softmax's input instead (the step is
left out), so mindscope's softmax gives the model's own probabilities; `load_onnx` says so
in the card fields it returns, under "output".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mindscope.models.naming import module_name
from mindscope.models.onnx_functions import softmax as softmax_function
from mindscope.models.onnx_layers import Step, Unsupported, build

__all__ = ["OnnxModule", "convert", "load_onnx"]

INSTALL = "onnx:FILE needs the onnx package: pip install 'mindscope[onnx]'"


class OnnxModule(nn.Module):
    """An ONNX graph run step by step; each step is a submodule, so hooks see every node's output."""

    def __init__(
        self,
        steps: list[tuple[str, Step]],
        constants: dict[str, Tensor],
        inputs: list[str],
        outputs: list[str],
        node_names: dict[str, str],
    ) -> None:
        super().__init__()
        self.input_names, self.output_names = list(inputs), list(outputs)
        self.node_names = dict(node_names)  # submodule name -> ONNX node name
        self._constants: dict[str, str] = {}  # ONNX tensor name -> buffer name
        for i, (tensor_name, value) in enumerate(constants.items()):
            self.register_buffer(f"constant_{i}", value)
            self._constants[tensor_name] = f"constant_{i}"
        self._steps = [(name, step.inputs, step.outputs) for name, step in steps]
        for name, step in steps:
            self.add_module(name, step.module)

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise TypeError(
                f"the ONNX graph takes {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}"
            )
        values: dict[str, Any] = {name: getattr(self, buffer) for name, buffer in self._constants.items()}
        values.update(zip(self.input_names, inputs))
        for name, ins, outs in self._steps:
            result = self._modules[name](*[values[i] if i else None for i in ins])
            values.update(zip(outs, result) if len(outs) > 1 else [(outs[0], result)])
        results = [values[name] for name in self.output_names]
        return results[0] if len(results) == 1 else tuple(results)

    def next_module(self, name: str) -> str | None:
        """The step that alone takes step `name`'s outputs, or None (none, several, or the graph's output)."""
        outs = next((outs for step, _, outs in self._steps if step == name), None)
        if outs is None or any(o in self.output_names for o in outs):
            return None
        users = [step for step, ins, _ in self._steps if any(i in outs for i in ins if i)]
        return users[0] if len(users) == 1 else None


def _constant(node: Any) -> Tensor:
    """The value of a Constant node, whichever attribute holds it."""
    (attribute,) = node.attribute
    value = _attribute(attribute)
    if isinstance(value, Tensor):
        return value
    dtype = torch.float32 if attribute.name.startswith("value_float") else torch.int64
    return torch.tensor(value, dtype=dtype)


def _attribute(attribute: Any) -> Any:
    """An attribute's value, with tensors as torch tensors."""
    from onnx import AttributeProto, helper, numpy_helper

    value = helper.get_attribute_value(attribute)
    return _tensor(numpy_helper.to_array(value)) if attribute.type == AttributeProto.TENSOR else value


def _tensor(array: Any) -> Tensor:
    tensor = torch.from_numpy(array.copy())
    return tensor.float() if tensor.is_floating_point() else tensor


def _input_shape(graph: Any, initialisers: set[str]) -> tuple[list[str], tuple[int, ...] | None]:
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise ValueError(
            f"the ONNX graph takes {len(inputs)} inputs {[i.name for i in inputs]}; mindscope feeds one batch, "
            "so export a model that takes one tensor"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    sizes = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims][1:]
    shape = tuple(sizes) if sizes and all(s is not None for s in sizes) else None
    return [inputs[0].name], shape


def convert(model: Any) -> tuple[OnnxModule, tuple[int, ...] | None]:
    """Convert a loaded ONNX ModelProto; return the module and the input shape of one example, if fixed."""
    from onnx import numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    graph = model.graph
    constants = {init.name: _tensor(numpy_helper.to_array(init)) for init in graph.initializer}
    inputs, shape = _input_shape(graph, set(constants))
    steps: list[tuple[str, Step]] = []
    taken = {"input_names", "output_names", "node_names"}  # the model's own attributes, and its buffers':
    taken |= {f"constant_{i}" for i in range(len(graph.node) + len(graph.initializer))}
    names: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            constants[node.output[0]] = _constant(node)
            continue
        attributes = {a.name: _attribute(a) for a in node.attribute}
        try:
            built = build(node, attributes, constants, opset)
        except Unsupported as error:
            raise ValueError(
                f"the ONNX node {node.name or index!r} uses {error}, which mindscope's converter does not support "
                "(see mindscope.models.onnx_layers.SUPPORTED); export the model with torch.export as torch:FILE"
            ) from None
        name = module_name(node.name, f"{node.op_type}_{index}", taken)
        for step in built:
            step_name = module_name(name + step.suffix, name, taken) if step.suffix else name
            names[step_name] = node.name
            steps.append((step_name, step))
    used = {i for _, step in steps for i in step.inputs}
    constants = {k: v for k, v in constants.items() if k in used}  # the rest were absorbed into layers
    outputs = [o.name for o in graph.output]
    return OnnxModule(steps, constants, inputs, outputs, names), shape


def _final_softmax(module: OnnxModule, graph: Any) -> str | None:
    """The name of the Softmax step over the classes that makes the one (N, classes) output, or None."""
    if len(graph.output) != 1 or len(graph.output[0].type.tensor_type.shape.dim) != 2:
        return None
    (output,) = module.output_names
    last = next(((n, ins) for n, ins, outs in module._steps if output in outs), None)
    if last is None or any(output in ins for _, ins, _ in module._steps):
        return None
    step = module._modules[last[0]]
    attributes = getattr(step, "attributes", {})
    softmax = getattr(step, "fn", None) is softmax_function and not attributes.get("log")
    return last[0] if softmax and attributes.get("axis") in (1, -1) else None


def _expose_logits(module: OnnxModule, graph: Any) -> str | None:
    """Leave out a final Softmax so that the module returns the logits; say what was done, or None."""
    name = _final_softmax(module, graph)
    if name is None:
        return None
    index = next(i for i, (n, _, _) in enumerate(module._steps) if n == name)
    _, ins, _ = module._steps.pop(index)
    module.output_names = [ins[0]]
    delattr(module, name)
    node = module.node_names.pop(name)
    return (
        f"logits: the graph ends in Softmax (node {node!r}), which is left out; "
        "mindscope applies softmax, giving the model's own probabilities"
    )


def load_onnx(path: Path) -> tuple[OnnxModule, dict[str, Any]]:
    """Read onnx:FILE, check it, and convert it; return the module and the card fields the file carries."""
    try:
        import onnx
    except ImportError:
        raise ValueError(INSTALL) from None
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as error:  # protobuf decode errors, checker errors: not an ONNX model
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is not a valid ONNX model ({first}); export one with torch.onnx.export") from None
    module, shape = convert(model)
    carried: dict[str, Any] = {} if shape is None else {"input_shape": shape}
    note = _expose_logits(module, model.graph)
    if note is not None:
        carried["output"] = note  # build_card keeps it as the card's output_note
    return module, carried
