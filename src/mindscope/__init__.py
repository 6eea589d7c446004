"""mindscope: look inside a trained PyTorch network.

Weights (`weight_histograms`), activations (`capture_activations`), attributions
(`integrated_gradients` to a stated error) and checks of how far to trust them
(`evaluate_methods`) work on any `nn.Module`; `train`, `load_run` and the CLI record
and reopen whole training runs of the walk-through's `AllConvNet`. Figures live in
`mindscope.render`.
"""

from mindscope.activations import (
    LayerStatistics,
    LayerSummary,
    Saturation,
    TopActivations,
    activation_statistics,
    capture_activations,
    top_activating,
)
from mindscope.attribution import (
    Attribution,
    InteriorGradients,
    black,
    blurred,
    class_logit,
    class_probability,
    dataset_mean,
    gradients,
    integrated_gradients,
    interior_gradients,
    smoothgrad,
    uniform_noise,
)
from mindscope.comparison import EvaluationTable, evaluate_methods, format_table, standard_methods
from mindscope.data import DataSplits, ImageSet, Normalization, load_data
from mindscope.evaluation import deletion_insertion, localisation, randomisation_check, spearman
from mindscope.layers import LayerInfo, describe_layers, numbered_layers, resolve_layer, resolve_layers
from mindscope.model import AllConvNet
from mindscope.quadrature import Quadrature, gauss_legendre, left, midpoint, right, simpson, trapezoid
from mindscope.run import LoadedRun, Run, load_run
from mindscope.tensorboard import TensorBoardRecorder, export_tensorboard
from mindscope.train import TrainConfig, evaluate, train
from mindscope.weights import (
    WeightChange,
    WeightHistogram,
    WeightStats,
    format_change_table,
    paired_histograms,
    shared_edges,
    weight_changes,
    weight_histograms,
)

__version__ = "0.1.0"

__all__ = [
    "AllConvNet",
    "Attribution",
    "DataSplits",
    "ImageSet",
    "InteriorGradients",
    "LayerInfo",
    "LayerStatistics",
    "LayerSummary",
    "LoadedRun",
    "Normalization",
    "Quadrature",
    "Run",
    "Saturation",
    "TensorBoardRecorder",
    "TopActivations",
    "TrainConfig",
    "WeightChange",
    "WeightHistogram",
    "WeightStats",
    "activation_statistics",
    "black",
    "blurred",
    "capture_activations",
    "class_logit",
    "class_probability",
    "EvaluationTable",
    "dataset_mean",
    "deletion_insertion",
    "describe_layers",
    "evaluate",
    "evaluate_methods",
    "export_tensorboard",
    "format_change_table",
    "format_table",
    "gauss_legendre",
    "gradients",
    "integrated_gradients",
    "interior_gradients",
    "left",
    "load_data",
    "load_run",
    "localisation",
    "midpoint",
    "numbered_layers",
    "paired_histograms",
    "randomisation_check",
    "resolve_layer",
    "resolve_layers",
    "right",
    "shared_edges",
    "simpson",
    "smoothgrad",
    "standard_methods",
    "spearman",
    "top_activating",
    "train",
    "trapezoid",
    "uniform_noise",
    "weight_changes",
    "weight_histograms",
]
