"""The report's attribution sections: interior gradients and integrated gradients."""

from __future__ import annotations

import torch

from mindscope.attribution import WALKTHROUGH_ALPHAS, integrated_gradients, interior_gradients
from mindscope.attribution.alphas import refine_alphas
from mindscope.evaluation import completeness
from mindscope.render.attribution import (
    NUMERICALLY_ZERO,
    attribution_flags,
    attribution_panels,
    figure_image,
    interior_frame_figures,
    percentile_scale,
    saturation_curve,
)
from mindscope.render.html import gif_bytes
from mindscope.report.baseline import choose_baseline, data_pixel_mean
from mindscope.report.methods import HEADERS, completeness_summary
from mindscope.report.options import ReportOptions
from mindscope.report.page import Section, Table, pct
from mindscope.run import LoadedRun

MAX_CHANGE = 0.1  # the largest step of the target probability between neighbouring alphas


@torch.no_grad()
def _predictions(run: LoadedRun, n: int) -> torch.Tensor:
    device = next(run.model.parameters()).device
    return run.model(run.data.inputs(run.data.test, torch.arange(n)).to(device)).argmax(1).cpu()


def pick_images(run: LoadedRun, count: int, *, pool: int = 400) -> list[int]:
    """The first test images, about two thirds correctly classified and the rest not, by index.

    Where one kind runs short, the other fills in; fewer come back only if the test set is smaller.
    """
    n = min(pool, len(run.data.test))
    correct = _predictions(run, n) == run.data.test.labels[:n]
    right = torch.nonzero(correct).flatten().tolist()
    wrong = torch.nonzero(~correct).flatten().tolist()
    n_wrong = min(len(wrong), max(count // 3, count - len(right)))
    return sorted(right[: count - n_wrong] + wrong[:n_wrong])


def interior_section(run: LoadedRun, options: ReportOptions) -> Section:
    model, data, classes = run.model, run.data, run.classes
    index = options.interior_image if options.interior_image is not None else pick_images(run, 1)[0]
    device = next(model.parameters()).device
    x = data.inputs(data.test, [index]).to(device)
    chosen = choose_baseline(model, data.normalization, tuple(x.shape[1:]), classes, pixel_mean=data_pixel_mean(run))
    baseline = chosen.make(x)
    grid = refine_alphas(model, x, alphas=WALKTHROUGH_ALPHAS, baseline=baseline, max_change=MAX_CHANGE)
    result = interior_gradients(model, x, alphas=grid.alphas.tolist(), baseline=baseline)
    label, target = classes[int(data.test.labels[index])], classes[int(result.targets[0])]
    added = grid.added.tolist()
    sec = Section(
        "interior",
        "4. Interior gradients",
        f"The gradient of the predicted class's probability at x' + α·(x − x'), from the baseline x' at α = 0 "
        f"to test image {index} (labelled {label}) at α = 1. Positive attributions are blue, negative red. "
        + chosen.describe(),
    )
    rows = []
    for k, alpha in enumerate(result.alphas.tolist()):
        rows.append(
            [
                f"{alpha:.4g}{' +' if added[k] else ''}",
                classes[int(result.predictions[k, 0])],
                f"{float(result.probabilities[k, 0]):.3f}",
                f"{float(result.target_probabilities[k, 0]):.3f}",
                f"{float(result.gradient_norms[k, 0]):.3g}",
            ]
        )
    first, last = rows[0], rows[-1]
    flips = grid.flips(0)
    where = (
        "the prediction changes between " + ", ".join(f"α = {lo:.4g} and {hi:.4g}" for lo, hi in flips)
        if flips
        else "the prediction does not change along the path"
    )
    found = (
        f"{sum(added)} α values (marked +) were added to the walk-through's {len(WALKTHROUGH_ALPHAS)} by bisection, "
        f"wherever neighbours predicted different classes or p({target}) moved by more than {MAX_CHANGE:g}"
    )
    sec.tables.append(
        Table(
            f"Prediction at each α: '{first[1]}' at α = {result.alphas[0]:.4g}, '{last[1]}' at α = 1; "
            f"{where}. {found}.",
            ["α", "predicted", "probability", f"p({target})", "|gradient|"],
            rows,
        )
    )
    figures = interior_frame_figures(result, x, classes, to_pixels=data.normalization.invert)
    maps = result.gradients[:, 0].sum(1)  # (A, H, W) as drawn
    scale = percentile_scale(maps.cpu().numpy(), 99.0)
    norms = result.gradient_norms[:, 0]
    zero = [f"{a:.4g}" for a, n in zip(result.alphas.tolist(), norms.tolist()) if n <= NUMERICALLY_ZERO * norms.max()]
    zeros = (
        f"; at α = {', '.join(zero)} the gradient is numerically zero (below {NUMERICALLY_ZERO:g} of the largest), "
        "as those frames say"
        if zero
        else ""
    )
    sec.add(
        gif_bytes([figure_image(f) for f in figures], duration_ms=700),
        f"Interior gradients at {len(rows)} values of α, with the prediction on each frame. One colour scale "
        f"for every frame: ±{scale:.2g} (the 99th percentile of |gradient| over all frames; larger values "
        f"saturate){zeros}.",
        gif=True,
    )
    sec.add(
        saturation_curve(result, classes, added=grid.added),
        f"Saturation: the gradient norm goes from {float(norms[0]):.3g} at α = {first[0]} to "
        f"{float(norms[-1]):.3g} at α = 1 while p({target}) goes from {first[3]} to {last[3]}; "
        f"hollow points are the α values added by bisection.",
    )
    return sec


def integrated_section(run: LoadedRun, options: ReportOptions) -> Section:
    model, data, classes = run.model, run.data, run.classes
    indices = pick_images(run, options.attribution_images)
    device = next(model.parameters()).device
    x = data.inputs(data.test, indices).to(device)
    chosen = choose_baseline(model, data.normalization, tuple(x.shape[1:]), classes, pixel_mean=data_pixel_mean(run))
    result = integrated_gradients(model, x, baseline=chosen.make(x), tolerance=options.tolerance)
    labels = data.test.labels[indices]
    sec = Section(
        "integrated",
        "5. Integrated gradients",
        f"Integrated gradients from the {chosen.name} to {len(indices)} test images, refined per image until "
        f"the relative completeness error and the estimated map error are below {pct(options.tolerance)} "
        f"(or the step budget is spent). Blue: evidence for the predicted class; red: against. " + chosen.describe(),
    )
    flags = attribution_flags(result)
    percent = HEADERS["completeness_error"][1]
    rows = []
    for i, idx in enumerate(indices):
        rows.append(
            [
                idx,
                classes[int(labels[i])],
                classes[int(result.predictions[i])],
                f"{float(result.probabilities[i]):.3f}",
                percent.format(float(result.relative_completeness_error[i])),
                f"{100 * float(result.map_error[i]):.2f}%" if result.map_error is not None else "-",
                int(result.steps[i]),
                flags[i] or "-",
            ]
        )
    summary = completeness_summary(completeness(result), indices)
    sec.tables.append(
        Table(
            f"Per image: {summary}; {int(result.steps.sum())} gradient steps in all.",
            ["image", "label", "predicted", "probability", "completeness error", "map error", "steps", "flag"],
            rows,
        )
    )
    pixels = data.normalization.invert(x.cpu())
    sec.add(
        attribution_panels(pixels, result, classes),
        f"Image, signed overlay (blue +, red -) and |attribution| for test images {indices}, each row on its "
        f"own colour scale (± the 99th percentile of its |attribution|, given in its titles); {summary}; "
        f"steps {int(result.steps.min())}–{int(result.steps.max())}.",
    )
    return sec


def attribution_sections(run: LoadedRun, options: ReportOptions) -> list[Section]:
    return [interior_section(run, options), integrated_section(run, options)]
