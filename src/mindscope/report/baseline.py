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


def choose_baseline(model: nn.Module, normalization: Normalization, shape: tuple[int, ...],
                    classes: tuple[str, ...]) -> ReportBaseline:  # fmt: skip
    """Black while the model is not confident about it; else the candidate it is least sure of."""
    candidates: dict[str, Callable[[Tensor], Tensor]] = {
        "black image": lambda x: black(x, normalization),
        "dataset-mean grey image": lambda x: dataset_mean(x, normalization),
    }
    probe = torch.zeros((1, *shape), device=model_device(model))
    scores = {}
    with eval_mode(model), torch.no_grad():
        for name, make in candidates.items():
            p, k = model(make(probe)).softmax(dim=-1)[0].max(dim=-1)
            scores[name] = (classes[int(k)], float(p))
    name = "black image" if scores["black image"][1] <= CONFIDENT else min(scores, key=lambda n: scores[n][1])
    return ReportBaseline(name, candidates[name], scores)
