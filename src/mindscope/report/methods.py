"""The methods the report and the CLI compare, and the trust table laid out as text.

`standard_methods` gives the four methods of the walk-through (gradient, interior gradients
at one alpha, integrated gradients, SmoothGrad), each a function `(model, x, targets) ->
Attribution | Tensor` ready for `mindscope.evaluation.evaluate_methods`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor, nn

from mindscope.attribution import gradients, integrated_gradients, interior_gradients, smoothgrad
from mindscope.baselines import black
from mindscope.evaluation import EvaluationTable, Method
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
