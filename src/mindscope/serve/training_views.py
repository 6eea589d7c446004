"""What the Training, Weights and Images views compute: curves, histograms at an epoch, predictions.

Each function takes an opened run (`Entry`) and plain parameters, draws with
`mindscope.render`, and returns a `Picture` with small records of the numbers shown beside
it. They run in the dashboard's worker threads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mindscope._util import eval_mode, model_device
from mindscope.render.tables import format_change
from mindscope.render.training import training_curves
from mindscope.render.weights import weight_histogram_figures
from mindscope.serve.catalog import Entry
from mindscope.serve.pictures import Picture, Rendered
from mindscope.weights import shared_edges, weight_changes, weight_histograms

NO_HISTORY = "no training history: an outside model"
Progress = Callable[[float, str], None]


def require_history(entry: Entry) -> None:
    """A ValueError for views that need a run's history when the entry is an outside model."""
    if entry.subject.run is None:
        raise ValueError(NO_HISTORY)


def training_picture(entry: Entry) -> Picture:
    """Accuracy and cost over training, train and test, with a hover box on every plotted point."""
    require_history(entry)
    metrics = entry.subject.run.metrics
    if not metrics:
        raise ValueError(f"run {entry.name} recorded no metrics yet; train it with 'mindscope train'")
    rendered = Rendered(training_curves(metrics))
    return rendered.picture(rendered.line_spots(x_name="epoch"))


@dataclass(frozen=True)
class WeightsView:
    picture: Picture
    tensors: tuple[str, ...]  # every tensor of the change table, in layer order
    rows: tuple[tuple[str, ...], ...]  # the change table: epoch 0 -> the chosen epoch
    span: tuple[float, float]  # the x-range, shared by every epoch of the chosen tensor


def weight_tensors(entry: Entry) -> list[str]:
    """The names of the run's floating-point tensors at epoch 0, in layer order."""
    require_history(entry)
    return [n for n, t in entry.subject.run.state_dict_at(0).items() if t.is_floating_point()]


def weights_view(entry: Entry, tensor: str, epoch: int) -> WeightsView:
    """The histogram of `tensor` at `epoch` beside the one before training, and the change table.

    The bin edges span the tensor's values over every snapshot, so stepping through the
    epochs keeps one x-axis and the bars compare.
    """
    require_history(entry)
    run = entry.subject.run
    states = {e: run.state_dict_at(e) for e in run.epochs}
    if tensor not in states[0]:
        shown = ", ".join(list(states[0])[:12])
        raise ValueError(f"no tensor {tensor!r} in run {entry.name}; tensors are: {shown}")
    if epoch not in states:
        raise ValueError(
            f"run {entry.name} has no snapshot for epoch {epoch}; snapshots: {', '.join(map(str, run.epochs))}"
        )
    edges = shared_edges(*(s[tensor] for s in states.values()))
    before = weight_histograms({tensor: states[0][tensor]}, edges=edges)
    after = weight_histograms({tensor: states[epoch][tensor]}, edges=edges)
    (fig,) = weight_histogram_figures(
        before, after, per_figure=1, labels=("epoch 0 (before training)", f"epoch {epoch}")
    )
    changes = weight_changes(states[0], states[epoch])
    rows = []
    for c in changes:
        norm, moved = format_change(c)
        rows.append((c.tensor, f"{c.mean[0]:+.4f} → {c.mean[1]:+.4f}", f"{c.std[0]:.4f} → {c.std[1]:.4f}", norm, moved))
    span = (float(edges[0]), float(edges[-1]))
    return WeightsView(Rendered(fig).picture(), tuple(c.tensor for c in changes), tuple(rows), span)


@dataclass(frozen=True)
class Predictions:
    """The model's answer for every test image: class, its probability, and the true label."""

    predicted: np.ndarray  # (N,) int64
    confidence: np.ndarray  # (N,) float64, softmax probability of the predicted class
    labels: np.ndarray  # (N,) int64

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).mean()) if len(self.labels) else float("nan")


def private_model(entry: Entry, epoch: int | None) -> nn.Module:
    """A copy of the model for a long job, so that it need not hold the run's lock throughout."""
    with entry.lock:
        return copy.deepcopy(entry.model(epoch))


def predictions(entry: Entry, epoch: int | None, progress: Progress, *, batch: int = 256) -> Predictions:
    """Classify the whole test split in batches, reporting progress after each."""
    data = entry.subject.require_data("browsing the test set")
    model = private_model(entry, epoch)
    test = data.test
    n = len(test)
    predicted, confidence = np.zeros(n, np.int64), np.zeros(n, np.float64)
    device = model_device(model)
    with eval_mode(model), torch.no_grad():
        for start in range(0, n, batch):
            indices = list(range(start, min(start + batch, n)))
            x = entry.subject.inputs(test.pixels(indices)).to(device)
            p, k = model(x).softmax(dim=-1).max(dim=-1)
            predicted[start : start + len(indices)] = k.cpu().numpy()
            confidence[start : start + len(indices)] = p.double().cpu().numpy()
            progress((start + len(indices)) / n, f"classified {start + len(indices)} of {n} test images")
    return Predictions(predicted, confidence, test.labels.numpy().astype(np.int64))


@dataclass(frozen=True)
class Filter:
    """Which test images the Images view lists."""

    true: int | None = None
    predicted: int | None = None
    outcome: str = "all"  # all, right, wrong
    low: float = 0.0  # confidence at least
    high: float = 1.0  # confidence at most

    def select(self, p: Predictions) -> np.ndarray:
        keep = (p.confidence >= self.low) & (p.confidence <= self.high)
        if self.true is not None:
            keep &= p.labels == self.true
        if self.predicted is not None:
            keep &= p.predicted == self.predicted
        if self.outcome != "all":
            keep &= (p.predicted == p.labels) == (self.outcome == "right")
        return np.flatnonzero(keep)
