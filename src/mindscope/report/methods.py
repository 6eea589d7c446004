"""The methods the report and the CLI compare, and the trust table laid out as text.

`standard_methods` gives the four methods of the walk-through (gradient, interior gradients
at one alpha, integrated gradients, SmoothGrad) and two more (Grad-CAM of the last spatial
layer, occlusion), each a function `(model, x, targets) -> Attribution | Tensor` ready for
`mindscope.evaluation.evaluate_methods`. Integrated gradients run in tolerance mode, as
in the report's section 5, so that the trust checks judge the maps the page shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor, nn

from mindscope.attribution import (
    grad_cam,
    gradients,
    integrated_gradients,
    interior_gradients,
    occlusion,
    smoothgrad,
)
from mindscope.baselines import black
from mindscope.evaluation import CompletenessResult, EvaluationTable, Method
from mindscope.render.attribution import flag_text

if TYPE_CHECKING:
    from mindscope.data import Normalization

METHOD_NAMES = ("gradient", "interior", "integrated", "smoothgrad")  # the walk-through's: the default
MORE_METHODS = ("gradcam", "occlusion")  # chosen by name (--methods)
OCCLUSION_WINDOW = (8, 8)  # pixels of every channel; 49 windows on a 32x32 image at stride 4
OCCLUSION_STRIDE = (4, 4)
# Integrated gradients' step budget per image on the randomised copies of the trust checks:
# there F(x) and F(x') are both about 0, no tolerance is reachable, and ranks need no 1%.
RANDOMISED_MAX_STEPS = 128


def standard_methods(
    normalization: Normalization,
    *,
    alpha: float,
    tolerance: float,
    samples: int,
    seed: int,
    max_steps: int = 2048,
    baseline: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Method]:
    """The CLI's methods, with `baseline` (default: black images) where they need one.

    Integrated gradients refine each path until the relative completeness error and the
    map error estimate are below `tolerance` (or `max_steps` are spent), as in the report.
    Grad-CAM explains the last spatial layer and gives one map per pixel (N, H, W);
    occlusion replaces 8x8 windows at stride 4 by the baseline.
    """

    if baseline is None:

        def baseline(x: Tensor) -> Tensor:
            return black(x, normalization)

    def gradient(model: nn.Module, x: Tensor, targets: Tensor):
        return gradients(model, x, targets)

    def interior(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
        # input-scaled interior gradient, (x - x') * dF/dx at x' + alpha (x - x')
        result = interior_gradients(model, x, targets, alphas=[alpha], baseline=baseline)
        return (x - result.baseline) * result.gradients[0]

    def integrated(model: nn.Module, x: Tensor, targets: Tensor):
        return integrated_gradients(model, x, targets, baseline=baseline, tolerance=tolerance, max_steps=max_steps)

    def smooth(model: nn.Module, x: Tensor, targets: Tensor):
        return smoothgrad(gradients, model, x, targets, samples=samples, seed=seed)

    def gradcam(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
        return grad_cam(model, x, targets).maps  # (N, H, W); a Keras model states its channels last

    def occluded(model: nn.Module, x: Tensor, targets: Tensor):
        return occlusion(model, x, targets, window=OCCLUSION_WINDOW, stride=OCCLUSION_STRIDE, baseline=baseline)

    return {
        "gradient": gradient,
        "interior": interior,
        "integrated": integrated,
        "smoothgrad": smooth,
        "gradcam": gradcam,
        "occlusion": occluded,
    }


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
    "completeness_error": ("compl. err (worst)", "{:.3%}"),
    "completeness_set_aside": ("set aside", "{:.0f}"),
}


def completeness_summary(comp: CompletenessResult, images: Sequence[int]) -> str:
    """Say the worst relative completeness error, over which images, and which were set aside and why.

    The one wording of this figure, wherever the report or the CLI shows it.
    """
    kept = len(images) - comp.set_aside
    if kept:
        worst = HEADERS["completeness_error"][1].format(comp.worst_relative)
        text = f"worst relative completeness error {worst} over {kept} well-conditioned image{'s' if kept != 1 else ''}"
    else:
        text = "no well-conditioned image to measure a relative completeness error on"
    notes = []
    for i, image in enumerate(images):
        flag = flag_text(bool(comp.ill_conditioned[i]), bool(comp.converged[i]))
        if flag:
            notes.append(f"image {image}: {flag}")
    if comp.set_aside:
        text += f", {comp.set_aside} set aside as ill-conditioned"
    return text + (f" ({'; '.join(notes)})" if notes else "")


def randomisation_pixels(table: EvaluationTable) -> str:
    """Say which pixels the randomisation check compared, and what all pixels would have given."""
    first = table.rows[0].randomisation
    if first.compared is None:
        return "the randomisation check compares the maps on all pixels"
    if bool((first.compared == 1).all()):
        return (
            "the randomisation check compares the maps on the pixels that can carry attribution, where the "
            "image differs from the baseline: here every pixel does"
        )
    everywhere = ", ".join(f"{r.name} {r.randomisation.final_abs_all:.2f}" for r in table.rows)
    return (
        f"the randomisation check compares the maps on the pixels that can carry attribution, where the "
        f"image differs from the baseline, only ({float(first.compared.mean()):.0%} of pixels on average; the others "
        f"get no attribution from a path method whatever the weights); over all pixels the final rank "
        f"correlation of |map| would be {everywhere}"
    )


def _verdict(margin: float, shown: str) -> str:
    if float(shown) == 0:  # the margin rounds to zero where it is shown
        return "no better than chance"
    return "beats chance" if margin > 0 else "worse than chance"


def chance_verdicts(table: EvaluationTable, *, numbers: bool = True) -> str:
    """Say, from the numbers, which way deletion and insertion are better and which method beat chance.

    Without `numbers`, only the rule and each method's verdict (for a caption beside the table).
    """
    parts = []
    rules = {
        "deletion": "a faithful map removes the evidence first, so a LOWER area is better; "
        "del +chance = the random order's area minus the method's",
        "insertion": "a HIGHER area is better; ins +chance = the method's area minus the random order's",
    }
    for kind, rule in rules.items():
        verdicts = []
        for row in table.rows:
            d = row.deletion
            area, random = float(d.auc(getattr(d, kind)).mean()), float(d.auc(getattr(d, f"random_{kind}")).mean())
            margin = d.deletion_margin if kind == "deletion" else d.insertion_margin
            shown = HEADERS[f"{kind}_margin"][1].format(margin)
            detail = f" {area:.3f} vs random {random:.3f}: {shown}," if numbers else ""
            verdicts.append(f"{row.name}{detail} {_verdict(margin, shown)}")
        parts.append(f"{kind.capitalize()} ({rule}; positive beats chance): {'; '.join(verdicts)}.")
    return " ".join(parts)


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
        f"{table.threshold:g}); del/ins +chance: AUC margin over a random pixel order, positive beats "
        f"chance (deletion: random - method, lower area is better; insertion: method - random); "
        f"mask mass, pointing: vs a random map; compl. err (worst): over well-conditioned images, "
        f"set aside: images with nothing to explain (F(x) ~ F(x'))"
    )
    return "\n".join(lines + [note, randomisation_pixels(table)])
