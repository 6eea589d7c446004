"""The one per-batch function every engine runs, and a worker that turns shards into files.

`scan_batch` looks at one batch of images with each method and with `activation_statistics`,
and returns what the scan keeps of it. `Scanner` holds one model and the data; `run(shard)`
cuts the shard into batches, joins their results and writes the shard's two files: the maps
and sums first, the per-image table last, so a shard with its table is complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from mindscope._util import model_device
from mindscope.activations import activation_statistics
from mindscope.attribution import Attribution
from mindscope.baselines import named
from mindscope.data import ImageSet, Normalization
from mindscope.scan.files import write_bytes
from mindscope.scan.options import attribute
from mindscope.scan.plan import Plan, Shard
from mindscope.scan.statistics import Moments, join
from mindscope.scan.table import COLUMNS, table_bytes


@dataclass
class BatchResult:
    """What a scan keeps of a batch of n images, on the CPU."""

    rows: dict[str, dict[str, np.ndarray | None]]  # method -> column -> (n,), None: not defined for it
    maps: dict[str, Tensor]  # method -> (n, C, H, W) float32
    class_sums: dict[str, Tensor]  # method -> (K, C, H, W) float64: sum of maps per attributed class
    class_abs_sums: dict[str, Tensor]  # method -> (K, C, H, W) float64: sum of |maps|
    class_counts: Tensor  # (K,) int64: images per attributed class
    layers: dict[str, Moments]


def scan_batch(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    indices: Tensor,
    plan: Plan,
    normalization: Normalization,
) -> BatchResult:
    """Look at one batch x (n, C, H, W, normalised) with every method and layer of `plan`."""
    options, classes = plan.options, len(plan.classes)
    baseline = named(options.baseline, normalization)
    targets = labels.to(x.device) if options.target == "label" else None
    rows, maps, sums, abs_sums = {}, {}, {}, {}
    counts = None
    for method in options.methods:
        start = time.perf_counter()
        result = attribute(method, model, x, targets, options, baseline, seed=options.seed + int(indices[0]))
        seconds = time.perf_counter() - start
        a = result.attributions.detach().float().cpu()  # (n, C, H, W)
        target = result.targets.cpu()
        maps[method] = a
        sums[method] = torch.zeros((classes, *a.shape[1:]), dtype=torch.float64).index_add_(0, target, a.double())
        abs_sums[method] = torch.zeros_like(sums[method]).index_add_(0, target, a.double().abs())
        counts = torch.bincount(target, minlength=classes)
        rows[method] = _rows(result, labels, indices, seconds)
    layers = {}
    if plan.layers:
        stats = activation_statistics(model, x, list(plan.layers), batch_size=len(x))
        layers = {name: Moments.of(s) for name, s in stats.items()}
    return BatchResult(rows, maps, sums, abs_sums, counts, layers)


def _rows(result: Attribution, labels: Tensor, indices: Tensor, seconds: float) -> dict[str, np.ndarray | None]:
    as_np = lambda t: None if t is None else t.detach().cpu().numpy()  # noqa: E731
    steps = result.steps.cpu().double()
    share = (steps / steps.sum()).numpy() if float(steps.sum()) > 0 else np.full(len(steps), 1 / len(steps))
    output, base = as_np(result.output), as_np(result.baseline_output)
    return {
        "index": indices.numpy().astype(np.int64),
        "label": labels.numpy().astype(np.int64),
        "target": as_np(result.targets).astype(np.int64),
        "prediction": as_np(result.predictions).astype(np.int64),
        "probability": as_np(result.probabilities).astype(np.float64),
        "output": None if output is None else output.astype(np.float64),
        "baseline_output": None if base is None else base.astype(np.float64),
        "delta": None if base is None else (output - base).astype(np.float64),
        "completeness_error": as_np(result.completeness_error),
        "relative_completeness_error": as_np(result.relative_completeness_error),
        "steps": as_np(result.steps).astype(np.int64),
        "map_error": as_np(result.map_error),
        "converged": as_np(result.converged),
        "ill_conditioned": as_np(result.ill_conditioned),
        "seconds": seconds * share,  # the batch's wall time, shared out by gradient steps
    }


def join_batches(parts: list[BatchResult]) -> BatchResult:
    """One result for the images of all parts, in order."""
    first = parts[0]
    rows = {
        m: {c: None if first.rows[m][c] is None else np.concatenate([p.rows[m][c] for p in parts]) for c in COLUMNS}
        for m in first.rows
    }
    return BatchResult(
        rows,
        {m: torch.cat([p.maps[m] for p in parts]) for m in first.maps},
        {m: sum((p.class_sums[m] for p in parts[1:]), first.class_sums[m]) for m in first.maps},
        {m: sum((p.class_abs_sums[m] for p in parts[1:]), first.class_abs_sums[m]) for m in first.maps},
        sum((p.class_counts for p in parts[1:]), first.class_counts),
        {name: join([p.layers[name] for p in parts]) for name in first.layers},
    )


def shard_tensors(result: BatchResult, indices: Tensor, float16: bool) -> dict[str, Tensor]:
    """The tensors of a shard's .safetensors file."""
    tensors = {"index": indices.to(torch.int64).contiguous(), "class_counts": result.class_counts}
    for method, maps in result.maps.items():
        if float16:  # float16 keeps ~3 digits of each map relative to its largest |value|
            scale = maps.flatten(1).abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny)  # (n,)
            tensors[f"maps/{method}"] = (maps / scale.view(-1, 1, 1, 1)).half()
            tensors[f"scale/{method}"] = scale
        else:
            tensors[f"maps/{method}"] = maps
        tensors[f"class_sum/{method}"] = result.class_sums[method]
        tensors[f"class_abs_sum/{method}"] = result.class_abs_sums[method]
    for name, moments in result.layers.items():
        tensors.update(moments.tensors(f"layer/{name}/"))
    return {k: v.contiguous() for k, v in tensors.items()}


@dataclass(frozen=True)
class ShardReport:
    number: int
    images: int
    seconds: float


class Scanner:
    """One worker: a model and the data it reads, turning shards of `plan` into files."""

    def __init__(self, model: nn.Module, normalization: Normalization, images: ImageSet, plan: Plan) -> None:
        self.model, self.normalization, self.images, self.plan = model, normalization, images, plan

    def run(self, shard: Shard) -> ShardReport:
        """Compute one shard and write its files."""
        start = time.perf_counter()
        plan, size = self.plan, self.plan.options.batch_size
        maps_path, table_path = plan.shard_files(shard)
        device = model_device(self.model)
        parts = []
        for lo in range(shard.start, shard.stop, size):
            idx = torch.arange(lo, min(lo + size, shard.stop))
            x = self.normalization.apply(self.images.pixels(idx)).to(device)
            parts.append(scan_batch(self.model, x, self.images.labels[idx], idx, plan, self.normalization))
        result = join_batches(parts)
        indices = torch.arange(shard.start, shard.stop)
        layers = {name: m.saturation for name, m in result.layers.items()}
        metadata = {"shard": str(shard.number), "start": str(shard.start), "stop": str(shard.stop),
                    "float16": str(plan.options.float16), "saturation": json.dumps(layers)}  # fmt: skip
        write_bytes(maps_path, safetensors_bytes(shard_tensors(result, indices, plan.options.float16), metadata))
        write_bytes(table_path, table_bytes(result.rows, shard.number))
        return ShardReport(shard.number, len(shard), time.perf_counter() - start)
