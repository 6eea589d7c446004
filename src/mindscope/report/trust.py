"""The report's section 6: how far to trust the maps, with captions written from the numbers."""

from __future__ import annotations

from mindscope.evaluation import evaluate_methods
from mindscope.render.attribution import flag_text
from mindscope.render.evaluation import deletion_figure, localisation_figure, randomisation_figure
from mindscope.report.attribution_sections import pick_images
from mindscope.report.baseline import choose_baseline, data_pixel_mean
from mindscope.report.methods import (
    HEADERS,
    METHOD_NAMES,
    RANDOMISED_MAX_STEPS,
    chance_verdicts,
    completeness_summary,
    randomisation_pixels,
    standard_methods,
)
from mindscope.report.options import ReportOptions
from mindscope.report.page import Section, Table, pct
from mindscope.run import LoadedRun


def _cell(key: str, value: float) -> str:
    if value != value:  # nan: the check does not apply
        return "-"
    fmt = HEADERS[key][1]
    return ("pass" if value else "FAIL") if fmt == "pass/FAIL" else fmt.format(value)


def trust_section(run: LoadedRun, options: ReportOptions) -> Section:
    model, data, classes = run.model, run.data, run.classes
    indices = pick_images(run, options.evaluation_images)
    device = next(model.parameters()).device
    x = data.inputs(data.test, indices).to(device)
    masks = None if data.test.masks is None else data.test.masks[indices].to(device)
    chosen = choose_baseline(model, data.normalization, tuple(x.shape[1:]), classes, pixel_mean=data_pixel_mean(run))
    baseline = chosen.make(x)
    settings = dict(alpha=0.5, tolerance=options.tolerance, samples=16, seed=0, baseline=chosen.make)
    every = standard_methods(data.normalization, **settings)
    methods = {name: every[name] for name in (*METHOD_NAMES, "gradcam")}
    budget = standard_methods(data.normalization, **settings, max_steps=RANDOMISED_MAX_STEPS)
    table = evaluate_methods(
        model, x, None, masks, methods, baseline=baseline, randomised={"integrated": budget["integrated"]}
    )

    sec = Section(
        "trust",
        "6. How far to trust these maps",
        "Sanity and faithfulness checks for each method on the same images: cascading randomisation of "
        "the weights from the top layer down (a map that survives it does not explain the model), "
        "deletion and insertion of pixels in attribution order against a random order, and, where the "
        "data has object masks, how much positive attribution lands on the object. Grad-CAM explains the "
        "last layer with a spatial output, upsampled to the image. Integrated gradients "
        f"are those of section 5 (tolerance {pct(options.tolerance)}); on the randomised copies, whose "
        f"outputs barely change along the path, they get at most {RANDOMISED_MAX_STEPS} steps per image. "
        f"Deleted pixels take the baseline's value. " + chosen.describe(),
    )
    rows = [[r.name] + [_cell(key, value) for key, value in r.summary().items()] for r in table.rows]
    sec.tables.append(
        Table(
            f"Methods × checks on test images {indices}. Sanity passes when the rank correlation of |map| with "
            f"the original falls below {table.threshold:g} once every layer is randomised; "
            f"{randomisation_pixels(table)}. {chance_verdicts(table, numbers=False)}",
            ["method"] + [HEADERS[k][0] for k in table.checks],
            rows,
        )
    )
    integrated = next((r for r in table.rows if r.completeness is not None), None)
    if integrated is not None:
        comp = integrated.completeness
        labels = data.test.labels[indices]
        predicted = integrated.deletion.targets
        sec.tables.append(
            Table(
                f"{integrated.name} per image: {completeness_summary(comp, indices)}.",
                ["image", "label", "predicted", "completeness error", "flag"],
                [
                    [
                        index,
                        classes[int(labels[i])],
                        classes[int(predicted[i])],
                        HEADERS["completeness_error"][1].format(float(comp.relative_error[i])),
                        flag_text(bool(comp.ill_conditioned[i]), bool(comp.converged[i])) or "-",
                    ]
                    for i, index in enumerate(indices)
                ],
            )
        )
    sec.add(
        randomisation_figure({r.name: r.randomisation for r in table.rows}),
        f"Similarity of each method's map to its original as layers are randomised, top down; "
        f"{randomisation_pixels(table)}.",
    )
    sec.add(
        deletion_figure({r.name: r.deletion for r in table.rows}),
        "Target probability as pixels are deleted or inserted in attribution order, against a random order. "
        + chance_verdicts(table),
    )
    if masks is not None:
        sec.add(
            localisation_figure({r.name: r.localisation for r in table.rows}),
            "Share of positive attribution inside the object mask, and the pointing game, against a random map.",
        )
    return sec
