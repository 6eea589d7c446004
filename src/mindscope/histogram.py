"""Exact histograms and moments of many tensors at once.

`histograms` counts each tensor's finite values exactly as numpy.histogram counts them in
float64 (edges from np.linspace, bins half-open but the last, values beyond an explicit range
in the end bins), and gives its moments. It is the engine under `weights.weight_histograms`,
which a training loop calls every few steps, so it is built to cost about what a plain loop of
torch.histc, mean, std, min and max costs (benchmarks/bench_recording.py measures both).

Two paths, by size, because a small tensor costs the calls made for it, a large one the passes
over its values:
- Small tensors (fewer than TINY values) are laid end to end in one float64 array on the host,
  and numpy bins them all at once by numpy.histogram's own arithmetic, reduced by segment: a
  few dozen calls for the whole model, however many tensors it has.
- Large tensors stay where they live (those of one size as the rows of a matrix) and are binned
  in their own float arithmetic. A value's bin is the integer part of its position,
  x * bins / width + offset, which is within `tau` (a few units in the last place) of its exact
  position: only a value within tau of an edge can land in the wrong bin. Such values are found
  by the fraction of their position, and compared with the edge itself (in float64 on the host;
  on a device with the edge rounded up to the tensor's dtype, which decides exactly as the
  float64 edge does). The counts are a bincount and stay on the device.
Per device one copy comes to the host: the large tensors' min, max, sums and near-zero counts,
and the small tensors' values. NaN and Inf are counted, never binned: a large tensor holding
them is redone on its finite values. Edges that are not evenly spaced, or a range too narrow
for the float bound, are searched (`torch.bucketize`, `np.searchsorted`) instead.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

TINY = 1 << 12  # tensors of fewer values are binned on the host, all together
BATCH = 1 << 16  # large tensors of one size and dtype are stacked as the rows of a matrix up to this many values
_LIMITS = {t: (torch.finfo(t).eps, torch.finfo(t).max) for t in (torch.float32, torch.float64)}

Moments = list[float]  # finite count, mean, std (ddof 0), min, max, L2 norm, near-zero count, NaN count
Result = tuple[Tensor, Tensor, Moments]  # counts (bins,) int64 and edges (bins + 1,) on the tensor's device


class _Spec(NamedTuple):
    bins: int
    span: tuple[float, float] | None  # first and last edge of every tensor (None: its own min, max)
    edges: np.ndarray | None  # uneven float64 edges shared by every tensor
    near_zero: float


@torch.no_grad()
def histograms(
    tensors: list[Tensor],
    *,
    bins: int,
    span: tuple[float, float] | None = None,
    edges: np.ndarray | None = None,
    near_zero: float = 0.0,
) -> list[Result]:
    """Per tensor: counts (bins,) int64 and edges (bins + 1,) float64 on its device, and its Moments.

    `span` (first, last edge) or increasing float64 `edges` apply to every tensor; by default each
    tensor's edges span its finite values (a constant one widened by 0.5 either side, as numpy).
    "Near zero" is |x| <= near_zero.
    """
    if edges is not None:
        bins = len(edges) - 1
        if np.array_equal(edges, np.linspace(edges[0], edges[-1], bins + 1)):  # evenly spaced: a span
            span, edges = (float(edges[0]), float(edges[-1])), None
    spec = _Spec(bins, None if span is None else (float(span[0]), float(span[1])), edges, near_zero)
    values = [t.reshape(-1) for t in tensors]  # (no autograd here)
    devices = [x.device for x in values]
    if len(set(devices)) < 2:  # (the usual case)
        return _on_device(values, spec) if values else []
    out: dict[int, Result] = {}
    for device in dict.fromkeys(devices):
        members = [i for i, d in enumerate(devices) if d == device]
        out.update(zip(members, _on_device([values[i] for i in members], spec)))
    return [out[i] for i in range(len(values))]


def _on_device(values: list[Tensor], spec: _Spec) -> list[Result]:
    """`histograms` of tensors on one device, with one copy to the host."""
    device, acc = values[0].device, _acc_dtype(values[0].device)
    sizes = [x.numel() for x in values]
    small = [i for i, n in enumerate(sizes) if n < TINY or not n]  # (an empty tensor has no min)
    batches = _batches(values, [i for i, n in enumerate(sizes) if n >= TINY and n])
    matrices = [_matrix([values[i] for i in members]) for members in batches]  # (R, m) each
    scratch = _Scratch(max((x.numel() for x in matrices), default=0), device)
    parts = [torch.stack(_row_sums(x, spec.near_zero, scratch), 1).view(-1) for x in matrices]
    parts += [values[i] for i in small]
    host = torch.cat(parts).to(acc).cpu().numpy().astype(np.float64, copy=False)
    large = [i for members in batches for i in members]
    sums, host = host[: 5 * len(large)].reshape(-1, 5), host[5 * len(large) :]  # (L, 5), small tensors' values
    counts, edges, moments = _small(host, np.array([sizes[i] for i in small], dtype=np.intp), spec)
    rows: dict[int, Moments] = dict(zip(small, moments.tolist()))
    rows.update(zip(large, (_moments(values[i], row) for i, row in zip(large, sums.tolist()))))

    finite = [all(_finite(*rows[i][3:5]) for i in members) for members in batches]
    binned = [i for members, ok in zip(batches, finite) if ok for i in members]
    if spec.edges is not None:
        large_edges = np.tile(spec.edges, (len(binned), 1))
    else:
        lo, hi = (np.array([rows[i][k] for i in binned], dtype=np.float64) for k in (3, 4))
        large_edges = _linspace(*_outer(lo, hi, spec.span), spec.bins)
    table = torch.from_numpy(np.concatenate([edges, large_edges])).to(device, acc, non_blocking=True)
    counts = torch.from_numpy(counts).to(device, non_blocking=True)
    out = dict(zip(small, zip(counts, table, [rows[i] for i in small])))
    start = 0
    for members, x in (pair for pair, ok in zip(zip(batches, matrices), finite) if ok):
        at = slice(start, start + len(members))
        found = zip(_bin_rows(x, large_edges[at], spec, scratch), table[len(small) :][at], [rows[i] for i in members])
        out.update(zip(members, found))
        start = at.stop
    redo = [i for members, ok in zip(batches, finite) if not ok for i in members]
    if redo:  # batches holding NaN or Inf: planned afresh on their finite values (now perhaps small or empty)
        kept = _on_device([values[i][torch.isfinite(values[i])] for i in redo], spec)
        for i, (counts_row, edges_row, moments_row) in zip(redo, kept):
            out[i] = (counts_row, edges_row, [*moments_row[:7], int(torch.isnan(values[i]).sum())])
    return [out[i] for i in range(len(values))]


def _moments(x: Tensor, sums: list[float]) -> Moments:
    """Moments of x from its `_row_sums`: the variance from the sums, or by a second pass where they cancel."""
    lo, hi, total, l2, near = sums
    n = x.numel()
    mean = total / n
    var = l2 * (l2 / n) - mean * mean  # (float ** raises on overflow; * gives inf)
    if lo == hi:
        mean, var = lo, 0.0
    elif not 16 * var >= mean * mean and _finite(lo, hi):  # cancelled (or overflowed)
        var = float(x.to(_acc_dtype(x.device)).var(correction=0))
    return [n, mean, math.sqrt(max(var, 0.0)), lo, hi, l2, near, 0]


def _batches(values: list[Tensor], chosen: list[int]) -> list[list[int]]:
    """The chosen tensors in batches of equal size and dtype, stacked while they are under BATCH values."""
    batches: list[list[int]] = []
    open_batch: dict[tuple[torch.dtype, int], list[int]] = {}
    for i in chosen:
        n = values[i].numel()
        members = open_batch.setdefault((values[i].dtype, n), [])
        if members and (len(members) + 1) * n > BATCH:
            batches.append(open_batch.pop((values[i].dtype, n)))
            members = open_batch.setdefault((values[i].dtype, n), [])
        members.append(i)
    return batches + list(open_batch.values())


def _matrix(tensors: list[Tensor]) -> Tensor:
    """(R, m): the tensors of equal size as rows, in the dtype their bins are computed in."""
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32  # float16, bfloat16: exact
    x = torch.stack(tensors) if len(tensors) > 1 else tensors[0].view(1, -1)
    return x.to(dtype)


class _Scratch:
    """Memory for the temporaries of large tensors, one allocation per dtype and call: fresh memory
    for every temporary costs a page fault per 4 KiB."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.size, self.device, self.memory = size, device, {}

    def like(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Uninitialised, of the shape of x (R, m) and of `dtype` (x's by default)."""
        dtype = dtype or x.dtype
        if dtype not in self.memory:
            self.memory[dtype] = torch.empty(self.size, dtype=dtype, device=self.device)
        return self.memory[dtype].as_strided(x.shape, (x.shape[1], 1))  # (R, m), contiguous, at the start


def _row_sums(x: Tensor, near_zero: float, scratch: _Scratch) -> list[Tensor]:
    """Per row of x (R, m): its min, max, sum, L2 norm and near-zero count, five (R,) on its device.

    The sum and the norm of a float64 copy (float32 on MPS: `sum(dtype=)` would copy anyway, into
    fresh memory); the count in x's dtype, exact below 2^24 values.
    """
    acc = _acc_dtype(x.device)
    xd = x if x.dtype == acc else scratch.like(x, acc).copy_(x)
    flags = torch.abs(x, out=scratch.like(x)).le_(_floor(near_zero, x.dtype))  # 0 or 1 (cheaper than a bool)
    near = flags.sum(1) if x.shape[1] < 2**24 else flags.sum(1, dtype=acc)
    return [x.amin(1), x.amax(1), xd.sum(1), torch.linalg.vector_norm(xd, dim=1), near]


def _small(x: np.ndarray, sizes: np.ndarray, spec: _Spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts (S, bins) int64, edges (S, bins + 1) and moments (S, 8) of S tensors laid end to end in x.

    x is float64 and exact. Bins by numpy.histogram's own arithmetic, or by searching where the
    float64 bound does not hold. A few dozen numpy calls, however many tensors.
    """
    count, bins = len(sizes), spec.bins
    nan = np.zeros(count)
    with np.errstate(all="ignore"):  # inf - inf, huge squares: what numpy itself would give
        lo, hi, total, squares, near = _segments(x, sizes, spec.near_zero)
        if not np.isfinite(squares).all():  # NaN or Inf (or a square past float64): counted, then dropped
            seg, finite = np.repeat(np.arange(count), sizes), np.isfinite(x)
            nan = np.bincount(seg[np.isnan(x)], minlength=count)
            sizes, x = np.bincount(seg[finite], minlength=count), x[finite]
            lo, hi, total, squares, near = _segments(x, sizes, spec.near_zero)
        n = np.maximum(sizes, 1)  # (an empty tensor's sums are 0)
        mean = total / n
        var = squares / n - mean * mean
        if not np.all(16 * var >= mean * mean):  # one pass cancelled: two
            var = _segments((x - np.repeat(mean, sizes)) ** 2, sizes, 0.0)[2] / n
        moments = np.array([sizes, mean, np.sqrt(var), lo, hi, np.sqrt(squares), near, nan]).T
        if spec.edges is not None:
            e = np.tile(spec.edges, (count, 1))
            k = np.searchsorted(spec.edges[1:-1], x, side="right") + np.repeat(np.arange(count) * (bins + 1), sizes)
        else:
            e = _linspace(*_outer(lo, hi, spec.span), bins)
            k = _bin_small(x, sizes, e, clip=spec.span is not None)
    return np.bincount(k, minlength=count * (bins + 1)).reshape(count, bins + 1)[:, :bins], e, moments


def _segments(x: np.ndarray, sizes: np.ndarray, near_zero: float) -> np.ndarray:
    """(5, S): min, max, sum, sum of squares and near-zero count of S tensors laid end to end in x (0 if empty)."""

    def reduce(starts: np.ndarray) -> list[np.ndarray]:
        sums = np.add.reduceat(np.stack([x, x * x, np.abs(x) <= near_zero]), starts, axis=1)
        return [np.minimum.reduceat(x, starts), np.maximum.reduceat(x, starts), *sums]

    live = sizes > 0
    if len(sizes) and live.all():  # (the usual case)
        return np.array(reduce(np.cumsum(sizes) - sizes))
    out = np.zeros((5, len(sizes)))
    if live.any():  # (reduceat cannot take an empty segment)
        out[:, live] = reduce((np.cumsum(sizes) - sizes)[live])
    return out


def _bin_small(x: np.ndarray, sizes: np.ndarray, edges: np.ndarray, *, clip: bool) -> np.ndarray:
    """(n,) flat bin of each value, tensor t's at t * (bins + 1).

    The bin is estimated from numpy.histogram's own arithmetic in float64, where the bound `_tau`
    shows the estimate within a bin of the truth, then set by comparing with the edges (which
    alone decide, as in numpy); elsewhere it is searched.
    """
    count, bins = edges.shape[0], edges.shape[1] - 1
    first, last = edges[:, 0], edges[:, -1]
    norm = bins / (last - first)
    tau = _tau((np.abs(first) + np.abs(last)) / (last - first), bins, 2.0**-52)
    searched = []
    if not (np.all(tau < 0.25) and np.isfinite(norm).all()):  # (rarely)
        searched = np.flatnonzero(~(np.isfinite(norm) & (tau < 0.25)))
        norm[searched] = 0.0  # (their estimate: bin 0)
    start, scale, base = np.repeat([first, norm, np.arange(0.0, count * (bins + 1), bins + 1)], sizes, 1)
    if clip:  # beyond the edges: the end bins
        x = np.clip(x, start, np.repeat(last, sizes))
    k = (np.minimum((x - start) * scale, bins - 1) + base).astype(np.intp)  # (n,) into the edges, flat
    compare = edges.copy()
    compare[:, -1] = np.inf  # the last bin is closed
    compare = compare.ravel()
    k -= x < compare[k]
    k += x >= compare[k + 1]
    ends = np.cumsum(sizes)
    for t in searched:
        at = slice(ends[t] - sizes[t], ends[t])
        k[at] = np.searchsorted(edges[t, 1:-1], x[at], side="right") + t * (bins + 1)
    return k


def _bin_rows(x: Tensor, edges: np.ndarray, spec: _Spec, scratch: _Scratch) -> Tensor:
    """Counts (R, bins) int64 of the finite rows of x (R, m) on their `edges` (R, bins + 1), on x's device.

    Row r's values fall in slots r * (bins + 2) + k, slot k holding bin k - 1; `bounds` (R, bins + 2)
    holds what a value in slot k is compared with: edge k - 1, except the first and the last edge,
    taken as -inf and inf, so that values beyond the edges go to the end bins and the last bin is
    closed. On the device the comparison is with the edge rounded up to x's dtype, which decides
    exactly as the edge does.
    """
    count, bins, stride = len(x), spec.bins, spec.bins + 2  # slots 0 and bins + 1 stay empty
    first, last = edges[:, 0], edges[:, -1]
    eps, big = _LIMITS[x.dtype]  # big: neither the scale nor x - first may overflow (Python floats give inf)
    tau = max(
        _tau((abs(a) + abs(b)) / (b - a), bins, eps, (count - 1) * stride)
        if bins / (b - a) < big and abs(a) + abs(b) < big
        else 1.0
        for a, b in zip(first.tolist(), last.tolist())
    )
    inf = np.full((count, 1), np.inf)
    bounds = np.concatenate([-inf, -inf, edges[:, 1:-1], inf], 1)
    if spec.edges is not None or tau >= 0.25:  # uneven edges, or a range too narrow for the bound: searched
        interior = torch.from_numpy(_ceil(bounds[:, 2:-1], x.dtype)).to(x.device, non_blocking=True)
        return torch.stack([_count(torch.bucketize(row, b, right=True), bins) for row, b in zip(x, interior)])
    scale = bins / (last - first)
    base = np.arange(count) * float(stride)  # each row's first slot
    offset = base + (1.0 - tau) - first * scale
    if count == 1:  # Python numbers: rounded to x's dtype in the kernel
        t = torch.mul(x, float(scale[0]), out=scratch.like(x)).add_(float(offset[0]))  # (1, m) 1 + position - tau
        if spec.span is not None:  # values beyond the outer edges: into the end bins, slots 1 and bins
            t.clamp_(1.0, bins + 1.0 - 4 * tau)
    else:  # each row's numbers, rounded to x's dtype by numpy as by torch
        params = np.array([scale, offset, base + 1.0, base + (bins + 1.0 - 4 * tau)])[:, :, None]
        params = torch.from_numpy(params.astype(np.float64 if x.dtype == torch.float64 else np.float32))
        scale_r, offset_r, low, high = params.to(x.device, non_blocking=True).unbind()  # (R, 1) each
        t = torch.mul(x, scale_r, out=scratch.like(x)).add_(offset_r)  # (R, m)
        if spec.span is not None:
            t.clamp_(low, high)
    # A value's slot is that of position - tau, or the next one if its position is within tau of the
    # edge between them (past 1 - 2 tau in its slot): then it is compared with the edge. Without a
    # span the outer edges are the min and the max, so slots lie in 0 .. bins of the row (tau is
    # twice the bound): a value in slot 0 is near slot 1, whose edge is -inf.
    slots = scratch.like(t, torch.int32).copy_(t)  # (truncated)
    near = t.frac_().ge_(1.0 - 3.0 * tau)  # 0 or 1, in place (margin for the rounding of 1 - 2 tau)
    counts = _count(slots.view(-1), count * stride)
    if _host(x.device):  # a few values in 10^4: pick them out, with numpy on the tensors' memory
        at = np.flatnonzero(near.numpy().ravel() > 0)
        up = slots.numpy().ravel()[at] + 1
        up = up[x.numpy().ravel()[at] >= bounds.ravel()[up]]  # (in float64: exact)
        np.add.at(counts.numpy(), up, 1)
        np.add.at(counts.numpy(), up - 1, -1)
    else:  # every value, masked: picking them out would wait for the device
        up = slots.view(-1).long() + 1
        ceil = torch.from_numpy(_ceil(bounds, x.dtype).ravel()).to(x.device, non_blocking=True)
        moved = ((x.view(-1) >= ceil[up]) & (near.view(-1) > 0)).long()
        counts.index_add_(0, up, moved).index_add_(0, up - 1, -moved)
    return counts.view(count, stride)[:, 1:-1]


def _tau(ratio, bins: int, eps: float, base: float = 0.0):
    """A bound, in bins, on how far a computed position of a value can lie from its exact position,
    for edges first .. last with ratio = (|first| + |last|) / (last - first) (a number or an array),
    the position counted from `base` (a row's first slot).

    The position is fl(fl(x * fl(scale)) + fl(offset)): each rounding is within eps / 2 of its
    result, at most (|first| + |last|) * scale + base + bins + 2 in size; and numpy's float64 edges
    are off the exact ones by a few float64 roundings of the larger of |first| and |last|. Doubled,
    for margin. (numpy's own fl(fl(x - first) * fl(bins / width)) is within the same bound.)
    """
    return 2 * (eps / 2 * (2 * bins + 5 + 2 * base + 3 * bins * ratio) + 2**-53 * bins * (3 + ratio))


def _linspace(first: np.ndarray, last: np.ndarray, bins: int) -> np.ndarray:
    """(N, bins + 1): np.linspace(first[k], last[k], bins + 1) for each k, the edges numpy.histogram uses."""
    step = (last - first) / bins
    if np.all(step != 0):  # numpy's arithmetic, row by row (a zero step, a subnormal range, it does apart)
        e = np.arange(bins + 1) * step[:, None] + first[:, None]
        e[:, -1] = last
        return e
    return np.array([np.linspace(a, b, bins + 1) for a, b in zip(first, last)]).reshape(len(first), bins + 1)


def _outer(lo, hi, span: tuple[float, float] | None):
    """First and last edge as numpy.histogram picks them: a constant widened by 0.5 either side.
    Takes numbers or arrays of them."""
    if span is not None:
        return (np.full_like(lo, span[0]), np.full_like(hi, span[1])) if isinstance(lo, np.ndarray) else span
    constant = lo == hi
    return lo - 0.5 * constant, hi + 0.5 * constant


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _ceil(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The least numbers of `dtype` >= values: for x of that dtype, x >= ceil exactly when x >= value."""
    if dtype == torch.float64:
        return values
    c = values.astype(np.float32)
    return np.where(c < values, np.nextafter(c, np.float32(np.inf)), c)


def _finite(*numbers: float) -> bool:
    return all(math.isfinite(v) for v in numbers)


def _floor(value: float, dtype: torch.dtype) -> float:
    """The largest number of `dtype` <= value: for x of that dtype, x <= it exactly when x <= value."""
    if dtype == torch.float64:
        return value
    f = np.float32(value)
    return float(f) if float(f) <= value else float(np.nextafter(f, np.float32(-np.inf)))  # (compared in float64)


def _count(slots: Tensor, size: int) -> Tensor:
    """(size,): how many of slots (n,) hold each value."""
    if slots.device.type == "cpu":
        return torch.bincount(slots, minlength=size)
    ones = torch.ones(1, dtype=torch.int64, device=slots.device).expand(slots.numel())
    return torch.zeros(size, dtype=torch.int64, device=slots.device).index_add_(0, slots.int(), ones)  # no host wait


def _host(device: torch.device) -> bool:
    """Whether the values near an edge are picked out on the host (numpy on the tensor's memory)
    rather than masked on the device."""
    return device.type == "cpu"
