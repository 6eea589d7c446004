"""Exact histograms and moments of many tensors at once, computed where the tensors live.

`histograms` counts each tensor's finite values exactly as numpy.histogram counts them in
float64: edges from np.linspace, bins half-open but the last, values beyond an explicit range
in the end bins. It is the engine under `weights.weight_histograms`, cheap enough for a
training loop to call every few steps:

- one pass of whole-tensor reductions per large tensor (small ones are laid end to end and
  reduced by segment), then one copy of five numbers per tensor to the host, per device;
- a value's bin is the integer part of its position (x - first edge) * bins / width, computed
  in the tensor's own float arithmetic, which is within `tau` (a few units in the last place)
  of the exact position. Only values within tau of an edge can land in the wrong bin: they are
  found by truncating position - tau and position + tau, and compared with the edge itself
  (the least number of the tensor's dtype >= the float64 edge, which decides exactly as it does);
- the counts are a bincount of small integer slots, and stay on the device.
NaN and Inf are counted, never binned: a tensor holding them is redone on its finite values.
Edges that are not evenly spaced, or a range too narrow for the float bound, are searched
(`torch.bucketize`) instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

SMALL = 1 << 14  # tensors with fewer elements are histogrammed together, end to end ...
BATCH_ELEMENTS = 1 << 20  # ... at most this many elements a batch

Moments = list[float]  # finite count, mean, std (ddof 0), min, max, L2 norm, near-zero count, NaN count


def histograms(
    tensors: list[Tensor],
    *,
    bins: int,
    span: tuple[float, float] | None = None,
    edges: np.ndarray | None = None,
    near_zero: float = 0.0,
) -> list[tuple[Tensor, Tensor, Moments]]:
    """Per tensor: counts (bins,) int64 and edges (bins + 1,) float64 on its device, and its Moments.

    `span` (first, last edge) or increasing float64 `edges` apply to every tensor; by default each
    tensor's edges span its finite values (a constant one widened by 0.5 either side, as numpy).
    "Near zero" is |x| <= near_zero.
    """
    if edges is not None:
        bins = len(edges) - 1
        if np.array_equal(edges, np.linspace(edges[0], edges[-1], bins + 1)):  # evenly spaced: a span
            span, edges = (float(edges[0]), float(edges[-1])), None
    values = [t.detach().reshape(-1) for t in tensors]
    nans = [0] * len(values)
    plans: dict[int, tuple[float, float, float | None, Moments]] = {}  # first and last edge, tau, moments
    pending, filtered = [i for i, x in enumerate(values) if x.numel()], set()
    while pending:  # a second round only for tensors holding NaN or Inf, on their finite values
        retry = []
        for i, (lo, hi, total, l2, near) in _moments(values, pending, near_zero).items():
            x = values[i]
            if not (math.isfinite(total) or i in filtered):  # (float64 sums can overflow, finite values or not)
                nans[i], values[i] = int(torch.isnan(x).sum()), x[torch.isfinite(x)]
                filtered.add(i)
                retry += [i] if values[i].numel() else []
                continue
            n, (a, b) = x.numel(), _outer(lo, hi, span) if edges is None else (edges[0], edges[-1])
            tau = 8 * torch.finfo(_work_dtype(x)).eps * (bins + 2 + bins * (abs(a) + abs(b)) / (b - a)) if b > a else 1
            big = torch.finfo(_work_dtype(x)).max  # neither x - first edge nor the scale may overflow
            even = edges is None and tau < 0.25 and abs(a) + abs(b) < big and bins / (b - a) < big
            mean = total / n if lo < hi else lo
            var = l2 * l2 / n - mean * mean if lo < hi else 0.0  # (float ** raises on overflow; * gives inf)
            if lo < hi and not var >= 4 * mean * mean:  # sum of squares - n mean^2 would cancel: two passes
                var = float(x.to(_acc_dtype(x.device)).var(correction=0))
            plans[i] = (a, b, tau if even else None, [n, mean, math.sqrt(var), lo, hi, l2, near, nans[i]])
        pending = retry
    out: dict[int, tuple[Tensor, Tensor, Moments]] = {}
    fast = [i for i in plans if plans[i][2] is not None]
    for batch in _batches(values, fast) + [[i] for i in plans if plans[i][2] is None]:
        first, last = (np.array([plans[i][k] for i in batch]) for k in (0, 1))
        e = np.linspace(first, last, bins + 1, axis=-1) if edges is None else edges[None]  # numpy's own edges
        x = _flat([values[i] for i in batch])
        tau = None if plans[batch[0]][2] is None else max(plans[i][2] for i in batch)
        counts = _bin(x, [values[i].numel() for i in batch], e, tau, span is not None)
        device_edges = torch.from_numpy(np.ascontiguousarray(e)).to(x.device, _acc_dtype(x.device), non_blocking=True)
        out.update({i: (c, row, plans[i][3]) for i, c, row in zip(batch, counts, device_edges)})
    for i, x in enumerate(values):
        if i not in out:  # nothing finite
            e = edges if edges is not None else np.linspace(*_outer(0.0, 0.0, span), bins + 1)
            zeros = torch.zeros(bins, dtype=torch.int64, device=x.device)
            out[i] = (zeros, torch.from_numpy(e).to(x.device, _acc_dtype(x.device)), [0] * 7 + [nans[i]])
    return [out[i] for i in sorted(out)]


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32  # float16, bfloat16: exact in float32


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _ceil(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The least numbers of `dtype` >= values: for x of that dtype, x >= ceil exactly when x >= value."""
    if dtype == torch.float64:
        return values
    c = values.astype(np.float32)
    return np.where(c < values, np.nextafter(c, np.float32(np.inf)), c)


