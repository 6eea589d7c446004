"""What the Trust view computes: the checks of `mindscope evaluate` for the chosen images, with progress.

The same four methods and settings as `mindscope evaluate` (report.methods.standard_methods:
interior gradients at alpha 0.5, integrated gradients to the tolerance, SmoothGrad with 16
copies), the same table and captions, on a private copy of the model so that the run's
other views stay responsive while it works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mindscope._util import model_device
from mindscope.evaluation import evaluate_methods, parameterised_layers
from mindscope.render.evaluation import deletion_figure, localisation_figure, randomisation_figure
from mindscope.report import methods as report
from mindscope.report.trust import _cell  # the report's one way to write a check's value
from mindscope.serve.attribution_views import BASELINES
from mindscope.serve.catalog import Entry
from mindscope.serve.pictures import Picture, Rendered
from mindscope.serve.training_views import private_model

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class TrustView:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str
    pictures: tuple[tuple[Picture, str], ...]  # (figure, caption)


def trust_view(
    entry: Entry,
    epoch: int | None,
    pixels: Tensor,
    masks: Tensor | None,
    names: list[str],
    baseline: str,
    tolerance: float,
    progress: Progress,
) -> TrustView:
    """Run every check for each method on `pixels` (n, C, H, W); masks (n, H, W) or None skip localisation."""
    model = private_model(entry, epoch)
    norm = entry.subject.normalization
    make, mean = BASELINES[baseline][1], entry.pixel_mean()

    def start(x: Tensor) -> Tensor:
        return make(x, norm, mean)

    settings = dict(alpha=0.5, tolerance=tolerance, samples=16, seed=0, baseline=start)
    every = report.standard_methods(norm, **settings)
    methods = {name: every[name] for name in (*report.METHOD_NAMES, "gradcam")}  # as the report's section 6
    budget = report.standard_methods(norm, **settings, max_steps=report.RANDOMISED_MAX_STEPS)
    x = entry.subject.inputs(pixels).to(model_device(model))
    total = len(methods) * (1 + len(parameterised_layers(model)))
    done = [0]

    def step(label: str) -> None:
        done[0] += 1
        progress(done[0] / total, label)

    with torch.enable_grad():
        table = evaluate_methods(
            model,
            x,
            None,
            None if masks is None else masks.to(x.device),
            methods,
            baseline=start,
            progress=step,
            randomised={"integrated": budget["integrated"]},
        )
    rows = tuple((r.name, *(_cell(k, v) for k, v in r.summary().items())) for r in table.rows)
    caption = (
        f"Methods × checks on {', '.join(names)}, from the {BASELINES[baseline][0]}; sanity passes when the rank "
        f"correlation of |map| with the original falls below {table.threshold:g} once every layer is randomised; "
        f"{report.randomisation_pixels(table)}. {report.chance_verdicts(table, numbers=False)}"
    )
    integrated = next((r for r in table.rows if r.completeness is not None), None)
    if integrated is not None:
        caption += f" {integrated.name}: {report.completeness_summary(integrated.completeness, names)}."
    pictures = [
        (
            Rendered(randomisation_figure({r.name: r.randomisation for r in table.rows})).picture(),
            "Similarity of each method's map to its original as layers are randomised, top down.",
        ),
        (
            Rendered(deletion_figure({r.name: r.deletion for r in table.rows})).picture(),
            "Target probability as pixels are deleted or inserted in attribution order, against a random order. "
            + report.chance_verdicts(table),
        ),
    ]
    if masks is not None:
        pictures.append(
            (
                Rendered(localisation_figure({r.name: r.localisation for r in table.rows})).picture(),
                "Share of positive attribution inside the object mask, and the pointing game, against a random map.",
            )
        )
    headers = ("method", *(report.HEADERS[k][0] for k in table.checks))
    return TrustView(headers, rows, caption, tuple(pictures))
