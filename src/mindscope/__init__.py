"""mindscope: look inside a trained PyTorch network.

The looks take any `nn.Module` and tensors and return results that carry their accuracy:
weights (`weight_histograms`), activations (`capture_activations`), attributions
(`integrated_gradients` to a stated error). Families live in namespaces:
`mindscope.quadrature` (rules), `mindscope.baselines`, `mindscope.evaluation` (how far to
trust a map), `mindscope.render` (figures). `train_run`, `load_run` and `write_report`
record a training run of the walk-through's `AllConvNet`, read it back, and write its page.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from mindscope._version import __version__ as __version__
from mindscope.activations import (
    LayerStatistics,
    Saturation,
    TopActivations,
    activation_statistics,
    capture_activations,
    top_activating,
)
from mindscope.attribution import (
    Attribution,
    InteriorGradients,
    class_logit,
    class_probability,
    grad_cam,
    gradients,
    integrated_gradients,
    interior_gradients,
    smoothgrad,
)
from mindscope.data import DataSplits, load_data
from mindscope.layers import describe_layers
from mindscope.model import AllConvNet
from mindscope.models import load_model
from mindscope.run import LoadedRun, RunRecorder, load_run, resume_run, train_run
from mindscope.training import TrainConfig, classification_metrics, train
from mindscope.weights import WeightChange, WeightHistogram, paired_histograms, weight_changes, weight_histograms

__all__ = [
    "AllConvNet",
    "Attribution",
    "DataSplits",
    "InteriorGradients",
    "LayerStatistics",
    "LoadedRun",
    "ReportOptions",
    "RunRecorder",
    "Saturation",
    "TopActivations",
    "TrainConfig",
    "WeightChange",
    "WeightHistogram",
    "activation_statistics",
    "capture_activations",
    "class_logit",
    "class_probability",
    "classification_metrics",
    "describe_layers",
    "grad_cam",
    "gradients",
    "integrated_gradients",
    "interior_gradients",
    "load_data",
    "load_model",
    "load_run",
    "paired_histograms",
    "resume_run",
    "smoothgrad",
    "top_activating",
    "train",
    "train_run",
    "weight_changes",
    "weight_histograms",
    "write_report",
]

# Imported on first use: the report pulls in matplotlib and Jinja2.
_LAZY = {"ReportOptions": "mindscope.report", "write_report": "mindscope.report"}

# Names of 0.1.0 that moved to a namespace; they still work, with a warning, until 0.3.
_MOVED = {
    "Quadrature": "mindscope.quadrature",
    "gauss_legendre": "mindscope.quadrature",
    "left": "mindscope.quadrature",
    "midpoint": "mindscope.quadrature",
    "right": "mindscope.quadrature",
    "simpson": "mindscope.quadrature",
    "trapezoid": "mindscope.quadrature",
    "black": "mindscope.baselines",
    "blurred": "mindscope.baselines",
    "dataset_mean": "mindscope.baselines",
    "uniform_noise": "mindscope.baselines",
    "EvaluationTable": "mindscope.evaluation",
    "deletion_insertion": "mindscope.evaluation",
    "evaluate_methods": "mindscope.evaluation",
    "localisation": "mindscope.evaluation",
    "randomisation_check": "mindscope.evaluation",
    "spearman": "mindscope.evaluation",
    "format_table": "mindscope.report",
    "standard_methods": "mindscope.report",
    "ImageSet": "mindscope.data",
    "Normalization": "mindscope.data",
    "LayerInfo": "mindscope.layers",
    "numbered_layers": "mindscope.layers",
    "resolve_layer": "mindscope.layers",
    "resolve_layers": "mindscope.layers",
    "LayerSummary": "mindscope.activations",
    "WeightStats": "mindscope.weights",
    "format_change_table": "mindscope.render",
    "shared_edges": "mindscope.weights",
    "Run": "mindscope.run",
    "TensorBoardRecorder": "mindscope.tensorboard",
    "export_tensorboard": "mindscope.tensorboard",
}
_RENAMED = {"evaluate": ("mindscope.training", "classification_metrics")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MOVED or name in _RENAMED:
        module, new = _RENAMED.get(name, (_MOVED.get(name), name))
        warnings.warn(
            f"mindscope.{name} is deprecated and goes in 0.3; use {module}.{new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), new)
    raise AttributeError(f"module 'mindscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
