"""How far to trust an attribution map: sanity, faithfulness, localisation, completeness.

* `randomisation_check`: cascading model parameter randomisation (Adebayo et al. 2018).
* `deletion_insertion`: delete or insert pixels in attribution order against a random
  order (Petsiuk, Das & Saenko 2018, "RISE").
* `localisation`: the share of positive attribution on the object mask, and the pointing
  game (Zhang et al. 2016), against a random map.
* `completeness`: how far a path method's maps miss F(x) - F(x').
* `evaluate_methods`: all of them for several methods side by side.

Every check takes any `nn.Module`, tensors on the model's device, and a method: a function
`method(model, x, targets)` returning an `Attribution` (or a tensor shaped like x).
x is any batch (N, ...): the checks work per unit, the pixels of images in either layout,
the features of rows, the positions of sequences, summed over channels where `layout`
(`mindscope.inputs`) says they are.
"""

from mindscope.evaluation.common import Method, attribution_tensor, pixel_map, rankdata, spearman
from mindscope.evaluation.comparison import EvaluationTable, MethodEvaluation, evaluate_methods
from mindscope.evaluation.faithfulness import DeletionResult, area_under, deletion_insertion
from mindscope.evaluation.localisation import CompletenessResult, LocalisationResult, completeness, localisation
from mindscope.evaluation.randomisation import (
    RANDOMISATION_THRESHOLD,
    RandomisationResult,
    parameterised_layers,
    randomisation_check,
    randomise_layer,
)

__all__ = [
    "RANDOMISATION_THRESHOLD",
    "CompletenessResult",
    "DeletionResult",
    "EvaluationTable",
    "LocalisationResult",
    "Method",
    "MethodEvaluation",
    "RandomisationResult",
    "area_under",
    "attribution_tensor",
    "completeness",
    "deletion_insertion",
    "evaluate_methods",
    "localisation",
    "parameterised_layers",
    "pixel_map",
    "randomisation_check",
    "randomise_layer",
    "rankdata",
    "spearman",
]
