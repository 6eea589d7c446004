"""`mindscope evaluate`: how far to trust each attribution method's maps on a trained run.

Runs the checks of `mindscope.evaluation` for gradient, interior gradients at one alpha,
integrated gradients and SmoothGrad (and, when named, Grad-CAM and occlusion) side by side
on the first N test images that have an object, prints one table (methods x checks) and
writes the figures and `evaluation.json`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from mindscope.baselines import black
from mindscope.cli.source import default_out, model_source, open_source
from mindscope.evaluation import EvaluationTable, evaluate_methods, parameterised_layers
from mindscope.render.evaluation import deletion_figure, localisation_figure, maps_figure, randomisation_figure
from mindscope.report import METHOD_NAMES, format_table, standard_methods
from mindscope.report.methods import MORE_METHODS, RANDOMISED_MAX_STEPS, chance_verdicts, completeness_summary
from mindscope.training import resolve_device


def parse_methods(spec: str) -> list[str]:
    """Check "gradient,integrated" against the CLI's methods; return the names, once each."""
    names = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [n for n in names if n not in METHOD_NAMES + MORE_METHODS]
    if unknown or not names:
        choices = ", ".join(METHOD_NAMES + MORE_METHODS)
        raise ValueError(
            f"unknown method {unknown[0]!r} in --methods; choose from {choices}"
            if unknown
            else f"--methods names no method; choose from {choices}"
        )
    return list(dict.fromkeys(names))


def _clean(value: object) -> object:
    """Make numbers JSON-safe: arrays to lists, nan/inf to null."""
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def table_json(table: EvaluationTable, settings: dict[str, object]) -> dict[str, object]:
    methods = {}
    for row in table.rows:
        rand, dele, loc, comp = row.randomisation, row.deletion, row.localisation, row.completeness
        methods[row.name] = {
            "summary": {k: _clean(v) for k, v in row.summary().items()},
            "randomisation": {
                "layers": list(rand.layers),
                "pixels": "all" if rand.compared is None else "where x differs from the baseline",
                "compared": None if rand.compared is None else _clean(rand.compared),
                "spearman_abs": _clean(rand.spearman_abs),
                "spearman_signed": _clean(rand.spearman_signed),
                "spearman_abs_all_pixels": _clean(rand.spearman_abs_all),
                "spearman_signed_all_pixels": _clean(rand.spearman_signed_all),
                "passed": rand.passed,
            },
            "deletion": {
                "fractions": _clean(dele.fractions),
                "targets": dele.targets.tolist(),
                **{
                    k: _clean(getattr(dele, k))
                    for k in ("deletion", "insertion", "random_deletion", "random_insertion")
                },
            },
            "localisation": None
            if loc is None
            else {
                k: _clean(getattr(loc, k))
                for k in ("mass_inside", "pointing", "random_mass_inside", "random_pointing", "mask_fraction")
            },
            "completeness": None
            if comp is None
            else {
                "error": _clean(comp.error),
                "relative_error": _clean(comp.relative_error),
                "ill_conditioned": _clean(comp.ill_conditioned),
                "converged": _clean(comp.converged),
                "worst_relative": _clean(comp.worst_relative),
            },
        }
    return {"settings": settings, "randomisation_threshold": table.threshold, "methods": methods}


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120)
    click.echo(f"wrote {path}")


