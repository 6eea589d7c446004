"""`mindscope attribute --method gradcam | layer-integrated | occlusion`: the methods beyond the walk-through.

Grad-CAM and layer integrated gradients explain a layer (--layer: a walk-through number
such as L6, meaning the activation after that convolution, or a dotted module name);
occlusion slides a --window over the pixels. Each prints a line per image and writes its
figure next to the other methods' in the output folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import click
from torch import Tensor, nn

from mindscope.attribution import Attribution, grad_cam, layer_integrated_gradients, occlusion
from mindscope.layers import resolve_layer
from mindscope.quadrature import Quadrature
from mindscope.render.attribution import attribution_panels
from mindscope.render.gradcam import NO_EVIDENCE, grad_cam_figure
from mindscope.render.layer import layer_attribution_figure

LAYER_METHODS = ("gradcam", "layer-integrated", "occlusion")


def layer_name(model: nn.Module, spec: str | None, method: str) -> str | None:
    """Resolve --layer (None: the method's default), and say what it resolved to."""
    if spec is None:
        if method == "layer-integrated":
            raise ValueError("--method layer-integrated needs --layer, e.g. --layer L6 or --layer features.12")
        return None
    name = resolve_layer(model, spec, output=True)
    click.echo(f"layer {spec} -> {name}" if name != spec else f"layer {name}")
    return name


def _prediction(result, i: int, caption: str, classes: Sequence[str]) -> str:
    predicted, target = int(result.predictions[i]), int(result.targets[i])
    line = f"{caption}: predicted {classes[predicted]} ({float(result.probabilities[i]):.3f})"
    return line + (f", target {classes[target]}" if target != predicted else "")


def figure_path(out: Path, method: str, names: list[str]) -> Path:
    """Where one figure of `method` over the named images goes: named by them, so another call does not overwrite it.

    Up to 4 images are named in full (`integrated_3_4.png`); more by the first, the last, their
    count and a digest of all the names, so two different lists never share a file.
    """
    if len(names) <= 4:
        return out / f"{method}_{'_'.join(names)}.png"
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:8]
    return out / f"{method}_{names[0]}-{names[-1]}_{len(names)}-images-{digest}.png"


def attribute_layers(
    method: str,
    model: nn.Module,
    x: Tensor,
    pixels: Tensor,
    *,
    captions: Sequence[str],
    names: Sequence[str],
    classes: Sequence[str],
    layer: str | None,
    baseline: Callable[[Tensor], Tensor],
    output: Callable[[Tensor], Tensor],
    score: str,
    rule: Quadrature | None,
    tolerance: float | None,
    max_steps: int,
    window: int,
    stride: int,
    describe: Callable[[int, str, Attribution], str],
    out: Path,
) -> None:
    """Run one of LAYER_METHODS on x, print a line per image, and write its figures to `out`.

    The looks read where the model's layers keep their channels from the model (a Keras model's: last).
    """
    name = layer_name(model, layer, method)
    if method == "gradcam":
        result = grad_cam(model, x, layer=name, layout="NCHW")
        click.echo(f"Grad-CAM of layer {result.layer}" + (" (the last with a spatial output)" if name is None else ""))
        for i, caption in enumerate(captions):
            empty = f"; {NO_EVIDENCE}" if bool(result.empty[i]) else ""
            click.echo(f"{_prediction(result, i, caption, classes)}; map max {float(result.maps[i].max()):.3g}{empty}")
        paths = [figure_path(out, f"{method}_{result.layer}", names)]  # by layer too: another --layer keeps it
        grad_cam_figure(pixels, result, classes).savefig(paths[0], dpi=120)
    elif method == "layer-integrated":
        result = layer_integrated_gradients(
            model, x, name, baseline=baseline, rule=rule, tolerance=tolerance, max_steps=max_steps, output=output,
        )  # fmt: skip
        paths = []
        for i, caption in enumerate(captions):
            click.echo(describe(i, caption, result))
            paths.append(out / f"layer-integrated_{name}_{names[i]}.png")
            title = f"layer integrated gradients ({score}) at {name}, image {names[i]}"
            layer_attribution_figure(result, example=i, title=title).savefig(paths[-1], dpi=120)
    else:
        result = occlusion(model, x, window=(window, window), stride=(stride, stride), baseline=baseline, output=output)
        click.echo(f"occlusion: {window}x{window} windows of every channel at stride {stride}, baseline values")
        for i, caption in enumerate(captions):
            click.echo(describe(i, caption, result))
        paths = [figure_path(out, method, names)]
        attribution_panels(pixels, result, classes, title=f"occlusion ({score})").savefig(paths[0], dpi=120)
    click.echo(f"wrote {', '.join(map(str, paths))}")
