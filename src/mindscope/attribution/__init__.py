"""Input attributions: gradients, interior gradients, integrated gradients, SmoothGrad.

Each is a function `method(model, x, target, *, ...) -> Attribution` (interior gradients
return `InteriorGradients`, one map per alpha); results carry what is known of their accuracy.
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
from mindscope.attribution.methods import (
    WALKTHROUGH_ALPHAS,
    gradients,
    integrated_gradients,
    interior_gradients,
    smoothgrad,
)

__all__ = [
    "ILL_CONDITIONING_FLOOR",
    "WALKTHROUGH_ALPHAS",
    "Attribution",
    "InteriorGradients",
    "check_batch",
    "class_logit",
    "class_probability",
    "completeness_scale",
    "gradients",
    "input_gradients_only",
    "integrated_gradients",
    "interior_gradients",
    "resolve_targets",
    "smoothgrad",
]
