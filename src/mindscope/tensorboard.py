"""Write a run's metrics and weight histograms as TensorBoard event files.

Histograms go through the writer's raw form with our own counts and edges, so the
buckets TensorBoard shows are exactly the ones mindscope recorded and their counts sum
to the number of (finite) weights. Scalars are tagged "split/name", histograms
"module/parameter" ("features.0/weight"), so TensorBoard groups them by layer.
tensorboard is an optional dependency: `pip install 'mindscope[tensorboard]'`.
Histograms as in Springenberg et al. 2015's walk-through, one per layer per recorded point.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from mindscope.weights import WeightHistogram, histogram_rows, weight_histograms

__all__ = [
    "TensorBoardRecorder",
    "export_tensorboard",
    "histogram_tag",
    "scalar_tag",
]

MISSING = "tensorboard is not installed; pip install 'mindscope[tensorboard]'"


class RunLike(Protocol):
    """What `export_tensorboard` reads from a loaded run (`mindscope.run.LoadedRun`)."""

    metrics: list[dict[str, Any]]
    epochs: list[int]

    def histograms(self) -> list[dict[str, Any]]: ...
    def state_dict_at(self, epoch: int) -> Mapping[str, Any]: ...


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    return SummaryWriter(log_dir=str(log_dir))


def histogram_tag(tensor: str) -> str:
    """Map "features.0.weight" to "features.0/weight": TensorBoard groups tags by their first part."""
    module, _, parameter = tensor.rpartition(".")
    return f"{module}/{parameter}" if module else parameter


def scalar_tag(metric: Mapping[str, Any]) -> str:
    """A metrics row -> "split/name", with "_per_<scope>" when it is not a per-step value."""
    scope = metric.get("scope")
    suffix = f"_per_{scope}" if scope not in (None, "step") else ""
    return f"{metric['split']}/{metric['name']}{suffix}"


class TensorBoardRecorder:
    """Append scalars and weight histograms to one TensorBoard log directory.

    Speaks the run recorder's language, so `RunRecorder(run, extra=[TensorBoardRecorder(dir)])`
    mirrors a run into TensorBoard: `log(step, epoch, split, values, scope=...)` and
    `log_histograms(step, epoch, weight_histograms(model))`. Use as a context manager, or
    call `close()`.
    """

    def __init__(self, log_dir: Path | str) -> None:
        self.log_dir = Path(log_dir)
        self._writer = _summary_writer(self.log_dir)

    def log_scalars(self, step: int, values: Mapping[str, float | None]) -> None:
        """Write each {tag: value} at `step`; None values are skipped."""
        for tag, value in values.items():
            if value is not None:
                self._writer.add_scalar(tag, float(value), global_step=int(step))

    def log(
        self, step: int, epoch: float, split: str, values: Mapping[str, float | None], *, scope: str = "step"
    ) -> None:
        """Write metrics as the run stores them, tagged like `scalar_tag`."""
        self.log_scalars(
            step, {scalar_tag({"split": split, "name": name, "scope": scope}): value for name, value in values.items()}
        )

    def log_histograms(
        self, step: int, epoch: float | None, histograms: Mapping[str, WeightHistogram] | Iterable[Mapping[str, Any]]
    ) -> None:
        """Write one histogram per tensor at `step`, from `weight_histograms` output or run rows."""
        rows = histogram_rows(histograms, step=step, epoch=epoch) if isinstance(histograms, Mapping) else histograms
        for row in rows:
            edges = np.asarray(row["edges"], dtype=np.float64)  # (bins + 1,)
            counts = np.asarray(row["counts"], dtype=np.int64)  # (bins,)
            stats = row["stats"]
            num = int(counts.sum())
            finite = num > 0 and np.isfinite(stats["min"]) and np.isfinite(stats["max"])
            # TensorBoard stores right-hand bucket limits only; an empty leading bucket whose
            # limit is the first edge keeps the left edge, as torch's own add_histogram does.
            self._writer.add_histogram_raw(
                histogram_tag(row["tensor"]),
                min=float(stats["min"]) if finite else float(edges[0]),
                max=float(stats["max"]) if finite else float(edges[-1]),
                num=num,
                sum=float(stats["mean"]) * num if finite else 0.0,
                sum_squares=float(stats["l2"]) ** 2 if finite else 0.0,
                bucket_limits=edges.tolist(),
                bucket_counts=[0, *counts.tolist()],
                global_step=int(step),
            )

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardRecorder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def export_tensorboard(run: RunLike, out_dir: Path | str, *, bins: int = 64) -> Path:
    """Write `run`'s metrics and recorded weight histograms as event files under `out_dir`.

    When the run recorded no histograms, each weight snapshot is histogrammed instead and
    written at step = its epoch. Refuses a directory that already holds event files, since
    TensorBoard would merge the two. Returns `out_dir`.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give a directory for the TensorBoard logs")
    if out.is_dir() and any(out.glob("events.out.tfevents.*")):
        raise FileExistsError(
            f"{out} already holds TensorBoard event files; give an empty or new directory, or delete them first"
        )
    rows = list(run.histograms())
    if not rows:
        for epoch in run.epochs:
            rows += histogram_rows(
                weight_histograms(dict(run.state_dict_at(epoch)), bins=bins), step=epoch, epoch=epoch
            )
    with TensorBoardRecorder(out) as recorder:
        for metric in run.metrics:
            recorder.log_scalars(metric["step"], {scalar_tag(metric): metric["value"]})
        by_step: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            by_step.setdefault(int(row["step"]), []).append(row)
        for step in sorted(by_step):
            recorder.log_histograms(step, by_step[step][0]["epoch"], by_step[step])
    return out