@click.command("evaluate")
@model_source
@click.option(
    "--methods",
    "method_spec",
    default=",".join(METHOD_NAMES),
    show_default=True,
    help="Comma-separated: gradient, interior, integrated, smoothgrad, gradcam, occlusion.",
)
@click.option(
    "--images",
    type=int,
    default=8,
    show_default=True,
    help="Evaluate on the first N test images (that have an object mask, where masks exist).",
)
@click.option(
    "--alpha", type=float, default=0.5, show_default=True, help="Interior gradients at black + alpha (x - black)."
)
@click.option(
    "--tolerance",
    type=float,
    default=0.01,
    show_default=True,
    help="Integrated gradients refine each path to this relative completeness error, as `mindscope report` does.",
)
@click.option(
    "--max-steps",
    type=int,
    default=2048,
    show_default=True,
    help="Gradient steps per image at most for integrated gradients on the trained model.",
)
@click.option(
    "--randomised-max-steps",
    type=int,
    default=RANDOMISED_MAX_STEPS,
    show_default=True,
    help="The same, on the randomised copies (their F barely changes along the path: no tolerance is reachable).",
)
@click.option("--ig-points", type=int, default=None, hidden=True, help="Removed: see --tolerance.")
@click.option("--samples", type=int, default=16, show_default=True, help="SmoothGrad noisy copies.")
@click.option(
    "--steps",
    type=int,
    default=16,
    show_default=True,
    help="Deletion/insertion steps (each switches 1/steps of the pixels).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the randomised weights, the random pixel order, the random map, SmoothGrad.",
)
@click.option("--epoch", type=int, default=None, help="Snapshot to load (default: the last).")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Output folder (default RUN_DIR/evaluation)."
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda")
def evaluate(
    method_spec,
    images,
    alpha,
    tolerance,
    max_steps,
    randomised_max_steps,
    ig_points,
    samples,
    steps,
    seed,
    epoch,
    out,
    device,
    **source,
) -> None:
    """Check how far to trust each attribution method's maps; print a table, write figures."""
    for name, value, low in (
        ("--images", images, 1),
        ("--max-steps", max_steps, 1),
        ("--randomised-max-steps", randomised_max_steps, 1),
        ("--samples", samples, 1),
        ("--steps", steps, 1),
    ):
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")
    for name, value, high in (("--samples", samples, 1024), ("--steps", steps, 1024)):
        if value > high:
            raise ValueError(f"{name} must be at most {high}, got {value}; the checks need far fewer")
    if ig_points is not None:
        if ig_points > 1024:
            raise ValueError(f"--ig-points must be at most 1024, got {ig_points}; the checks need far fewer")
        raise ValueError(
            "--ig-points is no longer used: integrated gradients refine each path to --tolerance (default 0.01), "
            "as `mindscope report` does, so that the checks judge the maps the report shows; drop --ig-points"
        )
    if not 0 < tolerance < 1:
        raise ValueError(f"--tolerance must lie in (0, 1), such as 0.01, got {tolerance}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha must lie in [0, 1] (0 = the black baseline, 1 = the image), got {alpha}")
    names = parse_methods(method_spec)
    device = resolve_device(device)
    subject = open_source(source, epoch=epoch)
    data = subject.require_data("mindscope evaluate")
    norm = subject.normalization
    settings = dict(alpha=alpha, tolerance=tolerance, samples=samples, seed=seed)
    available = standard_methods(norm, **settings, max_steps=max_steps)
    budget = standard_methods(norm, **settings, max_steps=randomised_max_steps)
    methods = {name: available[name] for name in names}
    test = data.test
    masks = test.masks
    candidates = torch.arange(len(test)) if masks is None else masks.flatten(1).any(1).nonzero().flatten()
    chosen = candidates[:images]
    if chosen.numel() == 0:
        raise ValueError(f"the test split of {data.spec} has no image with an object mask to evaluate on")
    model = subject.model.to(device)
    x = subject.inputs(test.pixels(chosen)).to(device)  # (N, C, H, W)
    mask_batch = None if masks is None else masks[chosen].to(device)  # (N, H, W)
    out = default_out(subject, "evaluation") if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total = len(methods) * (1 + len(parameterised_layers(model)))
    with tqdm(total=total, desc="evaluate", unit="map", leave=False, disable=None) as bar:

        def progress(label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update(1)

        table = evaluate_methods(
            model,
            x,
            None,
            mask_batch,
            methods,
            baseline=lambda z: black(z, norm),
            steps=steps,
            seed=seed,
            progress=progress,
            randomised={"integrated": budget["integrated"]},
        )
    of = f"run {subject.run.path} (epoch {subject.run.epoch})" if subject.run is not None else subject.source
    click.echo(f"{len(chosen)} test images of {of}, targets: the predicted classes")
    click.echo(format_table(table))
    click.echo(chance_verdicts(table))
    for row in table.rows:
        if row.completeness is not None:
            click.echo(f"{row.name}: {completeness_summary(row.completeness, chosen.tolist())}")
    if mask_batch is None:
        click.echo("this dataset has no object masks: localisation skipped")
    settings = {
        "model": subject.source,
        "epoch": None if subject.run is None else subject.run.epoch,
        "images": chosen.tolist(),
        "alpha": alpha,
        "tolerance": tolerance,
        "max_steps": max_steps,
        "randomised_max_steps": randomised_max_steps,
        "samples": samples,
        "steps": steps,
        "seed": seed,
        "baseline": "black",
        "targets": "predicted class",
    }
    _save(randomisation_figure({r.name: r.randomisation for r in table.rows}), out / "randomisation.png")
    _save(deletion_figure({r.name: r.deletion for r in table.rows}), out / "deletion.png")
    _save(
        maps_figure(
            norm.invert(x).cpu().numpy(),
            {r.name: r.attributions.cpu().numpy() for r in table.rows},
            None if mask_batch is None else mask_batch.cpu().numpy(),
        ),
        out / "maps.png",
    )
    if mask_batch is not None:
        _save(localisation_figure({r.name: r.localisation for r in table.rows}), out / "localisation.png")
    path = out / "evaluation.json"
    path.write_text(json.dumps(table_json(table, settings), indent=1))
    click.echo(f"wrote {path}")


commands: list[click.Command] = [evaluate]