def _outer(lo: float, hi: float, span: tuple[float, float] | None) -> tuple[float, float]:
    """First and last edge as numpy.histogram picks them: a constant widened by 0.5 either side."""
    if span is not None:
        return float(span[0]), float(span[1])
    return (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)


def _count(slots: Tensor, size: int) -> Tensor:
    if slots.device.type == "cpu":
        return torch.bincount(slots, minlength=size)
    ones = torch.ones(1, dtype=torch.int64, device=slots.device).expand(slots.numel())
    return torch.zeros(size, dtype=torch.int64, device=slots.device).index_add_(0, slots.long(), ones)  # no host wait


def _batches(values: list[Tensor], chosen: Iterable[int]) -> list[list[int]]:
    """Indices of the chosen tensors to histogram together: each large one alone (whole-tensor kernels
    are the fastest), small ones of one device and dtype end to end, at most BATCH_ELEMENTS a batch."""
    batches: list[list[int]] = []
    open_batch: dict[tuple[torch.device, torch.dtype], tuple[list[int], int]] = {}
    for i in chosen:
        x, key = values[i], (values[i].device, _work_dtype(values[i]))
        if x.numel() >= SMALL:
            batches.append([i])
            continue
        members, size = open_batch.get(key, ([], 0))
        if members and size + x.numel() > BATCH_ELEMENTS:
            batches.append(members)
            members, size = [], 0
        open_batch[key] = ([*members, i], size + x.numel())
    return batches + [members for members, _ in open_batch.values()]


def _flat(values: list[Tensor]) -> Tensor:
    """The values end to end, (n,), in the dtype their bins are computed in."""
    return (torch.cat(values) if len(values) > 1 else values[0]).to(_work_dtype(values[0]))


