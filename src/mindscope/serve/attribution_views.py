"""What the Attributions view computes: a map with its accuracy, and interior gradients along the path.

The methods are the looks of `mindscope.attribution`; the figures are `mindscope.render`'s.
Interior gradients are computed once per (image, target, baseline) over `ALPHAS`, so the
alpha slider only picks a frame: every frame shares one colour scale, and the saturation
curve is drawn once, with the current alpha marked over it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from matplotlib.figure import Figure
from torch import Tensor, nn

from mindscope._util import model_device
from mindscope.attribution import (
    WALKTHROUGH_ALPHAS,
    Attribution,
    InteriorGradients,
    grad_cam,
    gradients,
    integrated_gradients,
    interior_gradients,
    occlusion,
    smoothgrad,
)
from mindscope.baselines import black, blurred, dataset_mean, uniform_noise
from mindscope.render.attribution import attribution_panels, interior_frame_figures, saturation_curve
from mindscope.render.gradcam import grad_cam_figure
from mindscope.serve.catalog import Entry
from mindscope.serve.pictures import Marker, Picture, Rendered

# The slider's positions: the walk-through's alphas and a few more between 0.1 and 1.
ALPHAS: tuple[float, ...] = tuple(sorted({*WALKTHROUGH_ALPHAS, 0.2, 0.3, 0.4, 0.9}))
METHODS = {  # name -> label; "interior" has a view of its own
    "gradient": "gradient (saliency)",
    "interior": "interior gradients (the α slider)",
    "integrated": "integrated gradients",
    "smoothgrad": "SmoothGrad (16 noisy copies of the gradient)",
    "gradcam": "Grad-CAM (the last layer with a spatial output)",
    "occlusion": "occlusion (8×8 windows at stride 4, filled with the baseline)",
}
BASELINES: dict[str, tuple[str, Callable]] = {  # name -> (label, (x, normalization, the data's mean pixel) -> x')
    "black": ("black image", lambda x, norm, mean: black(x, norm)),
    "mean": ("dataset-mean grey image", lambda x, norm, mean: dataset_mean(x, norm, mean=mean)),
    "blurred": ("blurred copy (σ = 3 px)", lambda x, norm, mean: blurred(x)),
    "noise": ("uniform noise (seed 0)", lambda x, norm, mean: uniform_noise(x, norm)),
}
MAX_STEPS = 2048  # integrated gradients' step budget per image, as `mindscope attribute`


@dataclass(frozen=True)
class Setting:
    """One attribution question: the image, the class, the path's start and, for IG, the tolerance."""

    method: str
    target: int | None  # None: the predicted class
    baseline: str
    tolerance: float


@dataclass(frozen=True)
class AttributionView:
    picture: Picture
    numbers: dict[str, str]  # label -> value, shown beside the figure
    target: int  # the class explained


def _fmt(value: Tensor | None, spec: str) -> str:
    return "n/a" if value is None else format(float(value[0]), spec)


def attribution_view(
    entry: Entry, epoch: int | None, pixels: Tensor, setting: Setting, caption: str
) -> AttributionView:
    """Attribute one image with the setting's method; draw the overlay and |map| with their numbers."""
    if setting.method not in ("gradient", "integrated", "smoothgrad", "gradcam", "occlusion"):
        raise ValueError(f"unknown method {setting.method!r}; choose one of: {', '.join(METHODS)}")
    classes = entry.subject.classes
    norm = entry.subject.normalization
    with entry.lock:
        model = entry.model(epoch)
        x = entry.subject.inputs(pixels).to(model_device(model))
        if setting.method == "gradcam":
            return _grad_cam_view(model, x, pixels, setting, caption, classes)
        if setting.method == "gradient":
            result = gradients(model, x, setting.target)
        elif setting.method == "occlusion":
            start = BASELINES[setting.baseline][1](x, norm, entry.pixel_mean())
            result = occlusion(model, x, setting.target, window=(8, 8), stride=(4, 4), baseline=start)
        elif setting.method == "smoothgrad":
            result = smoothgrad(gradients, model, x, setting.target, samples=16, seed=0)
        else:
            result = integrated_gradients(
                model,
                x,
                setting.target,
                baseline=BASELINES[setting.baseline][1](x, norm, entry.pixel_mean()),
                tolerance=setting.tolerance,
                max_steps=MAX_STEPS,
            )
    result = _on_cpu(result)
    fig = attribution_panels(pixels, result, classes, title=f"{caption}: {METHODS[setting.method]}")
    predicted, target = int(result.predictions[0]), int(result.targets[0])
    numbers = {
        "predicted": f"{classes[predicted]} (p = {float(result.probabilities[0]):.3f})",
        "explained class": classes[target] + (" (the prediction)" if target == predicted else ""),
        "steps used": str(int(result.steps[0])),
    }
    if setting.method == "integrated":
        numbers.update(
            {
                "baseline": BASELINES[setting.baseline][0],
                "F(x) − F(baseline)": f"{float(result.output[0] - result.baseline_output[0]):+.4g}",
                "completeness error": _fmt(result.completeness_error, ".3g"),
                "relative completeness error": _fmt(result.relative_completeness_error, ".3%"),
                "map error estimate": _fmt(result.map_error, ".3%"),
                "tolerance": f"{setting.tolerance:g}",
                "converged": "yes" if bool(result.converged[0]) else "no: the step budget ran out",
                "nothing to explain": "yes: the baseline already scores F(x)"
                if bool(result.ill_conditioned[0])
                else "no",
            }
        )
    else:
        numbers["completeness"] = "n/a: not a path method (no completeness to check)"
    return AttributionView(Rendered(fig).picture(), numbers, target)


