"""ONNX nodes as torch modules: `build` turns one node into the module(s) that compute it.

Where torch has the layer, the node becomes that layer, holding the node's weights as its
parameters: Conv -> `nn.Conv2d` (1-D and 3-D alike), ConvTranspose -> `nn.ConvTranspose2d`,
Gemm and MatMul by a constant -> `nn.Linear`, MaxPool/AveragePool -> `nn.MaxPool2d`/`nn.AvgPool2d`,
Relu -> `nn.ReLU` and the other activations likewise. Layer numbers, saturation rules and
weight listings then work as on a torch network. Operators without weights are
`onnx_functions`. Padding torch's layers cannot express (asymmetric pads, auto_pad SAME)
becomes a Pad step of its own, named `<node>_pad`, run just before the layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mindscope.models.onnx_functions import FUNCTIONS, KINDS, gemm, pad, same_pad

__all__ = ["SUPPORTED", "Step", "Unsupported", "build"]


class Unsupported(Exception):
    """A node this converter cannot express; the caller names the node."""


class Step(NamedTuple):
    """One module of the converted graph: its name suffix, the module, and its tensor names in and out."""

    suffix: str  # "" for the node's own module; "_pad" for a padding step put before it
    module: nn.Module
    inputs: list[str]  # "" marks an optional input that is absent
    outputs: list[str]


Node = Any  # onnx.NodeProto; typed loosely so that this module imports without onnx
Consts = dict[str, Tensor]


def _load(layer: nn.Module, weight: Tensor, bias: Tensor | None) -> None:
    with torch.no_grad():
        layer.weight.copy_(weight.reshape(layer.weight.shape))
        if bias is not None:
            layer.bias.copy_(bias.reshape(layer.bias.shape))


def _pads(node: Node, a: dict, spatial: int, kernel: list[int], value: float) -> tuple[list[int], Step | None]:
    """Symmetric pads for the torch layer, or zero pads and a padding step to run first."""
    auto = a.get("auto_pad", b"NOTSET").decode()
    strides, dilations = a.get("strides", [1] * spatial), a.get("dilations", [1] * spatial)
    out = node.input[0] + "#padded"
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        attrs = {"kernel": kernel, "strides": strides, "dilations": dilations, "upper": auto == "SAME_UPPER"}
        return [0] * spatial, Step("_pad", KINDS["Pad"](same_pad, value=value, **attrs), [node.input[0]], [out])
    pads = [0] * (2 * spatial) if auto == "VALID" else list(a.get("pads", [0] * (2 * spatial)))
    if pads[:spatial] == pads[spatial:]:
        return pads[:spatial], None
    both = [0, 0, *pads[:spatial], 0, 0, *pads[spatial:]]
    return [0] * spatial, Step("_pad", KINDS["Pad"](pad, pads=both, value=value), [node.input[0]], [out])


def _with_pad(pad_step: Step | None, layer: nn.Module, node: Node) -> list[Step]:
    source = node.input[0] if pad_step is None else pad_step.outputs[0]
    return ([pad_step] if pad_step else []) + [Step("", layer, [source], list(node.output)[:1])]


def _conv(node: Node, a: dict, c: Consts) -> list[Step]:
    weight = c.get(node.input[1])
    bias = c.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if weight is None or weight.dim() not in (3, 4, 5):
        raise Unsupported("a convolution whose kernel is not a constant 1-, 2- or 3-D tensor")
    spatial, transposed = weight.dim() - 2, node.op_type == "ConvTranspose"
    kernel, groups = list(weight.shape[2:]), a.get("group", 1)
    pads, pad_step = _pads(node, a, spatial, kernel, 0.0)
    if transposed and (pad_step is not None or "output_shape" in a):
        raise Unsupported("a ConvTranspose with asymmetric pads, auto_pad or output_shape")
    options = {"stride": a.get("strides", 1), "padding": pads, "dilation": a.get("dilations", 1), "groups": groups}
    if transposed:
        kind = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[spatial - 1]
        channels = (weight.shape[0], weight.shape[1] * groups)
        options["output_padding"] = a.get("output_padding", [0] * spatial)
    else:
        kind = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[spatial - 1]
        channels = (weight.shape[1] * groups, weight.shape[0])
    layer = kind(*channels, kernel, bias=bias is not None, **options)
    _load(layer, weight, bias)
    return _with_pad(pad_step, layer, node)


def _pool(node: Node, a: dict, c: Consts) -> list[Step]:
    kernel = list(a["kernel_shape"])
    spatial, is_max = len(kernel), node.op_type == "MaxPool"
    include_pad = bool(a.get("count_include_pad", 0))
    pads, pad_step = _pads(node, a, spatial, kernel, -math.inf if is_max else 0.0)  # -inf never wins a max
    if pad_step is not None and not (is_max or include_pad):
        raise Unsupported("an AveragePool with asymmetric or SAME pads that it leaves out of the count")
    if any(p > k // 2 for p, k in zip(pads, kernel)):
        raise Unsupported("pooling pads larger than half the kernel")
    options = {"stride": a.get("strides", kernel), "padding": pads, "ceil_mode": bool(a.get("ceil_mode", 0))}
    if is_max:
        layer = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[spatial - 1](
            kernel, dilation=a.get("dilations", 1), **options
        )
    else:
        layer = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[spatial - 1](
            kernel, count_include_pad=include_pad, **options
        )
    return _with_pad(pad_step, layer, node)


def _gemm(node: Node, a: dict, c: Consts) -> list[Step]:
    b = c.get(node.input[1])
    has_c = len(node.input) > 2 and bool(node.input[2])
    bias = c.get(node.input[2]) if has_c else None
    alpha, beta, ta, tb = a.get("alpha", 1.0), a.get("beta", 1.0), a.get("transA", 0), a.get("transB", 0)
    if b is None or ta or b.dim() != 2 or (has_c and bias is None):  # not a dense layer with constant weights
        attrs = {"alpha": alpha, "beta": beta, "ta": ta, "tb": tb}
        return [Step("", KINDS["Gemm"](gemm, **attrs), list(node.input), list(node.output))]
    weight = alpha * (b if tb else b.T)  # (out, in), as nn.Linear keeps it
    if bias is not None:
        bias = (beta * bias).expand(weight.shape[0]).clone()
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    _load(layer, weight, bias)
    return [Step("", layer, [node.input[0]], list(node.output))]


def _matmul(node: Node, a: dict, c: Consts) -> list[Step]:
    b = c.get(node.input[1])
    if b is None or b.dim() != 2 or node.input[0] in c:
        return [Step("", KINDS["MatMul"](torch.matmul), list(node.input), list(node.output))]
    layer = nn.Linear(b.shape[0], b.shape[1], bias=False)
    _load(layer, b.T, None)
    return [Step("", layer, [node.input[0]], list(node.output))]


class BatchNormalization(nn.Module):
    """Inference-mode batch normalisation over axis 1, with the node's scale, bias, mean and variance."""

    def __init__(self, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(scale.clone()), nn.Parameter(bias.clone())
        self.register_buffer("running_mean", mean.clone())
        self.register_buffer("running_var", var.clone())
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def _batch_norm(node: Node, a: dict, c: Consts) -> list[Step]:
    tensors = [c.get(name) for name in node.input[1:5]]
    if len(tensors) != 4 or any(t is None for t in tensors):
        raise Unsupported("a BatchNormalization whose scale, bias, mean or variance is not a constant")
    layer = BatchNormalization(*tensors, eps=a.get("epsilon", 1e-5))
    return [Step("", layer, [node.input[0]], list(node.output)[:1])]


# ONNX operator -> the torch layer that computes it, made from the node's attributes.
LAYERS: dict[str, Callable[[dict], nn.Module]] = {
    "Relu": lambda a: nn.ReLU(),
    "LeakyRelu": lambda a: nn.LeakyReLU(a.get("alpha", 0.01)),
    "Elu": lambda a: nn.ELU(a.get("alpha", 1.0)),
    "Selu": lambda a: nn.SELU(),
    "Sigmoid": lambda a: nn.Sigmoid(),
    "Tanh": lambda a: nn.Tanh(),
    "Softplus": lambda a: nn.Softplus(),
    "HardSwish": lambda a: nn.Hardswish(),
    "Gelu": lambda a: nn.GELU(approximate=a.get("approximate", b"none").decode()),
    "Identity": lambda a: nn.Identity(),
    "Dropout": lambda a: nn.Identity(),  # inference: the data passes unchanged
}

# Operators whose constant weights become a torch layer's parameters.
WEIGHTED: dict[str, Callable[[Node, dict, Consts], list[Step]]] = {
    "Conv": _conv,
    "ConvTranspose": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batch_norm,
    "MaxPool": _pool,
    "AveragePool": _pool,
}

SUPPORTED = sorted({*LAYERS, *FUNCTIONS, *WEIGHTED, "Constant"})


def build(node: Node, a: dict, c: Consts, opset: int) -> list[Step]:
    """Turn one ONNX node into the steps that compute it; raise `Unsupported` where this converter cannot."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or op not in SUPPORTED or op == "Constant":
        raise Unsupported(f"operator {op!r}" + (f" of domain {node.domain!r}" if node.domain else ""))
    if op in WEIGHTED:
        return WEIGHTED[op](node, a, c)
    inputs, outputs = list(node.input), list(node.output)[:1]
    if op in LAYERS:
        return [Step("", LAYERS[op](a), inputs[:1], outputs)]
    fn, attributes = FUNCTIONS[op]
    return [Step("", KINDS[op](fn, **(attributes(a, opset) if attributes else {})), inputs, outputs)]
