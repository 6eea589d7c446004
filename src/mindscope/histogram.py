"""Exact histograms and moments of many tensors at once, computed where the tensors live.

`histograms` counts each tensor's finite values exactly as numpy.histogram counts them in
float64 (edges from np.linspace, bins half-open but the last, values beyond an explicit range
in the end bins). It is the engine under `weights.weight_histograms`, which a training loop
calls every few steps: on a model of millions of weights it costs about what a plain loop of
torch.histc, mean, std, min and max does; on small models its fixed cost (a millisecond or
so on two CPU cores) makes it up to about twice that.

- Tensors go in batches: those of one size as the rows of a matrix (a large tensor is a batch
  of one row), small ones of mixed sizes end to end, reduced by segment (on the host by numpy,
  whose calls cost less). A few kernels serve a whole batch, and five numbers per tensor come
  to the host, in one copy per device.
- A value's bin is the integer part of its position, x * bins / width + offset, computed in the
  tensor's own float arithmetic, which is within `tau` (a few units in the last place) of its
  exact position. Only values within tau of an edge can land in the wrong bin: they are found
  by truncating position - tau and position + tau, and compared with the edge itself (rounded
  up to the tensor's dtype, which decides exactly as the float64 edge does).
- The counts are a bincount of small integer slots, and stay on the device.
NaN and Inf are counted, never binned: a tensor holding them is redone on its finite values.
Edges that are not evenly spaced, or a range too narrow for the float bound, are searched
(`torch.bucketize`) instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

TINY = 1 << 13  # tensors of fewer values are batched with the others of their device and dtype
BATCH_ELEMENTS = 1 << 16  # at most this many values a batch: past that, batching saves no time

_LIMITS = {t: (torch.finfo(t).eps, torch.finfo(t).max) for t in (torch.float32, torch.float64)}
Moments = list[float]  # finite count, mean, std (ddof 0), min, max, L2 norm, near-zero count, NaN count
Plan = tuple[float, float, "float | None", Moments]  # first and last edge, tau (None: search), moments


@torch.no_grad()
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
    values = [t.reshape(-1) for t in tensors]
    keys = [(x.device, _work_dtype(x), x.numel()) for x in values]  # read once: each read costs a dispatch
    plans, ready, nans = _plan(values, keys, bins, span, edges, near_zero)
    done = {i for batch in ready for i in batch.members}
    rest = [i for i in plans if i not in done]
    ready += [_batch(values, keys, members) for members in _group(keys, [i for i in rest if plans[i][2] is not None])]
    ready += [_batch(values, keys, [i]) for i in rest if plans[i][2] is None]  # searched: one tensor a batch
    out = _count_batches(ready, plans, bins, edges)
    for i, x in enumerate(values):
        if i not in out:  # nothing finite
            e = edges if edges is not None else np.linspace(*_outer(0.0, 0.0, span), bins + 1)
            zeros = torch.zeros(bins, dtype=torch.int64, device=x.device)
            e = torch.from_numpy(e).to(x.device, _acc_dtype(x.device), non_blocking=True)
            out[i] = (zeros, e, [0] * 7 + [nans[i]])
    return [out[i] for i in range(len(values))]


def _plan(
    values: list[Tensor],
    keys: list[tuple],
    bins: int,
    span: tuple[float, float] | None,
    edges: np.ndarray | None,
    near_zero: float,
) -> tuple[dict[int, Plan], list[_Batch], list[int]]:
    """Moments and edges of every non-empty tensor, and the batches ready to be counted as they are.

    A tensor holding NaN or Inf is replaced, in `values` and `keys`, by its finite values, and
    planned in a second round; its NaN count is returned.
    """
    nans = [0] * len(values)
    plans: dict[int, Plan] = {}
    ready: list[_Batch] = []
    pending, filtered = [i for i, key in enumerate(keys) if key[2]], set()
    while pending:
        retry = []
        batches = [_batch(values, keys, members) for members in _group(keys, pending)]
        for i, (lo, hi, mean, var, near, exact) in _moments(keys, batches, near_zero).items():
            x = values[i]
            if not (math.isfinite(mean) or i in filtered):  # (float64 sums can overflow, finite values or not)
                nans[i], values[i] = int(torch.isnan(x).sum()), x[torch.isfinite(x)]
                keys[i] = (*keys[i][:2], values[i].numel())
                filtered.add(i)
                retry += [i] if keys[i][2] else []
                continue
            n, (a, b) = keys[i][2], _outer(lo, hi, span) if edges is None else (edges[0], edges[-1])
            eps, big = _LIMITS[keys[i][1]]  # big: neither the scale nor x - first edge may overflow
            tau = _tau(a, b, bins, eps) if b > a and bins / (b - a) < big and abs(a) + abs(b) < big else 1
            if lo == hi:
                mean, var = lo, 0.0
            elif not (exact or 16 * var >= mean * mean):  # sum of squares - n mean^2 cancelled: two passes
                var = float(x.to(_acc_dtype(x.device)).var(correction=0))
            l2 = math.sqrt(n * (var + mean * mean))  # (float ** raises on overflow; * gives inf)
            even = edges is None and tau < 0.25
            plans[i] = (a, b, tau if even else None, [n, mean, math.sqrt(var), lo, hi, l2, near, nans[i]])
        ready += [b for b in batches if all(plans.get(i, (0, 0, None))[2] is not None for i in b.members)]
        pending = retry
    return plans, ready, nans


def _count_batches(
    batches: list[_Batch], plans: dict[int, Plan], bins: int, edges: np.ndarray | None
) -> dict[int, tuple[Tensor, Tensor, Moments]]:
    """Count every batch, with one table of edges for all their tensors (rows in batch order)."""
    order = [i for batch in batches for i in batch.members]
    first, last = (np.array([plans[i][k] for i in order], dtype=np.float64) for k in (0, 1))
    e = _linspace(first, last, bins) if edges is None else np.repeat(edges[None], len(order), 0)
    inf = np.full((len(order), 1), np.inf)
    bounds = np.concatenate([-inf, -inf, e[:, 1:-1], inf], 1)  # what slot k compares with (see `_bin`)
    tables: dict[tuple[torch.device, torch.dtype, bool], Tensor] = {}

    def table(device: torch.device, dtype: torch.dtype, ceil: bool) -> Tensor:  # one copy per device
        if (device, dtype, ceil) not in tables:
            rows = np.ascontiguousarray(_ceil(bounds, dtype) if ceil else e)
            tables[device, dtype, ceil] = torch.from_numpy(rows).to(device, dtype, non_blocking=True)
        return tables[device, dtype, ceil]

    out: dict[int, tuple[Tensor, Tensor, Moments]] = {}
    start = 0
    for batch in batches:
        x, rows = batch.x, slice(start, start + len(batch.members))
        start = rows.stop
        tau = None if plans[batch.members[0]][2] is None else max(plans[i][2] for i in batch.members)
        counts = _bin(batch, e[rows], table(x.device, x.dtype, True)[rows].reshape(-1), tau)
        device_edges = table(x.device, _acc_dtype(x.device), False)[rows]
        out.update({i: (c, row, plans[i][3]) for i, c, row in zip(batch.members, counts, device_edges)})
    return out


class _Batch(NamedTuple):
    members: list[int]  # indices of the tensors, laid end to end in x
    sizes: list[int]  # their sizes
    x: Tensor  # (n,) in the dtype their bins are computed in
    mixed: bool  # sizes differ (else the tensors are the rows of a matrix)
    seg: Tensor | None  # (n,) int32 index in members of each value, for torch's segment kernels
    lengths: Tensor | None  # (T,) int32 sizes on x's device, likewise


def _batch(values: list[Tensor], keys: list[tuple], members: list[int]) -> _Batch:
    sizes = [keys[i][2] for i in members]
    x = (torch.cat([values[i] for i in members]) if len(members) > 1 else values[members[0]]).to(keys[members[0]][1])
    mixed = len(set(sizes)) > 1
    if not mixed or _host(x.device):
        return _Batch(members, sizes, x, mixed, None, None)
    lengths = torch.tensor(sizes, dtype=torch.int32).to(x.device, non_blocking=True)
    index = torch.arange(len(members), dtype=torch.int32, device=x.device)
    return _Batch(members, sizes, x, mixed, torch.repeat_interleave(index, lengths, output_size=sum(sizes)), lengths)


def _tau(first: float, last: float, bins: int, eps: float) -> float:
    """A bound, in bins, on how far `_bin`'s position of a value can lie from its exact position.

    The position is fl(fl(x * fl(scale)) + fl(offset)), then + 2 tau: each rounding is within eps / 2
    of its result, at most (|first| + |last|) * scale + bins + 2 in size; and numpy's float64 edges
    are off the exact ones by a few float64 roundings of the larger of |first| and |last|. Doubled,
    for margin.
    """
    ratio = (abs(first) + abs(last)) / (last - first)
    return 2 * (eps / 2 * (2 * bins + 5 + 3 * bins * ratio) + 2**-53 * bins * (3 + ratio))


def _linspace(first: np.ndarray, last: np.ndarray, bins: int) -> np.ndarray:
    """(N, bins + 1): np.linspace(first[k], last[k], bins + 1) for each k, the edges numpy.histogram uses."""
    step = (last - first) / bins
    if np.all(step != 0):  # numpy's arithmetic, row by row (a zero step, a subnormal range, it does apart)
        e = np.arange(bins + 1) * step[:, None] + first[:, None]
        e[:, -1] = last
        return e
    return np.array([np.linspace(a, b, bins + 1) for a, b in zip(first, last)])


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
    """(size,): how many of slots (n,) hold each value."""
    if slots.device.type == "cpu":
        return torch.bincount(slots, minlength=size)
    ones = torch.ones(1, dtype=torch.int64, device=slots.device).expand(slots.numel())
    return torch.zeros(size, dtype=torch.int64, device=slots.device).index_add_(0, slots.int(), ones)  # no host wait


def _group(keys: list[tuple], chosen: Iterable[int]) -> list[list[int]]:
    """The chosen tensors in batches: by device, dtype and size, the small ones by device and dtype."""
    batches: list[list[int]] = []
    open_batch: dict[tuple[torch.device, torch.dtype, int], tuple[list[int], int]] = {}
    for i in chosen:
        device, dtype, n = keys[i]
        key = (device, dtype, n if n >= TINY else 0)
        members, size = open_batch.get(key, ([], 0))
        if members and size + n > BATCH_ELEMENTS:
            batches.append(members)
            members, size = [], 0
        open_batch[key] = ([*members, i], size + n)
    return batches + [members for members, _ in open_batch.values()]


def _moments(keys: list[tuple], batches: list[_Batch], near_zero: float) -> dict[int, tuple]:
    """Per tensor: min, max, mean, variance, near-zero count, and whether that variance is exact
    (two passes) or one pass's, which may cancel. One copy to the host per device."""
    parts: dict[torch.device, list[tuple[list[int], bool, Tensor]]] = {}
    for b in batches:
        x, acc, count = b.x, _acc_dtype(b.x.device), len(b.members)
        near = x.abs() <= float(-_ceil(np.array([-near_zero]), x.dtype)[0])  # the largest such number <= near_zero
        if not b.mixed:  # rows: min and max, sum and L2 norm in float64, in one pass each
            rows = x.view(count, -1)
            ext = rows.amin(1), rows.amax(1)  # (torch.aminmax along rows is many times slower)
            sums = [rows.sum(1, dtype=acc), torch.linalg.vector_norm(rows, dim=1, dtype=acc)]
            table = torch.stack([*ext, *sums, near.view(count, -1).sum(1)], 1)
        elif _host(x.device):  # small tensors on the host: numpy's reduceat, two passes in float64
            with np.errstate(all="ignore"):  # NaN and Inf: redone on the finite values
                xd, sizes = x.numpy().astype(np.float64), np.array(b.sizes)
                per = partial(np.add.reduceat, indices=np.cumsum(sizes) - sizes)  # (n,) -> (T,)
                mean = per(xd) / sizes
                d = xd - np.repeat(mean, sizes)
                ext = [how.reduceat(xd, np.cumsum(sizes) - sizes) for how in (np.minimum, np.maximum)]
                table = torch.from_numpy(
                    np.stack([*ext, mean, per(d * d) / sizes, per(near.numpy().astype(np.float64))], 1)
                )
        else:  # by segment on the device: two passes in float64
            xd, per = x.to(acc), partial(torch.segment_reduce, lengths=b.lengths, unsafe=True)  # (n,) -> (T,)
            mean = per(xd, "sum") / b.lengths
            d = xd - mean.index_select(0, b.seg)
            var = per(d * d, "sum") / b.lengths
            table = torch.stack([per(x, "min"), per(x, "max"), mean, var, per(near.to(acc), "sum")], 1)
        parts.setdefault(x.device, []).append((b.members, b.mixed, table.to(acc)))
    rows: dict[int, tuple] = {}
    for part in parts.values():
        host = torch.cat([table for _, _, table in part]).tolist()
        for i, exact, (lo, hi, a, b, near) in zip(
            [i for members, _, _ in part for i in members],
            [exact for members, exact, _ in part for _ in members],
            host,
        ):
            n = keys[i][2]  # one pass: a is the sum, b the L2 norm
            rows[i] = (
                (lo, hi, a, b, near, True) if exact else (lo, hi, a / n, b * b / n - (a / n) * (a / n), near, False)
            )
    return rows


