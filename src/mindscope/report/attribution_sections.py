"""The report's attribution sections: interior gradients, integrated gradients, trust checks."""

from __future__ import annotations

import torch

from mindscope.attribution import integrated_gradients, interior_gradients
from mindscope.baselines import black
from mindscope.evaluation import evaluate_methods
from mindscope.render.attribution import attribution_panels, interior_frames, saturation_curve
from mindscope.render.evaluation import deletion_figure, localisation_figure, randomisation_figure
from mindscope.render.html import gif_bytes
from mindscope.report.methods import HEADERS, standard_methods
from mindscope.report.options import ReportOptions
from mindscope.report.page import Section, Table, pct
from mindscope.run import LoadedRun


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
    result = interior_gradients(model, x, baseline=black(x, data.normalization))
    label = classes[int(data.test.labels[index])]
    sec = Section(
        "interior",
        "4. Interior gradients",
        f"The gradient of the predicted class's probability at scaled inputs α·x (black image at α = 0) "
        f"for test image {index} (a {label}). Positive attributions are blue, negative red.",
    )
    rows = []
    for k, alpha in enumerate(result.alphas.tolist()):
        rows.append(
            [
                f"{alpha:.2f}",
                classes[int(result.predictions[k, 0])],
                f"{float(result.probabilities[k, 0]):.3f}",
                f"{float(result.target_probabilities[k, 0]):.3f}",
                f"{float(result.gradient_norms[k, 0]):.3g}",
            ]
        )
    first, last = rows[0], rows[-1]
    sec.tables.append(
        Table(
            f"Prediction at each α: '{first[1]}' at α = {first[0]}, '{last[1]}' at α = 1.",
            ["α", "predicted", "probability", f"p({classes[int(result.targets[0])]})", "|gradient|"],
            rows,
        )
    )
    frames = interior_frames(result, x, classes, to_pixels=data.normalization.invert)
    sec.add(
        gif_bytes(frames, duration_ms=800),
        f"Interior gradients over α = {', '.join(r[0] for r in rows)}, with the prediction on each frame.",
        gif=True,
    )
    norms = result.gradient_norms[:, 0]
    sec.add(
        saturation_curve(result, classes),
        f"Saturation: the gradient norm goes from {float(norms[0]):.3g} at α = {first[0]} to "
        f"{float(norms[-1]):.3g} at α = 1 while p({classes[int(result.targets[0])]}) rises to {last[3]}.",
    )
    return sec


def integrated_section(run: LoadedRun, options: ReportOptions) -> Section:
    model, data, classes = run.model, run.data, run.classes
    indices = pick_images(run, options.attribution_images)
    device = next(model.parameters()).device
    x = data.inputs(data.test, indices).to(device)
    result = integrated_gradients(model, x, baseline=black(x, data.normalization), tolerance=options.tolerance)
    labels = data.test.labels[indices]
    sec = Section(
        "integrated",
        "5. Integrated gradients",
        f"Integrated gradients from a black image to {len(indices)} test images, refined per image until "
        f"the relative completeness error and the estimated map error are below {pct(options.tolerance)} "
        f"(or the step budget is spent). Blue: evidence for the predicted class; red: against.",
    )
    rows = []
    for i, idx in enumerate(indices):
        rows.append(
            [
                idx,
                classes[int(labels[i])],
                classes[int(result.predictions[i])],
                f"{float(result.probabilities[i]):.3f}",
                f"{100 * float(result.relative_completeness_error[i]):.3f}%",
                f"{100 * float(result.map_error[i]):.2f}%" if result.map_error is not None else "-",
                int(result.steps[i]),
            ]
        )
    worst = float(result.relative_completeness_error.max())
    sec.tables.append(
        Table(
            f"Per image: worst relative completeness error {100 * worst:.3f}%, "
            f"{int(result.steps.sum())} gradient steps in all.",
            ["image", "label", "predicted", "probability", "completeness error", "map error", "steps"],
            rows,
        )
    )
    pixels = data.normalization.invert(x.cpu())
    sec.add(
        attribution_panels(pixels, result, classes),
        f"Image, signed overlay (blue +, red -) and |attribution| for test images {indices}; "
        f"completeness errors ≤ {100 * worst:.3f}%, steps {int(result.steps.min())}–{int(result.steps.max())}.",
    )
    return sec


def attribution_sections(run: LoadedRun, options: ReportOptions) -> list[Section]:
    return [interior_section(run, options), integrated_section(run, options)]


def _cell(key: str, value: float) -> str:

    if value != value:  # nan: the check does not apply
        return "-"
    fmt = HEADERS[key][1]
    return ("pass" if value else "FAIL") if fmt == "pass/FAIL" else fmt.format(value)


def trust_section(run: LoadedRun, options: ReportOptions) -> Section:

    model, data = run.model, run.data
    indices = pick_images(run, options.evaluation_images)
    device = next(model.parameters()).device
    x = data.inputs(data.test, indices).to(device)
    masks = None if data.test.masks is None else data.test.masks[indices].to(device)
    baseline = black(x, data.normalization)
    methods = standard_methods(data.normalization, alpha=0.5, ig_points=16, samples=16, seed=0)
    table = evaluate_methods(model, x, None, masks, methods, baseline=baseline)

    sec = Section(
        "trust",
        "6. How far to trust these maps",
        "Sanity and faithfulness checks for each method on the same images: cascading randomisation of "
        "the weights from the top layer down (a map that survives it does not explain the model), "
        "deletion and insertion of pixels in attribution order against a random order, and, where the "
        "data has object masks, how much positive attribution lands on the object.",
    )
    checks = table.checks
    rows = [[r.name] + [_cell(key, value) for key, value in r.summary().items()] for r in table.rows]
    sec.tables.append(
        Table(
            f"Methods × checks on {len(indices)} test images. Sanity passes when the rank correlation of |map| with "
            f"the original falls below {table.threshold} once every layer is randomised; '+chance' is the margin of "
            "the deletion/insertion area over a random pixel order (deletion: lower is better, so negative is good).",
            ["method"] + [HEADERS[k][0] for k in checks],
            rows,
        )
    )
    sec.add(
        randomisation_figure({r.name: r.randomisation for r in table.rows}),
        "Similarity of each method's map to its original as layers are randomised, top down.",
    )
    sec.add(
        deletion_figure({r.name: r.deletion for r in table.rows}),
        "Target probability as pixels are deleted or inserted in attribution order, against a random order.",
    )
    if masks is not None:
        sec.add(
            localisation_figure({r.name: r.localisation for r in table.rows}),
            "Share of positive attribution inside the object mask, and the pointing game, against a random map.",
        )
    return sec
