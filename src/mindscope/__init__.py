"""mindscope: look inside a trained PyTorch network."""
from mindscope.layers import LayerInfo, describe_layers, numbered_layers, resolve_layer, resolve_layers
from mindscope.model import AllConvNet

__version__ = "0.1.0"

__all__ = [
    "AllConvNet",
    "LayerInfo",
    "describe_layers",
    "numbered_layers",
    "resolve_layer",
    "resolve_layers",
]
