"""Compare attribution methods side by side: every trust check for each, as one table.

The checks themselves live in `mindscope.evaluation`; `standard_methods` gives the four
methods the walk-through compares (gradient, interior gradients at one alpha, integrated
gradients, SmoothGrad), each a function `(model, x, targets) -> Attribution | Tensor`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor, nn

from mindscope.attribution import Baseline, black, gradients, integrated_gradients, interior_gradients, smoothgrad
from mindscope.evaluation import (
    RANDOMISATION_THRESHOLD,
    CompletenessResult,
    DeletionResult,
    LocalisationResult,
    Method,
    Progress,
    RandomisationResult,
    _check_images,
    _targets,
    attribution_tensor,
    completeness,
    deletion_insertion,
    localisation,
    randomisation_check,
)
from mindscope.quadrature import gauss_legendre

if TYPE_CHECKING:
    from mindscope.data import Normalization

METHOD_NAMES = ("gradient", "interior", "integrated", "smoothgrad")


def standard_methods(
    normalization: Normalization, *, alpha: float, ig_points: int, samples: int, seed: int
) -> dict[str, Method]:
    """The CLI's methods, all with black images as the baseline where they need one."""

    def baseline(x: Tensor) -> Tensor:
        return black(x, normalization)

    def gradient(model: nn.Module, x: Tensor, targets: Tensor):
        return gradients(model, x, targets)

    def interior(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
        # input-scaled interior gradient, (x - x') * dF/dx at x' + alpha (x - x')
        result = interior_gradients(model, x, targets, alphas=[alpha], baseline=baseline)
        return (x - result.baseline) * result.gradients[0]

    def integrated(model: nn.Module, x: Tensor, targets: Tensor):
        return integrated_gradients(model, x, targets, baseline=baseline, rule=gauss_legendre(ig_points))

    def smooth(model: nn.Module, x: Tensor, targets: Tensor):
        return smoothgrad(gradients, model, x, targets, samples=samples, seed=seed)

    return {"gradient": gradient, "interior": interior, "integrated": integrated, "smoothgrad": smooth}


@dataclass(frozen=True, eq=False)
class MethodEvaluation:
    """Every check for one method on one batch of images."""

    name: str
    attributions: Tensor  # (N, C, H, W) the method's maps on the untouched model
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
            "completeness_error": comp.mean_relative if comp else nan,
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
) -> EvaluationTable:
    """Run every check for each method side by side; `masks` None skips localisation.

    Targets are fixed once from the model (its predictions when `target` is None).
    `baseline` is what removed pixels become in deletion/insertion (zeros of x's space unless
    given); the methods carry their own baselines. `progress(label)` is called after each
    of the len(methods) x (1 + layers) attributions.
    """
    _check_images(x)
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("methods must be a non-empty dict {name: function (model, x, targets) -> Attribution}")
    if masks is not None and (not isinstance(masks, Tensor) or tuple(masks.shape) != (x.shape[0], *x.shape[2:])):
        raise ValueError(
            f"masks of shape {tuple(getattr(masks, 'shape', ()))} do not fit images of shape "
            f"{tuple(x.shape)}; give one (H, W) mask per image, (N={x.shape[0]}, H, W), or None"
        )
    targets = _targets(model, x, target, max_batch)
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
                    method,
                    layers=layers,
                    seed=seed,
                    threshold=threshold,
                    reference=maps,
                    max_batch=max_batch,
                    progress=report,
                ),
                deletion_insertion(
                    model, x, targets, maps, baseline=baseline, steps=steps, seed=seed, max_batch=max_batch
                ),
                None if masks is None else localisation(maps, masks, seed=seed),
                completeness(result),
            )
        )
    return EvaluationTable(tuple(rows), float(threshold))


HEADERS = {  # summary key -> (column header, format)
    "randomised_spearman_abs": ("rand rho|.|", "{:.2f}"),
    "randomised_spearman_signed": ("rand rho", "{:.2f}"),
    "randomisation_passed": ("sanity", "pass/FAIL"),
    "deletion_auc": ("del AUC", "{:.3f}"),
    "deletion_margin": ("del +chance", "{:+.3f}"),
    "insertion_auc": ("ins AUC", "{:.3f}"),
    "insertion_margin": ("ins +chance", "{:+.3f}"),
    "mass_inside": ("mask mass", "{:.2f}"),
    "random_mass_inside": ("(random)", "{:.2f}"),
    "pointing": ("pointing", "{:.2f}"),
    "random_pointing": ("(random)", "{:.2f}"),
    "completeness_error": ("compl. err", "{:.1e}"),
}


def format_table(table: EvaluationTable) -> str:
    """Render methods x checks as aligned text, '-' where a check does not apply."""

    def cell(key: str, value: float) -> str:
        if not np.isfinite(value):
            return "-"
        fmt = HEADERS[key][1]
        return ("pass" if value else "FAIL") if fmt == "pass/FAIL" else fmt.format(value)

    header = ["method"] + [HEADERS[k][0] for k in table.checks]
    body = [[r.name] + [cell(k, v) for k, v in r.summary().items()] for r in table.rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(wd) if i == 0 else c.rjust(wd) for i, (c, wd) in enumerate(zip(line, widths)))
        for line in [header] + body
    ]
    note = (
        f"rand rho: Spearman with the original map once all layers are randomised (sanity: |.| below "
        f"{table.threshold:g}); del/ins +chance: AUC margin over a random pixel order; "
        f"mask mass, pointing: vs a random map"
    )
    return "\n".join(lines + [note])