def _bin(batch: _Batch, edges: np.ndarray, ceil: Tensor, tau: float | None) -> Tensor:
    """Counts (T, bins) of the T finite tensors of a batch, on their edges (T, bins + 1).

    Slot k of a tensor's counts holds bin k - 1 and `ceil` (T * (bins + 2),) gives what a value in
    slot k is compared with: edge k - 1 rounded up to x's dtype, except the first and the last
    edge, taken as -inf and inf, so that values beyond the edges go to the end bins and the last
    bin is closed. With `tau`, slots come from positions within tau of the exact ones, and values
    within tau of an edge are compared with it; without, one tensor's values are searched.
    """
    x, count, bins = batch.x, len(batch.members), edges.shape[1] - 1
    if batch.mixed and tau is not None and _host(x.device):
        return _bin_host(batch, edges)
    stride = bins + 2  # slots 0 and bins + 1 stay empty
    if tau is None:
        k_lo = k_hi = torch.bucketize(x, ceil[2:-1], right=True) + 1
    else:
        scale = bins / (edges[:, -1] - edges[:, 0])
        offset = 1.0 - tau - edges[:, 0] * scale
        if count == 1:  # Python numbers: rounded to x's dtype in the kernel
            t = torch.mul(x, float(scale[0])).add_(float(offset[0]))  # (n,) 1 + position in bins - tau
        else:  # each row's, or each value's, scale and offset
            params = torch.from_numpy(np.stack([scale, offset])).to(x.device, x.dtype, non_blocking=True)
            if not batch.mixed:
                t = torch.mul(x.view(count, -1), params[0, :, None]).add_(params[1, :, None]).view(-1)
            else:
                scale, offset = params.index_select(1, batch.seg)
                t = torch.mul(x, scale).add_(offset)
        # Into slots 1 .. bins, which takes values beyond the outer edges to the end bins: only the
        # interior edges are then near any value (the first and last, every tensor's min and max).
        t.clamp_(1.0, bins + 1.0 - 4 * tau)
        kind = torch.uint8 if stride <= 256 else torch.int32
        k_lo = t.to(kind)  # the slot of position - tau, and of position + tau
        k_hi = t.add_(2.0 * tau).to(kind)
    if count == 1:
        slots = k_lo
    elif not batch.mixed:
        first = torch.arange(0, count * stride, stride, dtype=torch.int32, device=x.device)[:, None]
        slots = (k_lo.view(count, -1) + first).view(-1)
    else:
        slots = batch.seg * stride + k_lo
    counts = _count(slots, count * stride)
    near = k_lo != k_hi  # within tau of an edge: each such value moves up a slot if it is at or past the edge
    if x.device.type == "cpu":  # a few values in 10^4: pick them out, with numpy on the tensors' memory
        at = np.flatnonzero(near.numpy())
        slot = k_hi.numpy()[at].astype(np.intp) + _first_slot(batch, stride, at)
        up = slot[x.numpy()[at] >= ceil.numpy()[slot]]
        np.add.at(counts.numpy(), up, 1)
        np.add.at(counts.numpy(), up - 1, -1)
    else:  # every value, masked: picking them out would wait for the device
        slot = k_hi.long() + _first_slot(batch, stride, None)
        up = ((x >= ceil[slot]) & near).long()
        counts.index_add_(0, slot, up).index_add_(0, slot - 1, -up)
    return counts.view(count, stride)[:, 1:-1]


