"""ONNX operators without weights, as torch functions wrapped in modules named after the operator.

Shapes, axes and pads that ONNX passes as tensors are read when the model runs, so shape
arithmetic (Shape -> Gather -> Concat -> Reshape) works for any batch size. Each function
follows the operator's definition in the ONNX specification, including the numpy-style
clamping of Slice and the row-wise Softmax of opsets before 13.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mindscope.models.naming import named_class

__all__ = ["FUNCTIONS", "KINDS", "Function", "gemm", "pad", "same_pad", "softmax"]


def _ints(t: Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


class Function(nn.Module):
    """An operator without weights: `fn(*inputs, **attributes)`."""

    def __init__(self, fn: Callable[..., Any], **attributes: Any) -> None:
        super().__init__()
        self.fn, self.attributes = fn, attributes

    def forward(self, *inputs: Any) -> Any:
        return self.fn(*inputs, **self.attributes)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.attributes.items())


def _divide(a: Tensor, b: Tensor) -> Tensor:
    exact = a.is_floating_point() or b.is_floating_point()
    return torch.div(a, b) if exact else torch.div(a, b, rounding_mode="trunc")


def softmax(x: Tensor, *, axis: int, legacy: bool, log: bool) -> Tensor:
    fn = torch.log_softmax if log else torch.softmax
    if not legacy:
        return fn(x, dim=axis)
    axis = axis % x.dim()  # before opset 13: flatten to 2-D at axis, then normalise each row
    return fn(x.reshape(math.prod(x.shape[:axis]), -1), dim=1).reshape(x.shape)


def _reshape(x: Tensor, shape: Tensor, *, allowzero: int) -> Tensor:
    dims = _ints(shape) or []
    if not allowzero:  # 0 copies the input's size on that axis
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _flatten(x: Tensor, *, axis: int) -> Tensor:
    axis = axis % x.dim() if x.dim() else 0
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _gather(data: Tensor, indices: Tensor, *, axis: int) -> Tensor:
    axis = axis % data.dim()
    index = indices.long() % data.shape[axis]  # negative indices count from the end
    picked = data.index_select(axis, index.reshape(-1))
    return picked.reshape((*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]))


def _slice(x: Tensor, starts: Tensor, ends: Tensor, axes: Tensor | None = None, steps: Tensor | None = None) -> Tensor:
    begin, end = _ints(starts) or [], _ints(ends) or []
    axes_ = _ints(axes) or list(range(len(begin)))
    steps_ = _ints(steps) or [1] * len(begin)
    for b, e, a, s in zip(begin, end, axes_, steps_):
        index = range(*slice(b, e, s).indices(x.shape[a]))  # numpy's clamping, as ONNX specifies
        x = x.index_select(a, torch.tensor(index, dtype=torch.long, device=x.device))
    return x


def pad(
    x: Tensor,
    pads: Tensor | Sequence[int],
    value: Tensor | float | None = None,
    axes: Tensor | None = None,
    *,
    mode: str = "constant",
) -> Tensor:
    """ONNX Pad: `pads` lists every axis's begin pads, then every axis's end pads."""
    pads_ = _ints(pads) if isinstance(pads, Tensor) else list(pads)
    axes_ = [a % x.dim() for a in _ints(axes) or []] if axes is not None else list(range(x.dim()))
    n = len(axes_)
    per_axis = {a: (pads_[i], pads_[i + n]) for i, a in enumerate(axes_)}
    first = min((a for a, pair in per_axis.items() if any(pair)), default=x.dim())
    torch_pads: list[int] = []
    for a in range(x.dim() - 1, first - 1, -1):  # F.pad wants the last axis first
        torch_pads += per_axis.get(a, (0, 0))
    fill = float(value) if value is not None and (not isinstance(value, Tensor) or value.numel()) else 0.0
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    return F.pad(x, torch_pads, mode=torch_mode, value=fill if torch_mode == "constant" else None)


def same_pad(
    x: Tensor, *, kernel: list[int], strides: list[int], dilations: list[int], upper: bool, value: float
) -> Tensor:
    """Pad the spatial axes as auto_pad SAME_UPPER / SAME_LOWER asks: output size ceil(input / stride)."""
    begin, end = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if upper else large)
        end.append(large if upper else small)
    return pad(x, [0, 0, *begin, 0, 0, *end], value)


def _clip(x: Tensor, low: Tensor | None = None, high: Tensor | None = None, **bounds: float) -> Tensor:
    low_ = bounds.get("min") if low is None else float(low)
    high_ = bounds.get("max") if high is None else float(high)
    return torch.clamp(x, low_, high_)


def _reduce(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def reduce(
        x: Tensor,
        axes: Tensor | None = None,
        *,
        keepdims: int = 1,
        noop: int = 0,
        attribute_axes: list[int] | None = None,
    ) -> Tensor:
        dims = _ints(axes) if axes is not None else attribute_axes
        if not dims:
            if noop:
                return x
            dims = list(range(x.dim()))
        return fn(x, dim=dims, keepdim=bool(keepdims))

    return reduce


def _amax(x: Tensor, *, dim: list[int], keepdim: bool) -> Tensor:
    return torch.amax(x, dim=dim, keepdim=keepdim)


def _squeeze(x: Tensor, axes: Tensor | None = None, *, attribute_axes: list[int] | None = None) -> Tensor:
    dims = _ints(axes) if axes is not None else attribute_axes
    if dims is None:
        return x.squeeze()
    return x.squeeze([d % x.dim() for d in dims])


def _unsqueeze(x: Tensor, axes: Tensor | None = None, *, attribute_axes: list[int] | None = None) -> Tensor:
    dims = _ints(axes) if axes is not None else attribute_axes or []
    rank = x.dim() + len(dims)
    for d in sorted(d % rank for d in dims):
        x = x.unsqueeze(d)
    return x


def _shape(x: Tensor, *, start: int = 0, end: int | None = None) -> Tensor:
    return torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)


def _constant_of_shape(shape: Tensor, *, value: Tensor | None = None) -> Tensor:
    fill = torch.zeros(1) if value is None else value.reshape(-1)
    return torch.full(_ints(shape) or [], fill[0].item(), dtype=fill.dtype, device=shape.device)


def _cast(x: Tensor, *, dtype: torch.dtype) -> Tensor:
    return x.to(dtype)


def gemm(a: Tensor, b: Tensor, c: Tensor | None = None, *, alpha: float, beta: float, ta: int, tb: int) -> Tensor:
    """ONNX Gemm: alpha * A' B' + beta * C, for a Gemm whose B is not a constant."""
    out = alpha * ((a.T if ta else a) @ (b.T if tb else b))
    return out if c is None else out + beta * c


def _hard_sigmoid(x: Tensor, *, alpha: float, beta: float) -> Tensor:
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


def _global_pool(fn: Callable[..., Tensor]) -> Callable[[Tensor], Tensor]:
    def pool(x: Tensor) -> Tensor:
        return fn(x, dim=list(range(2, x.dim())), keepdim=True)

    return pool


def _transpose(x: Tensor, *, perm: list[int] | None) -> Tensor:
    return x.permute(perm or list(range(x.dim()))[::-1])


def _concat(*xs: Tensor, axis: int) -> Tensor:
    return torch.cat(xs, dim=axis)


# ONNX elem types -> torch dtypes; float16 and float64 are computed in float32.
_DTYPES = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float32,
    11: torch.float32,
}


def _axes(a: dict) -> dict:
    return {"attribute_axes": a["axes"]} if "axes" in a else {}


def _reduction(a: dict, opset: int) -> dict:
    return {"keepdims": a.get("keepdims", 1), "noop": a.get("noop_with_empty_axes", 0), **_axes(a)}


def _softmax_axis(a: dict, opset: int, log: bool) -> dict:
    return {"axis": a.get("axis", -1 if opset >= 13 else 1), "legacy": opset < 13, "log": log}


def _pad_attributes(a: dict, opset: int) -> dict:
    before_11 = {"pads": a["pads"], "value": a.get("value", 0.0)} if opset < 11 else {}
    return {**before_11, "mode": a.get("mode", b"constant").decode()}


# ONNX operator -> (function, its keyword arguments from the node's attributes and the opset).
FUNCTIONS: dict[str, tuple[Callable[..., Any], Callable[[dict, int], dict] | None]] = {
    "Add": (torch.add, None),
    "Sub": (torch.sub, None),
    "Mul": (torch.mul, None),
    "Div": (_divide, None),
    "Pow": (torch.pow, None),
    "Sqrt": (torch.sqrt, None),
    "Exp": (torch.exp, None),
    "Log": (torch.log, None),
    "Neg": (torch.neg, None),
    "Abs": (torch.abs, None),
    "Erf": (torch.erf, None),
    "Reciprocal": (torch.reciprocal, None),
    "MatMul": (torch.matmul, None),
    "HardSigmoid": (_hard_sigmoid, lambda a, o: {"alpha": a.get("alpha", 0.2), "beta": a.get("beta", 0.5)}),
    "Softmax": (softmax, lambda a, o: _softmax_axis(a, o, log=False)),
    "LogSoftmax": (softmax, lambda a, o: _softmax_axis(a, o, log=True)),
    "Clip": (_clip, lambda a, o: {k: a[k] for k in ("min", "max") if k in a}),
    "GlobalAveragePool": (_global_pool(torch.mean), None),
    "GlobalMaxPool": (_global_pool(_amax), None),
    "Flatten": (_flatten, lambda a, o: {"axis": a.get("axis", 1)}),
    "Reshape": (_reshape, lambda a, o: {"allowzero": a.get("allowzero", 0)}),
    "Transpose": (_transpose, lambda a, o: {"perm": a.get("perm")}),
    "Concat": (_concat, lambda a, o: {"axis": a["axis"]}),
    "Pad": (pad, _pad_attributes),
    "ReduceMean": (_reduce(torch.mean), _reduction),
    "ReduceSum": (_reduce(torch.sum), _reduction),
    "ReduceMax": (_reduce(_amax), _reduction),
    "Squeeze": (_squeeze, lambda a, o: _axes(a)),
    "Unsqueeze": (_unsqueeze, lambda a, o: _axes(a)),
    "Shape": (_shape, lambda a, o: {"start": a.get("start", 0), "end": a.get("end")}),
    "Gather": (_gather, lambda a, o: {"axis": a.get("axis", 0)}),
    "Slice": (_slice, None),
    "ConstantOfShape": (_constant_of_shape, lambda a, o: {k: a[k] for k in ("value",) if k in a}),
    "Cast": (_cast, lambda a, o: {"dtype": _DTYPES.get(a["to"], torch.float32)}),
}

# A class per weightless operator, made once, so that layer listings say 'Add', 'Reshape', ...
KINDS: dict[str, type[Function]] = {name: named_class(Function, name) for name in (*FUNCTIONS, "Gemm")}
