"""TorchScript files as inspectable modules: the scripted module tree, re-run through Python.

A loaded TorchScript module refuses Python forward hooks, so nothing inside it can be
captured. Each scripted module is therefore wrapped in a `ScriptLayer`: an `nn.Module`
whose class is named after the original (`Conv2d`, `Sequential`, so `describe_layers`
reads as for the original network) and which holds the very tensors the script computes
with, so weights read, and weights changed in place, are the script's own. A layer with
children runs its TorchScript graph node by node in Python, calling each child through its
wrapper, so a hook on `features.0` sees exactly what the script's `features.0` returned.
A layer without children (a convolution, a ReLU) runs its compiled code.

The interpreter knows TorchScript's structural nodes (attributes, method and function
calls, lists, tuples, if, loops) and dispatches every other node to the operator its
schema names in `torch.ops`. A module whose graph holds anything else runs compiled as a
whole: the model still works, its children just cannot be captured one by one.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from torch.jit._recursive import wrap_cpp_module

from mindscope.models.naming import named_class

__all__ = ["ScriptLayer", "load_script"]

_STRUCTURE = {
    "prim::Constant",
    "prim::GetAttr",
    "prim::CallMethod",
    "prim::CallFunction",
    "prim::If",
    "prim::Loop",
    "prim::ListConstruct",
    "prim::TupleConstruct",
    "prim::DictConstruct",
    "prim::ListUnpack",
    "prim::TupleUnpack",
    "prim::TupleIndex",
    "prim::unchecked_cast",
    "prim::Uninitialized",
    "prim::RaiseException",
}


# TorchScript's operators on generic lists (`t[]`) take no Python list; these are what they compute.
_GENERIC = MappingProxyType(
    {
        "aten::__getitem__": operator.getitem,
        "aten::len": len,
        "aten::append": lambda items, item: (items.append(item), items)[1],
        "aten::__contains__": operator.contains,
        "aten::__is__": operator.is_,
        "aten::__isnot__": operator.is_not,
        "aten::__not__": operator.not_,
        "aten::list": list,
        "aten::warn": lambda *args: None,
    }
)


def _operator(node: torch._C.Node) -> Any:
    """The torch.ops overload a node calls, with its argument names; None where there is none."""
    if node.kind() in _GENERIC:
        return _GENERIC[node.kind()], node.inputsSize(), []
    text = node.schema()
    if text == "(no schema)":
        return None
    schema = torch._C.parse_schema(text)
    namespace, _, name = schema.name.partition("::")
    try:
        packet = getattr(getattr(torch.ops, namespace), name)
        op = getattr(packet, schema.overload_name or "default")
    except (AttributeError, RuntimeError):
        return None
    keywords = [a.name for a in schema.arguments if a.kwarg_only]
    return op, len(schema.arguments) - len(keywords), keywords


def _plan(nodes: Iterable[torch._C.Node], cu: torch._C.CompilationUnit, plan: dict) -> bool:
    """Fill `plan` with what each node needs at run time; False if some node cannot be run here."""
    for node in nodes:
        kind = node.kind()
        if kind == "prim::Constant":
            out = node.output()
            if out.type().kind() == "FunctionType":
                function = cu.find_function(str(out.type()).removeprefix("__torch__."))
                function = function or cu.find_function(str(out.type()))
                if function is None:
                    return False
                plan[node] = function
            else:
                plan[node] = out.toIValue()
        elif kind not in _STRUCTURE:
            call = _operator(node)
            if call is None:
                return False
            plan[node] = call
        if not all(_plan(block.nodes(), cu, plan) for block in node.blocks()):
            return False
    return True


class ScriptLayer(nn.Module):
    """One scripted module, with its parameters, buffers and children as a plain module tree."""

    def __init__(self, script: torch.jit.ScriptModule, cu: torch._C.CompilationUnit) -> None:
        super().__init__()
        object.__setattr__(self, "_script", script)  # not a submodule: its tensors are registered below
        object.__setattr__(self, "_cu", cu)
        object.__setattr__(self, "_plans", {})
        for name, tensor in list(script.named_parameters(recurse=False)):
            parameter = nn.Parameter(tensor.detach(), requires_grad=tensor.requires_grad)
            setattr(script, name, parameter)  # the script now computes with this very object
            self.register_parameter(name, parameter)
        for name, tensor in script.named_buffers(recurse=False):
            self.register_buffer(name, tensor)
        for name, child in script.named_children():
            self.add_module(name, wrap_script(child, cu))
        self.training = script.training

    def forward(self, *args: Any) -> Any:
        return self._call_method("forward", list(args))

    def train(self, mode: bool = True) -> ScriptLayer:
        super().train(mode)
        self._script.train(mode)
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> ScriptLayer:
        super()._apply(fn, recurse)
        for name, tensor in (*self._parameters.items(), *self._buffers.items()):  # buffers are replaced
            setattr(self._script, name, tensor)
        return self

    def __deepcopy__(self, memo: dict) -> ScriptLayer:
        copied = wrap_script(copy.deepcopy(self._script, memo), self._cu)
        for mine, theirs in zip(self.modules(), copied.modules()):
            theirs.train(mine.training)
        memo[id(self)] = copied
        return copied

    def _attribute(self, name: str) -> Any:
        if name in self._modules:
            return self._modules[name]
        if name in self._parameters:
            return self._parameters[name]
        if name in self._buffers:
            return self._buffers[name]
        if name == "training":
            return self.training
        return getattr(self._script, name)

    def _call_method(self, method: str, args: list[Any]) -> Any:
        if method not in self._plans:
            graph = getattr(self._script, method).graph
            plan: dict = {}
            self._plans[method] = (graph, plan) if self._modules and _plan(graph.nodes(), self._cu, plan) else None
        if self._plans[method] is None:  # no children to reach, or a node the interpreter does not know
            if self._script.training != self.training:
                self._script.train(self.training)
            return getattr(self._script, method)(*args)
        graph, plan = self._plans[method]
        env = {v.unique(): a for v, a in zip(graph.inputs(), [self, *args])}
        _run(graph.nodes(), env, plan)
        outputs = [env[v.unique()] for v in graph.outputs()]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _run(nodes: Iterable[torch._C.Node], env: dict[int, Any], plan: dict) -> None:
    """Execute TorchScript nodes, reading and writing values in `env` (value id -> Python value)."""
    for node in nodes:
        kind = node.kind()
        ins = [env[v.unique()] for v in node.inputs()]
        if kind == "prim::If":
            block = list(node.blocks())[0 if ins[0] else 1]
            _run(block.nodes(), env, plan)
            outs = [env[v.unique()] for v in block.outputs()]
        elif kind == "prim::Loop":
            (block,) = node.blocks()
            trips, go, outs = ins[0], ins[1], ins[2:]
            i = 0
            while go and i < trips:
                env.update({v.unique(): a for v, a in zip(block.inputs(), [i, *outs])})
                _run(block.nodes(), env, plan)
                go, *outs = [env[v.unique()] for v in block.outputs()]
                i += 1
        else:
            outs = _step(node, kind, ins, plan)
        env.update({v.unique(): a for v, a in zip(node.outputs(), outs)})


def _step(node: torch._C.Node, kind: str, ins: list[Any], plan: dict) -> list[Any]:
    if kind == "prim::Constant":
        return [plan[node]]
    if kind == "prim::GetAttr":
        owner, name = ins[0], node.s("name")
        return [owner._attribute(name) if isinstance(owner, ScriptLayer) else getattr(owner, name)]
    if kind == "prim::CallMethod":
        owner, method = ins[0], node.s("name")
        if isinstance(owner, ScriptLayer):
            return [owner(*ins[1:]) if method == "forward" else owner._call_method(method, ins[1:])]
        return [getattr(owner, method)(*ins[1:])]
    if kind == "prim::CallFunction":
        return [ins[0](*ins[1:])]
    if kind in ("prim::ListUnpack", "prim::TupleUnpack"):
        return list(ins[0])
    if kind == "prim::RaiseException":
        raise RuntimeError(f"the TorchScript model raised: {ins[0]}")
    if kind == "prim::ListConstruct":
        return [list(ins)]
    if kind == "prim::TupleConstruct":
        return [tuple(ins)]
    if kind == "prim::DictConstruct":
        return [dict(zip(ins[::2], ins[1::2]))]
    if kind == "prim::TupleIndex":
        return [ins[0][ins[1]]]
    if kind in ("prim::unchecked_cast", "prim::Uninitialized"):
        return [ins[0] if ins else None]
    op, positional, keywords = plan[node]
    result = op(*ins[:positional], **dict(zip(keywords, ins[positional:])))
    return list(result) if node.outputsSize() > 1 else [result]


def wrap_script(script: torch.jit.ScriptModule, cu: torch._C.CompilationUnit) -> ScriptLayer:
    """Wrap a scripted module in a `ScriptLayer` subclass named after its original class."""
    return named_class(ScriptLayer, str(script.original_name))(script, cu)


def load_script(path: Path) -> ScriptLayer:
    """Load a TorchScript file on the CPU and wrap it for hooks; refuse a file that does not load."""
    cu = torch._C.CompilationUnit()  # kept: the script's free functions are looked up in it
    try:
        script = wrap_cpp_module(torch._C.import_ir_module(cu, str(path), torch.device("cpu"), {}, False))
    except Exception as error:  # any failure of the TorchScript reader: a damaged or foreign file
        raise ValueError(f"{path} looks like a TorchScript file but does not load: {error}") from None
    return wrap_script(script, cu)