def _bin_host(batch: _Batch, edges: np.ndarray) -> Tensor:
    """`_bin` for small tensors of mixed sizes on the host: numpy.histogram's own method, in float64."""
    count, bins, sizes = len(batch.members), edges.shape[1] - 1, batch.sizes
    first, x = np.repeat(edges[:, 0], sizes), batch.x.numpy().astype(np.float64)
    x = np.clip(x, first, np.repeat(edges[:, -1], sizes))  # beyond the edges: the end bins
    k = ((x - first) * np.repeat(bins / (edges[:, -1] - edges[:, 0]), sizes)).astype(np.intp)
    k = np.minimum(k, bins - 1) + np.repeat(np.arange(count) * (bins + 1), sizes)  # (n,) into the edges, flat
    compare = np.concatenate([edges[:, :-1], np.full((count, 1), np.inf)], 1).ravel()  # the last bin is closed
    k -= x < compare[k]
    k += x >= compare[k + 1]
    return torch.from_numpy(np.bincount(k, minlength=count * (bins + 1)).reshape(count, bins + 1)[:, :bins])


def _host(device: torch.device) -> bool:
    """Whether small tensors of mixed sizes are reduced and binned by numpy (cheaper calls) rather than torch."""
    return device.type == "cpu"


def _first_slot(batch: _Batch, stride: int, at: np.ndarray | None) -> Tensor | np.ndarray | int:
    """The first slot of the tensor of each value at `at` (numpy, on the host), or of every value."""
    if len(batch.members) == 1:
        return 0
    if batch.seg is not None:
        return (batch.seg if at is None else batch.seg.numpy()[at]) * stride
    index = torch.arange(batch.x.numel(), device=batch.x.device) if at is None else at
    return index // batch.sizes[0] * stride
