"""`mindscope attribute`: gradients, interior or integrated gradients, SmoothGrad, and more.

Grad-CAM, layer integrated gradients and occlusion run in `cli.attribute_layers`.

Prints, per image, the prediction, the completeness error and the steps used, with a
warning on the image's line where there is nothing to explain (the baseline already scores
what the image scores) or where --tolerance was not reached within --max-steps (exit status
0 all the same: the map is computed and drawn, the line says how far to trust it). Writes
the walk-through's figures: signed overlays and heat maps (panels), and for interior
gradients one GIF per image over alpha (named by test index or file) and the saturation curve.
"""

from __future__ import annotations

from pathlib import Path

import click
import torch

from mindscope._util import positive_int
from mindscope.attribution import (
    Attribution,
    class_logit,
    class_probability,
    gradients,
    integrated_gradients,
    interior_gradients,
    smoothgrad,
)
from mindscope.baselines import named
from mindscope.cli.activations import load_image
from mindscope.cli.attribute_layers import LAYER_METHODS, attribute_layers, figure_path
from mindscope.cli.source import default_out, model_source, open_source
from mindscope.quadrature import gauss_legendre, left, midpoint, right, simpson, trapezoid
from mindscope.render.attribution import attribution_panels, interior_frames, saturation_curve, save_gif
from mindscope.report.baseline import data_pixel_mean
from mindscope.training import resolve_device

MAX_STEPS = 4096  # a fixed rule beyond this is slow and no more exact than --tolerance
MAX_TOLERANCE_STEPS = 65536  # gradients kept per image in tolerance mode: 64k x a 32x32x3 image = 800 MB
MAX_SAMPLES = 1024
MAX_IMAGES = 64

RULES = {
    "left": left,
    "right": right,
    "midpoint": midpoint,
    "trapezoid": trapezoid,
    "gauss-legendre": gauss_legendre,
    "simpson": simpson,
}


def _numbered_classes(model: torch.nn.Module, x: torch.Tensor) -> tuple[str, ...]:
    """Names for a model with no class names: "class 0", "class 1", ..."""
    with torch.no_grad():
        count = model(x[:1]).shape[-1]
    click.echo(f"no class names given (--classes or a card): calling the {count} outputs class 0..{count - 1}")
    return tuple(f"class {i}" for i in range(count))


def _image_names(specs: tuple[str, ...]) -> list[str]:
    """Name each image in file names and legends: its test index, or its file's stem.

    Different images that would share a name (a/x.png and b/x.png) get their position appended.
    """
    names = [s.strip() if s.strip().lstrip("-").isdigit() else Path(s).stem for s in specs]
    clash = {n for n in names if len({s for s, m in zip(specs, names) if m == n}) > 1}
    return [f"{n}_{i}" if n in clash else n for i, n in enumerate(names)]


def _describe(
    i: int,
    caption: str,
    result: Attribution,
    classes: tuple[str, ...],
    *,
    score: str = "probability",
    tolerance: float | None = None,
    max_steps: int | None = None,
) -> str:
    predicted, target = int(result.predictions[i]), int(result.targets[i])
    line = f"{caption}: predicted {classes[predicted]} ({float(result.probabilities[i]):.3f})"
    if target != predicted:
        line += f", target {classes[target]}"
    ill = result.ill_conditioned is not None and bool(result.ill_conditioned[i])
    if result.relative_completeness_error is not None:
        relative, absolute = float(result.relative_completeness_error[i]), float(result.completeness_error[i])
        against = " of 1% of F" if ill else ""
        line += f"; completeness error {relative:.3%}{against} (abs {absolute:.3g})"
    line += f"; steps {int(result.steps[i])}"
    if result.map_error is not None:
        line += f"; map error estimate {float(result.map_error[i]):.3%}"
    if ill:
        value = float(result.baseline_output[i])
        shown = f"p={value:.3f}" if score == "probability" else f"logit {value:.3g}"
        line += f"; nothing to explain: the baseline already scores {shown} for '{classes[target]}'"
    # Only an ill-conditioned image stops short of the tolerance by design: its map is not refined.
    spent = max_steps is not None and int(result.steps[i]) + 2 > max_steps  # no room for a bisection (2 steps)
    if result.converged is not None and not bool(result.converged[i]) and (spent or not ill):
        line += (
            f"; NOT CONVERGED: tolerance {tolerance:.2%} not reached in {int(result.steps[i])} steps "
            f"(--max-steps {max_steps}); raise --max-steps"
        )
    return line