def _grad_cam_view(
    model: nn.Module, x: Tensor, pixels: Tensor, setting: Setting, caption: str, classes: tuple[str, ...]
) -> AttributionView:
    """Grad-CAM of the last spatial layer: the heat map over the image, and which layer it read."""
    result = grad_cam(model, x, setting.target)
    fig = grad_cam_figure(pixels, result, classes, title=f"{caption}: {METHODS['gradcam']}")
    predicted, target = int(result.predictions[0]), int(result.targets[0])
    numbers = {
        "predicted": f"{classes[predicted]} (p = {float(result.probabilities[0]):.3f})",
        "explained class": classes[target] + (" (the prediction)" if target == predicted else ""),
        "layer": result.layer,
        "completeness": "n/a: not a path method (no completeness to check)",
    }
    if bool(result.empty[0]):
        numbers["map"] = "empty: no position has positive evidence for the class"
    return AttributionView(Rendered(fig).picture(), numbers, target)


def _on_cpu(result: Attribution) -> Attribution:
    fields = {k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in vars(result).items()}
    return Attribution(**fields)


@dataclass
class InteriorView:
    """Interior gradients over ALPHAS for one image, the saturation curve, and the frame figures."""

    result: InteriorGradients
    curve: Picture
    markers: dict[float, tuple[Marker, ...]]  # alpha -> a line across each panel of the curve
    frames: list[Figure]  # one per alpha, on one colour scale; rendered when asked for
    classes: tuple[str, ...]

    def frame(self, alpha: float) -> Picture:
        """The scaled input and its gradient at `alpha` (call once per alpha: a figure is drawn once)."""
        return Rendered(self.frames[ALPHAS.index(alpha)]).picture()

    def at(self, alpha: float) -> dict[str, str]:
        """The prediction and the target's probability at `alpha`, as the frame shows them."""
        k = ALPHAS.index(alpha)
        predicted = int(self.result.predictions[k, 0])
        target = int(self.result.targets[0])
        return {
            "α": f"{alpha:g}",
            "prediction at α": f"{self.classes[predicted]} (p = {float(self.result.probabilities[k, 0]):.3f})",
            f"p({self.classes[target]}) at α": f"{float(self.result.target_probabilities[k, 0]):.3f}",
            "gradient L2 norm": f"{float(self.result.gradient_norms[k, 0]):.3g}",
        }


def interior_view(entry: Entry, epoch: int | None, pixels: Tensor, setting: Setting) -> InteriorView:
    """Interior gradients of one image at every slider alpha; the curve is drawn now, frames on demand."""
    norm = entry.subject.normalization
    with entry.lock:
        model = entry.model(epoch)
        x = entry.subject.inputs(pixels).to(model_device(model))
        start = BASELINES[setting.baseline][1](x, norm, entry.pixel_mean())
        result = interior_gradients(model, x, setting.target, alphas=ALPHAS, baseline=start)
    result = InteriorGradients(**{k: v.cpu() for k, v in vars(result).items()})
    classes = entry.subject.classes
    curve = saturation_curve(result, classes)
    rendered = Rendered(curve)
    markers = {a: tuple(rendered.marker(ax, a) for ax in curve.axes) for a in ALPHAS}
    frames = interior_frame_figures(result, x.cpu(), classes, to_pixels=norm.invert)
    return InteriorView(result, rendered.picture(rendered.line_spots(x_name="α")), markers, frames, classes)
