"""Attributions: gradients, interior gradients, integrated gradients, SmoothGrad, Grad-CAM,
occlusion, and to a hidden layer: layer and neuron integrated gradients, conductance.

Each is a function `method(model, x, target, *, ...) -> Attribution` (interior gradients
return `InteriorGradients`, one map per alpha; Grad-CAM `GradCAM`); the layer methods take
`(model, x, layer, target)` and return `LayerAttribution`. Results carry what is known of
their accuracy.
"""

from mindscope.attribution.core import (
    ILL_CONDITIONING_FLOOR,
    Attribution,
    InteriorGradients,
    check_batch,
    class_logit,
    class_probability,
    completeness_scale,
    input_gradients_only,
    resolve_targets,
)
from mindscope.attribution.gradcam import GradCAM, grad_cam, last_spatial_layer
from mindscope.attribution.layer import (
    LayerAttribution,
    conductance,
    layer_integrated_gradients,
    neuron_integrated_gradients,
)
from mindscope.attribution.methods import (
    WALKTHROUGH_ALPHAS,
    gradients,
    integrated_gradients,
    interior_gradients,
    smoothgrad,
)
from mindscope.attribution.occlusion import occlusion

__all__ = [
    "ILL_CONDITIONING_FLOOR",
    "WALKTHROUGH_ALPHAS",
    "Attribution",
    "GradCAM",
    "InteriorGradients",
    "LayerAttribution",
    "check_batch",
    "class_logit",
    "class_probability",
    "completeness_scale",
    "conductance",
    "grad_cam",
    "gradients",
    "input_gradients_only",
    "integrated_gradients",
    "interior_gradients",
    "last_spatial_layer",
    "layer_integrated_gradients",
    "neuron_integrated_gradients",
    "occlusion",
    "resolve_targets",
    "smoothgrad",
]
