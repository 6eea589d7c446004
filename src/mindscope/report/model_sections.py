"""The report's first sections for a model trained elsewhere: its card, and its weights as loaded.

An outside model has no training history, so there is no curve, no before/after and no
change table; the page says so instead of leaving a gap. What mindscope assumed about the
model's input is printed in the card, because a wrong guess there changes every later figure.
"""

from __future__ import annotations

import torch

from mindscope.layers import numbered_layers
from mindscope.render.weights import weight_histogram_figures
from mindscope.report.page import Section, Table, pct
from mindscope.subject import Subject
from mindscope.weights import select_tensors, weight_histograms

BATCH = 256


@torch.no_grad()
def accuracy(subject: Subject, *, limit: int = 2000) -> tuple[float, int] | None:
    """Top-1 accuracy on the first `limit` test images, and how many; None without data."""
    if subject.data is None:
        return None
    test = subject.data.test
    n = min(limit, len(test))
    device = next(subject.model.parameters(), torch.empty(0)).device
    right = 0
    for start in range(0, n, BATCH):
        idx = torch.arange(start, min(n, start + BATCH))
        scores = subject.model(subject.inputs(test.pixels(idx)).to(device))
        right += int((scores.argmax(1).cpu() == test.labels[idx]).sum())
    return right / n, n


def model_card_section(subject: Subject) -> Section:
    """Section 1 for an outside model: where it came from, what it expects, how it scores."""
    params = sum(p.numel() for p in subject.model.parameters())
    numbered = numbered_layers(subject.model)
    sec = Section(
        "experiment",
        "1. The model",
        f"A model trained elsewhere, loaded from {subject.source}: {params:,} parameters, "
        f"{len(numbered)} convolution and linear layers. It has no training history here, so there are "
        "no training curves.",
    )
    rows = [[line.split(":", 1)[0], line.split(":", 1)[1].strip()] for line in subject.describe()]
    scored = accuracy(subject)
    if scored is not None:
        value, n = scored
        rows.append(["accuracy", f"{pct(value)} on {n:,} images of {subject.data.spec}"])
    sec.tables.append(Table("What the model is, and what mindscope assumed about its input.", ["", ""], rows))
    sec.tables.append(
        Table("Class numbers and names.", ["class", "name"], [[i, name] for i, name in enumerate(subject.classes)])
    )
    return sec


def weights_as_loaded_section(subject: Subject) -> Section:
    """Section 2 for an outside model: its weights as they are, and why nothing is compared."""
    tensors = select_tensors(subject.model, None)
    weights = [n for n in tensors if n.endswith(("weight", "kernel"))] or list(tensors)
    histograms = weight_histograms({n: tensors[n] for n in weights})
    sec = Section(
        "weights",
        "2. Weights",
        "The weights as loaded, three layers to a figure. A model trained elsewhere brings no earlier "
        "weights, so the before/after comparison, the change table and the paths through training are left out.",
    )
    for i, fig in enumerate(weight_histogram_figures(histograms, None, labels=("as loaded",), tensors=weights)):
        names = weights[3 * i : 3 * i + 3]
        spans = "; ".join(f"{n}: std {histograms[n].stats.std:.3f}" for n in names)
        sec.add(fig, f"Weights as loaded (density), {spans}.")
    return sec


def report_layers(subject: Subject, wanted: tuple[int, ...]) -> tuple[int, ...]:
    """The walk-through's layers where the model has them; else three spread through its depth."""
    modules = dict(subject.model.named_modules())
    numbered = numbered_layers(subject.model)
    numbers = [n for n, name in sorted(numbered.items()) if type(modules[name]).__name__ in ("Conv2d", "Conv2D")]
    if subject.run is not None or all(n in numbers for n in wanted) or not numbers:
        return wanted
    picks = sorted({numbers[max(0, round(len(numbers) * k / 3) - 1)] for k in (1, 2, 3)})
    return tuple(picks)