def _relabel(figure, names: list[str]) -> None:
    """Name the saturation curve's lines by image (test index or file) instead of list position."""
    for ax in figure.axes:
        for i, line in enumerate(ax.get_lines()):
            line.set_label(f"image {names[i]}: " + line.get_label().split(" ", 1)[-1])
        if ax.get_legend() is not None:
            ax.legend(fontsize=7)


@click.command("attribute")
@model_source
@click.option(
    "--image", "images", multiple=True, required=True, help="test-image index or PNG/JPEG path; repeat for several"
)
@click.option(
    "--method",
    type=click.Choice(["gradient", "interior", "integrated", "smoothgrad", "gradcam", "layer-integrated", "occlusion"]),
    default="integrated",
    show_default=True,
)
@click.option("--steps", type=int, default=None, help="fixed number of quadrature steps (default 32)")
@click.option(
    "--tolerance",
    type=float,
    default=None,
    help="refine until relative completeness and map error estimate are below this, e.g. 0.01",
)
@click.option(
    "--rule",
    type=click.Choice(sorted(RULES)),
    default=None,
    help="quadrature rule (default gauss-legendre; simpson panels with --tolerance)",
)
@click.option("--baseline", type=click.Choice(["black", "mean", "noise", "blur"]), default="black", show_default=True)
@click.option(
    "--score",
    type=click.Choice(["probability", "logit"]),
    default="probability",
    show_default=True,
    help="F: the target's softmax probability or its logit",
)
@click.option("--samples", type=int, default=16, show_default=True, help="noisy copies for smoothgrad")
@click.option(
    "--max-steps",
    type=int,
    default=2048,
    show_default=True,
    help="per-image cap with --tolerance; an image that reaches it unconverged is flagged NOT CONVERGED",
)
@click.option("--layer", default=None, help="gradcam, layer-integrated: L6 (after conv 6) or a module name")
@click.option("--window", type=int, default=8, show_default=True, help="occlusion: window side in pixels")
@click.option("--stride", type=int, default=4, show_default=True, help="occlusion: window step in pixels")
@click.option("--epoch", type=int, default=None, help="snapshot to load (default: the last)")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="output folder (default RUN_DIR/attributions)"
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda")
def attribute(
    images: tuple[str, ...],
    method: str,
    steps: int | None,
    tolerance: float | None,
    rule: str | None,
    baseline: str,
    score: str,
    samples: int,
    max_steps: int,
    layer: str | None,
    window: int,
    stride: int,
    epoch: int | None,
    out: Path | None,
    device: str,
    **source,
) -> None:
    """Attribute the predictions of a run's or a model's to the pixels of test images or image files."""
    if steps is not None and tolerance is not None:
        raise ValueError("give --steps N or --tolerance E, not both: a tolerance chooses the steps itself")
    if steps is not None and steps > MAX_STEPS:
        raise ValueError(
            f"--steps must be at most {MAX_STEPS}, got {steps}; use --tolerance to refine only where the path needs it"
        )
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    positive_int(samples, "--samples", maximum=MAX_SAMPLES, hint="each copy costs one gradient per image")
    positive_int(max_steps, "--max-steps", maximum=MAX_TOLERANCE_STEPS, hint="tolerance mode keeps every gradient")
    if len(images) > MAX_IMAGES:
        raise ValueError(f"give at most {MAX_IMAGES} --image options, got {len(images)}; the figure draws a row each")
    if tolerance is not None and rule not in (None, "simpson"):
        raise ValueError(f"--tolerance refines Simpson panels; drop --rule {rule} or use --steps with it")
    if layer is not None and method not in ("gradcam", "layer-integrated"):
        raise ValueError(f"--layer applies to --method gradcam or layer-integrated, not {method}; drop --layer")
    positive_int(window, "--window")
    positive_int(stride, "--stride")
    subject = open_source(source, epoch=epoch)
    target_device = resolve_device(device)
    model = subject.model.to(target_device)
    normalization = subject.normalization
    loaded = [load_image(spec, subject) for spec in images]
    pixels = torch.cat([p for p, _ in loaded]).to(target_device)  # (N, C, H, W) in [0, 1]
    x = normalization.apply(pixels)
    captions = [c for _, c in loaded]
    names = _image_names(images)
    classes = subject.classes or _numbered_classes(model, x)
    output = class_probability if score == "probability" else class_logit
    base = named(baseline, normalization, pixel_mean=data_pixel_mean(subject) if baseline == "mean" else None)
    out = Path(out) if out is not None else default_out(subject, "attributions")
    out.mkdir(parents=True, exist_ok=True)

    if method == "interior":
        result = interior_gradients(model, x, baseline=base, output=output)
        for i, caption in enumerate(captions):
            first, last = int(result.predictions[0, i]), int(result.predictions[-1, i])
            norms = result.gradient_norms[:, i].tolist()
            click.echo(
                f"{caption}: predicted {classes[last]} ({float(result.probabilities[-1, i]):.3f}) "
                f"at a={result.alphas[-1]:g}, {classes[first]} ({float(result.probabilities[0, i]):.3f}) "
                f"at a={result.alphas[0]:g}; gradient norm {norms[0]:.3g} -> {norms[-1]:.3g}; "
                f"steps {result.alphas.numel()}"
            )
            frames = interior_frames(result, x, classes, index=i, to_pixels=normalization.invert)
            save_gif(frames, out / f"interior_{names[i]}.gif", duration_ms=600)
        curve = saturation_curve(result, classes)
        _relabel(curve, names)
        curve.savefig(out / "saturation.png", dpi=120)
        click.echo(f"wrote {len(captions)} GIF(s) and saturation.png to {out}")
        return

    quadrature = None
    if tolerance is None:
        n = steps or 32
        quadrature = simpson(max(1, (n - 1) // 2)) if rule == "simpson" else RULES[rule or "gauss-legendre"](n)
    if method in LAYER_METHODS:
        attribute_layers(
            method, model, x, normalization.invert(x).cpu(),
            captions=captions, names=names, classes=classes, layer=layer, baseline=base, output=output,
            score=score, rule=quadrature, tolerance=tolerance, max_steps=max_steps, window=window, stride=stride,
            describe=lambda i, caption, result: _describe(
                i, caption, result, classes, score=score, tolerance=tolerance, max_steps=max_steps
            ),
            out=out,
        )  # fmt: skip
        return
    if method == "gradient":
        result = gradients(model, x, output=output)
    elif method == "smoothgrad":
        result = smoothgrad(gradients, model, x, samples=samples, output=output)
    else:
        result = integrated_gradients(
            model, x, baseline=base, rule=quadrature, tolerance=tolerance, max_steps=max_steps, output=output
        )
    for i, caption in enumerate(captions):
        click.echo(_describe(i, caption, result, classes, score=score, tolerance=tolerance, max_steps=max_steps))
    figure = attribution_panels(normalization.invert(x).cpu(), result, classes, title=f"{method} ({score})")
    path = figure_path(out, method, names)
    figure.savefig(path, dpi=120)
    click.echo(f"wrote {path}")


commands = [attribute]
