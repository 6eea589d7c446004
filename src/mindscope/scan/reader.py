"""Read a finished scan back: its table, per-class maps, layer statistics, summary and any image's map."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from mindscope._util import count
from mindscope.activations import LayerStatistics
from mindscope.attribution import Attribution
from mindscope.scan.merge import (
    CLASSES,
    LAYERS,
    SUMMARY,
    TABLE,
    image_items,
    method_columns,
    worst_order,
    wrong_order,
)
from mindscope.scan.plan import Plan, open_plan
from mindscope.scan.statistics import Moments
from mindscope.scan.table import arrow, read_table


@dataclass(frozen=True)
class ClassMaps:
    """Per attributed class: the mean map and the mean |map| over the images attributed to it."""

    method: str
    classes: tuple[str, ...]
    mean: Tensor  # (K, C, H, W)
    mean_abs: Tensor  # (K, C, H, W)
    counts: Tensor  # (K,) images per class; a class with 0 has zero maps


class Scan:
    """A scan folder, opened for reading. Results exist once every shard is in (`complete`)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.plan: Plan = open_plan(self.path)

    @property
    def complete(self) -> bool:
        return (self.path / SUMMARY).exists() and not self.plan.missing()

    def unfinished(self) -> str | None:
        """None for a finished scan; else one line that says what is missing and what to run."""
        if self.complete:
            return None
        missing, shards = len(self.plan.missing()), len(self.plan.shards)
        if missing:
            return (
                f"the scan in {self.path} is not finished ({missing} of {shards} shards missing); run the scan "
                "again (the same 'mindscope scan' command, or each missing --shard I/N) and it merges itself"
            )
        return (
            f"the scan in {self.path} is not finished (all {count(shards, 'shard')} are in, but not merged); "
            f"run the scan again, or 'mindscope scan --merge --out {self.path}'"
        )

    def _require(self, name: str) -> Path:
        problem = self.unfinished()
        if problem is not None:
            raise ValueError(problem)
        return self.path / name

    @cached_property
    def summary(self) -> dict:
        return json.loads(self._require(SUMMARY).read_text())

    def arrow(self) -> Any:
        """The per-image table as a pyarrow Table: one row per image and method."""
        return read_table(self._require(TABLE))

    def table(self) -> Any:
        """The per-image table as a pandas DataFrame, sorted by method and image index."""
        arrow()
        try:
            frame = self.arrow().to_pandas()
        except ImportError:
            raise ValueError(
                "table() needs pandas; use .arrow() for a pyarrow Table, or pip install 'mindscope[scan]'"
            ) from None
        return frame.sort_values(["method", "index"], kind="stable").reset_index(drop=True)

    def columns(self, method: str | None = None) -> dict[str, np.ndarray]:
        """The table's rows of `method` (default: the first scanned) as numpy columns, sorted by image index."""
        return method_columns(self.arrow(), self._method(method))

    def ranking(self, which: str, method: str | None = None) -> list[dict]:
        """Every image ranked, as the summary ranks its first WORST, with `method`'s numbers.

        `which` is "worst" (least accurate map first, ill-conditioned images left out; empty for a
        method without completeness) or "wrong" (wrong predictions only, most confident first).
        """
        if which not in ("worst", "wrong"):
            raise ValueError(f"unknown ranking {which!r}; choose worst or wrong")
        c = self.columns(method)
        order = worst_order(c) if which == "worst" else wrong_order(c)
        return [] if order is None else image_items(c, order, self.plan.classes)

    def class_maps(self, method: str | None = None) -> ClassMaps:
        """Per-class mean maps of `method` (default: the first scanned)."""
        method = self._method(method)
        with safe_open(str(self._require(CLASSES)), "pt") as f:
            return ClassMaps(method, self.plan.classes, f.get_tensor(f"mean/{method}"),
                             f.get_tensor(f"mean_abs/{method}"), f.get_tensor("counts"))  # fmt: skip

    def layer_statistics(self) -> dict[str, LayerStatistics]:
        """Per-layer activation statistics over every scanned image, as `activation_statistics` gives them."""
        with safe_open(str(self._require(LAYERS)), "pt") as f:
            meta = f.metadata()
            saturation = json.loads(meta["saturation"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        return {
            name: Moments.from_tensors(tensors, f"{name}/", saturation.get(name)).statistics(name)
            for name in json.loads(meta["layers"])
        }

    def maps(self, indices: list[int] | np.ndarray, method: str | None = None) -> Tensor:
        """The attribution maps of the given images, (n, C, H, W) float32, in the order asked."""
        method = self._method(method)
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.plan.images):
            raise ValueError(f"image indices must lie in 0..{self.plan.images - 1}, got {wanted.min()}..{wanted.max()}")
        out = torch.zeros((len(wanted), *self.plan.image_shape))
        size = self.plan.options.shard_size
        for k in np.unique(wanted // size):
            path = self.plan.shard_files(int(k))[0]
            if not path.exists():
                raise ValueError(f"shard {k} of {self.path} is missing; run the scan again to finish it")
            with safe_open(str(path), "pt") as f:
                where = np.flatnonzero(wanted // size == k)
                rows = torch.as_tensor(wanted[where] - k * size)
                maps = f.get_slice(f"maps/{method}")[int(rows.min()) : int(rows.max()) + 1]
                maps = maps[rows - rows.min()].float()
                if f"scale/{method}" in f.keys():  # noqa: SIM118
                    maps = maps * f.get_tensor(f"scale/{method}")[rows].view(-1, 1, 1, 1)
                out[torch.as_tensor(where)] = maps
        return out

    def attribution(self, indices: list[int] | np.ndarray, method: str | None = None) -> Attribution:
        """The given images' maps and numbers as an `Attribution`, e.g. for `render.attribution_panels`."""
        method = self._method(method)
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        pa = arrow()
        table = self.arrow()
        table = table.filter(pa.compute.and_(pa.compute.equal(table["method"], method),
                                             pa.compute.is_in(table["index"], pa.array(wanted))))  # fmt: skip
        by_index = {int(i): k for k, i in enumerate(table["index"].to_pylist())}
        order = [by_index[int(i)] for i in wanted]

        def column(name: str, dtype: torch.dtype) -> Tensor | None:
            values = table[name].to_pylist()
            if all(v is None for v in values):
                return None
            return torch.tensor([values[k] for k in order], dtype=dtype)

        f64, i64 = torch.float64, torch.int64
        return Attribution(
            self.maps(wanted, method), column("target", i64), column("prediction", i64),
            column("probability", f64), column("steps", i64), column("output", f64), column("baseline_output", f64),
            column("completeness_error", f64), column("relative_completeness_error", f64), column("map_error", f64),
            column("converged", torch.bool), column("ill_conditioned", torch.bool),
        )  # fmt: skip

    def _method(self, method: str | None) -> str:
        methods = self.plan.options.methods
        if method is None:
            return methods[0]
        if method not in methods:
            raise ValueError(f"this scan has no method {method!r}; it scanned: {', '.join(methods)}")
        return method


def open_scan(path: Path | str) -> Scan:
    """Open a scan folder for reading: `.table()`, `.class_maps()`, `.layer_statistics()`, `.summary`."""
    return Scan(path)
