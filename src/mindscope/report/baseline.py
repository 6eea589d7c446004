"""Which baseline the report's path methods start from, and what the model makes of it.

The walk-through starts from a black image. A baseline that the model already classifies
with confidence leaves nothing to explain (F(x) - F(x') is about 0 for that class) and pulls
every deleted pixel towards that class, so the report keeps black only while the model gives
no class more than CONFIDENT for it; otherwise it takes the candidate the model is least sure
about, and the page says what each candidate scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mindscope._util import eval_mode, model_device
from mindscope.baselines import black, dataset_mean
from mindscope.data import Normalization

CONFIDENT = 0.5  # a baseline the model gives any class more than this is a class, not "nothing"


@dataclass(frozen=True)
class ReportBaseline:
    name: str  # "black image" or "dataset-mean grey image"
    make: Callable[[Tensor], Tensor]  # x -> x' in x's (normalised) space
    scores: dict[str, tuple[str, float]]  # candidate -> (the class the model picks for it, its probability)

    def describe(self) -> str:
        """One sentence for the page: the baseline used, and why."""
        parts = [f"{name} → '{cls}' (p = {p:.3f})" for name, (cls, p) in self.scores.items()]
        chosen = self.scores[self.name]
        why = (
            f"the model scores it at most {CONFIDENT:g} for any class"
            if chosen[1] <= CONFIDENT
            else "the least confident candidate, though the model still picks a class for it"
        )
        return f"Baseline: the {self.name} ({why}). What the model makes of each candidate: {'; '.join(parts)}."


def choose_baseline(
    model: nn.Module,
    normalization: Normalization,
    shape: tuple[int, ...],
    classes: tuple[str, ...],
    *,
    pixel_mean: tuple[float, ...] | None = None,
) -> ReportBaseline:
    """Black while the model is not confident about it; else the candidate it is least sure of.

    The grey candidate is the data's mean pixel: `pixel_mean` where given (a model trained
    elsewhere, whose normalisation is not its data's statistics), else the normalisation's mean.
    """

    candidates: dict[str, Callable[[Tensor], Tensor]] = {
        "black image": lambda x: black(x, normalization),
        "dataset-mean grey image": lambda x: dataset_mean(x, normalization, mean=pixel_mean),
    }
    probe = torch.zeros((1, *shape), device=model_device(model))
    scores = {}
    with eval_mode(model), torch.no_grad():
        for name, make in candidates.items():
            p, k = model(make(probe)).softmax(dim=-1)[0].max(dim=-1)
            scores[name] = (classes[int(k)], float(p))
    name = "black image" if scores["black image"][1] <= CONFIDENT else min(scores, key=lambda n: scores[n][1])
    return ReportBaseline(name, candidates[name], scores)


def data_pixel_mean(subject: object, *, limit: int = 2000) -> tuple[float, ...] | None:
    """The mean pixel per channel of a model trained elsewhere's test images; None for a run of ours."""
    card = getattr(subject, "card", None)
    if card is None:
        return None  # a run: its normalisation was fitted on (or fixed for) its own data
    if subject.data is None:  # type: ignore[attr-defined]
        if card.mean is not None:
            return None  # the card's mean: the pixel the model's own training data averaged
        raise ValueError(
            "the dataset-mean baseline is the mean pixel of the data, and no data was given: "
            "give --data, or the model's mean (--mean or the card), or another baseline"
        )
    test = subject.data.test  # type: ignore[attr-defined]
    pixels = test.pixels(torch.arange(min(limit, len(test)))).double()
    return tuple(pixels.mean(dim=(0, 2, 3)).tolist())
