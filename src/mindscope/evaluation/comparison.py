"""Compare attribution methods side by side: every trust check for each, as one table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from mindscope.baselines import Baseline
from mindscope.evaluation.common import Method, Progress, attribution_tensor, check_inputs, fixed_targets
from mindscope.evaluation.faithfulness import DeletionResult, deletion_insertion
from mindscope.evaluation.localisation import CompletenessResult, LocalisationResult, completeness, localisation
from mindscope.evaluation.randomisation import RANDOMISATION_THRESHOLD, RandomisationResult, randomisation_check
from mindscope.inputs import unit_shape


@dataclass(frozen=True, eq=False)
class MethodEvaluation:
    """Every check for one method on one batch of images."""

    name: str
    attributions: Tensor  # the method's maps on the untouched model, shaped like x
    randomisation: RandomisationResult
    deletion: DeletionResult
    localisation: LocalisationResult | None  # None without masks
    completeness: CompletenessResult | None  # None where the method has none

    def summary(self) -> dict[str, float]:
        """One number per check (nan where a check does not apply), in table order."""
        nan = float("nan")
        loc, comp = self.localisation, self.completeness
        return {
            "randomised_spearman_abs": self.randomisation.final_abs,
            "randomised_spearman_signed": self.randomisation.final_signed,
            "randomisation_passed": float(self.randomisation.passed),
            "deletion_auc": self.deletion.deletion_auc,
            "deletion_margin": self.deletion.deletion_margin,
            "insertion_auc": self.deletion.insertion_auc,
            "insertion_margin": self.deletion.insertion_margin,
            "mass_inside": loc.mass if loc else nan,
            "random_mass_inside": loc.random_mass if loc else nan,
            "pointing": loc.pointing_rate if loc else nan,
            "random_pointing": loc.random_pointing_rate if loc else nan,
            "completeness_error": comp.worst_relative if comp else nan,
            "completeness_set_aside": float(comp.set_aside) if comp else nan,
        }


@dataclass(frozen=True, eq=False)
class EvaluationTable:
    """Methods x checks."""

    rows: tuple[MethodEvaluation, ...]
    threshold: float  # the randomisation pass threshold used

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rows)

    @property
    def checks(self) -> tuple[str, ...]:
        return tuple(self.rows[0].summary())

    def values(self) -> np.ndarray:
        """(methods, checks) float64, nan where a check does not apply."""
        return np.array([list(r.summary().values()) for r in self.rows], dtype=np.float64)


def evaluate_methods(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None,
    masks: Tensor | None,
    methods: Mapping[str, Method],
    *,
    baseline: Baseline = None,
    layers: Sequence[str | int] | str | None = None,
    steps: int = 16,
    seed: int = 0,
    threshold: float = RANDOMISATION_THRESHOLD,
    max_batch: int = 128,
    progress: Progress | None = None,
    randomised: Mapping[str, Method] | None = None,
    layout: str | None = None,
) -> EvaluationTable:
    """Run every check for each method side by side; `masks` None skips localisation.

    Targets are fixed once from the model (its predictions when `target` is None).
    `baseline` is what removed pixels become in deletion/insertion (zeros of x's space unless
    given); given, the randomisation check compares maps only where x differs from it (None:
    on all pixels). The methods carry their own baselines. `progress(label)` is called after each
    of the len(methods) x (1 + layers) attributions. `randomised` may give, by name, the
    function to run on the randomised copies instead (the same method on a smaller step
    budget, say): the maps judged by every other check are always `methods`'.

    x is any batch (N, ...) with `layout` (`mindscope.inputs`; by its rule when None): the
    checks then work per unit (pixel, feature of a row, position of a sequence), and `masks`
    are (N, *units): (N, H, W) for images, (N, F) for rows, (N, L) for sequences.
    """
    layout = check_inputs(x, layout)
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("methods must be a non-empty dict {name: function (model, x, targets) -> Attribution}")
    units = unit_shape(x.shape, layout)
    if masks is not None and (not isinstance(masks, Tensor) or tuple(masks.shape) != (x.shape[0], *units)):
        raise ValueError(
            f"masks of shape {tuple(getattr(masks, 'shape', ()))} do not fit x of shape {tuple(x.shape)} "
            f"({layout}); give one mask per example, {(x.shape[0], *units)}, True where the object is, or None"
        )
    targets = fixed_targets(model, x, target, max_batch)
    rows = []
    for name, method in methods.items():
        if not callable(method):
            raise TypeError(f"method {name!r} must be a function (model, x, targets), got {type(method).__name__}")
        result = method(model, x, targets)
        maps = attribution_tensor(result)
        if progress is not None:
            progress(f"{name}: original model")
        report = None if progress is None else (lambda label, _name=name: progress(f"{_name}: {label}"))
        rows.append(
            MethodEvaluation(
                name,
                maps,
                randomisation_check(
                    model,
                    x,
                    targets,
                    (randomised or {}).get(name, method),
                    layers=layers,
                    seed=seed,
                    threshold=threshold,
                    baseline=baseline,
                    reference=maps,
                    max_batch=max_batch,
                    progress=report,
                    layout=layout,
                ),
                deletion_insertion(
                    model,
                    x,
                    targets,
                    maps,
                    baseline=baseline,
                    steps=steps,
                    seed=seed,
                    max_batch=max_batch,
                    layout=layout,
                ),
                None if masks is None else localisation(maps, masks, seed=seed, layout=layout),
                completeness(result),
            )
        )
    return EvaluationTable(tuple(rows), float(threshold))
