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
from typing import Any, NamedTuple

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


class _Op(NamedTuple):
    """One TorchScript node, ready to run: value ids in and out, and what it calls or holds."""

    kind: str
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    payload: Any  # a constant, a function, an attribute or method name, or (operator, positional count, keywords)
    blocks: tuple[_Block, ...]


class _Block(NamedTuple):
    """A graph or a block of an if or a loop: its ops, and the value ids it takes and returns."""

    ops: tuple[_Op, ...]
    ins: tuple[int, ...]
    outs: tuple[int, ...]


def _ids(values: Iterable[torch._C.Value]) -> tuple[int, ...]:
    return tuple(v.unique() for v in values)


def _compile(block: Any, cu: torch._C.CompilationUnit) -> _Block | None:
    """Turn a graph or block into `_Op`s; None if some node cannot be run here."""
    ops = []
    for node in block.nodes():
        kind, payload = node.kind(), None
        if kind == "prim::Constant":
            out = node.output()
            if out.type().kind() == "FunctionType":
                qualified = str(out.type())
                payload = cu.find_function(qualified.removeprefix("__torch__.")) or cu.find_function(qualified)
                if payload is None:
                    return None
            else:
                payload = out.toIValue()
        elif kind in ("prim::GetAttr", "prim::CallMethod"):
            payload = node.s("name")
        elif kind not in _STRUCTURE:
            payload = _operator(node)
            if payload is None:
                return None
        blocks = tuple(_compile(b, cu) for b in node.blocks())
        if any(b is None for b in blocks):
            return None
        ops.append(_Op(kind, _ids(node.inputs()), _ids(node.outputs()), payload, blocks))
    return _Block(tuple(ops), _ids(block.inputs()), _ids(block.outputs()))


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
            self._plans[method] = _compile(graph, self._cu) if self._modules else None
        program = self._plans[method]
        if program is None:  # no children to reach, or a node the interpreter does not know
            if self._script.training != self.training:
                self._script.train(self.training)
            return getattr(self._script, method)(*args)
        env = dict(zip(program.ins, [self, *args]))
        _run(program, env)
        outputs = [env[i] for i in program.outs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _run(block: _Block, env: dict[int, Any]) -> None:
    """Execute a block's ops, reading and writing values in `env` (value id -> Python value)."""
    for op in block.ops:
        ins = [env[i] for i in op.ins]
        if op.kind == "prim::If":
            branch = op.blocks[0 if ins[0] else 1]
            _run(branch, env)
            outs = [env[i] for i in branch.outs]
        elif op.kind == "prim::Loop":
            (body,) = op.blocks
            trips, go, outs = ins[0], ins[1], ins[2:]
            i = 0
            while go and i < trips:
                env.update(zip(body.ins, [i, *outs]))
                _run(body, env)
                go, *outs = [env[v] for v in body.outs]
                i += 1
        else:
            outs = _step(op, ins)
        env.update(zip(op.outs, outs))


def _step(op: _Op, ins: list[Any]) -> list[Any]:
    kind = op.kind
    if kind == "prim::Constant":
        return [op.payload]
    if kind == "prim::GetAttr":
        owner = ins[0]
        return [owner._attribute(op.payload) if isinstance(owner, ScriptLayer) else getattr(owner, op.payload)]
    if kind == "prim::CallMethod":
        owner, method = ins[0], op.payload
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
    function, positional, keywords = op.payload
    result = function(*ins[:positional], **dict(zip(keywords, ins[positional:])))
    return list(result) if len(op.outs) > 1 else [result]


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