def _moments(values: list[Tensor], chosen: list[int], near_zero: float) -> dict[int, list[float]]:
    """Min, max, sum, L2 norm and near-zero count of each chosen tensor, in one copy to the host per device."""
    tables: dict[torch.device, list[tuple[list[int], Tensor]]] = {}
    for batch in _batches(values, chosen):
        x = _flat([values[i] for i in batch])
        acc = _acc_dtype(x.device)
        near = x.abs() <= float(-_ceil(np.array([-near_zero]), x.dtype)[0])  # the largest such number <= near_zero
        if len(batch) == 1:
            table = torch.stack(
                [*torch.aminmax(x), x.sum(dtype=acc), torch.linalg.vector_norm(x, dtype=acc), near.sum()]
            )
        else:
            lengths = torch.tensor([values[i].numel() for i in batch]).to(x.device, non_blocking=True)
            xd = x.to(acc)
            ext = torch.segment_reduce(torch.stack([-x, x], 1), "max", lengths=lengths, axis=0, unsafe=True)
            sums = torch.segment_reduce(
                torch.stack([xd, xd * xd, near.to(acc)], 1), "sum", lengths=lengths, axis=0, unsafe=True
            )
            table = torch.stack([-ext[:, 0], ext[:, 1], sums[:, 0], sums[:, 1].sqrt(), sums[:, 2]], 1)
        tables.setdefault(x.device, []).append((batch, table.to(acc).view(len(batch), 5)))
    rows: dict[int, list[float]] = {}
    for parts in tables.values():
        rows.update(zip([i for batch, _ in parts for i in batch], torch.cat([t for _, t in parts]).tolist()))
    return rows


def _bin(x: Tensor, sizes: list[int], edges: np.ndarray, tau: float | None, clamp: bool) -> Tensor:
    """Counts (T, bins) of the T finite tensors laid end to end in x (n,), on their edges (T, bins + 1).

    With `tau`, bins come from positions within tau of the exact ones, and the values within tau of
    an edge are compared with the edge; without, the values of the one tensor are searched among the
    edges. `clamp`: values beyond the edges go to the end bins.
    """
    count, bins, device = len(sizes), edges.shape[1] - 1, x.device
    stride = bins + 2  # slot 0: below the first edge; slot bins + 1: at or beyond the last
    ceil = np.concatenate([np.full((count, 1), -np.inf), _ceil(edges, x.dtype)], 1)  # slot k: edge k - 1
    ceil = torch.from_numpy(ceil).to(device, x.dtype, non_blocking=True).reshape(-1)
    base = None
    if tau is None:
        k_lo = k_hi = torch.bucketize(x, ceil[2:-1], right=True) + 1
    else:
        low, scale = edges[:, 0], bins / (edges[:, -1] - edges[:, 0])
        if count == 1:
            low, scale = float(low[0]), float(scale[0])  # Python numbers: rounded to x's dtype in the kernel
        else:
            numel = torch.tensor(sizes).to(device, non_blocking=True)
            seg = torch.repeat_interleave(torch.arange(count, device=device), numel, output_size=x.numel())
            low, scale = torch.from_numpy(np.stack([low, scale])).to(device, x.dtype, non_blocking=True)[:, seg]
            base = seg * stride
        t = torch.sub(x, low).mul_(scale)  # (n,) position in bins
        if clamp:
            t.clamp_(-1.0, bins + 0.5)
        kind = torch.uint8 if stride <= 256 else torch.int32
        k_lo = t.add_(1.0 - tau).to(kind)  # the slot of position - tau, and of position + tau
        k_hi = t.add_(2.0 * tau).to(kind)
    counts = _count(k_lo if base is None else base + k_lo, count * stride)
    near = k_lo != k_hi
    if device.type == "cpu":  # a few values in 10^4: pick them out (elsewhere that would wait for the device)
        at = near.nonzero()[:, 0]
        x, k_hi, near, base = x[at], k_hi[at], True, None if base is None else base[at]
    slot = k_hi.long() if base is None else base + k_hi
    up = ((x >= ceil[slot]) & near).long()
    counts.index_add_(0, slot, up).index_add_(0, (slot - 1).clamp_(min=0), -up)
    counts = counts.view(count, stride)
    counts[:, 1] += counts[:, 0]
    counts[:, bins] += counts[:, bins + 1]  # the last bin is closed
    return counts[:, 1:-1]
