"""The walk-through's all-convolutional network for 32x32 images.

Nine convolutions ("layer 1" ... "layer 9"), ELU after all but the last, mean pooling
after layers 3 and 6, global average pooling to class logits. A flat `nn.Sequential`
so that every layer has a short dotted name (`features.4`) that hooks can reach.
Springenberg et al. 2015 ("Striving for Simplicity: The All Convolutional Net").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "AllConvNet",
    "INIT_STDS",
    "ModelConfig",
]

# Per-layer initial weight std, as in the walk-through (layers 1..9); biases start at 0.
INIT_STDS: tuple[float, ...] = (0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.06, 0.04)


@dataclass(frozen=True)
class ModelConfig:
    width: int = 128  # channels of every hidden convolution
    num_classes: int = 10
    in_channels: int = 3


class AllConvNet(nn.Module):
    """conv3x3 x3 -> pool -> conv3x3 x3 -> pool -> conv3x3 -> conv1x1 -> conv1x1 -> GAP."""

    def __init__(self, width: int = 128, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        for name, value in (("width", width), ("num_classes", num_classes), ("in_channels", in_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.config = ModelConfig(width, num_classes, in_channels)
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ELU(),  # layer 1   (N, w, 32, 32)
            nn.Conv2d(w, w, 3, padding=1),
            nn.ELU(),  # layer 2
            nn.Conv2d(w, w, 3, padding=1),
            nn.ELU(),  # layer 3
            nn.AvgPool2d(2),  #           (N, w, 16, 16)
            nn.Conv2d(w, w, 3, padding=1),
            nn.ELU(),  # layer 4
            nn.Conv2d(w, w, 3, padding=1),
            nn.ELU(),  # layer 5
            nn.Conv2d(w, w, 3, padding=1),
            nn.ELU(),  # layer 6
            nn.AvgPool2d(2),  #           (N, w, 8, 8)
            nn.Conv2d(w, w, 3, padding=1),
            nn.ELU(),  # layer 7
            nn.Conv2d(w, w, 1),
            nn.ELU(),  # layer 8
            nn.Conv2d(w, num_classes, 1),  # layer 9   (N, classes, 8, 8)
            nn.AdaptiveAvgPool2d(1),  #           (N, classes, 1, 1)
            nn.Flatten(),  #           (N, classes) logits
        )
        self.reset_parameters()

    @staticmethod
    def parameter_count(width: int, num_classes: int = 10, in_channels: int = 3) -> int:
        """Parameters of AllConvNet(width, ...), computed without building it."""
        w = width
        convs = [(in_channels, w, 9)] + [(w, w, 9)] * 6 + [(w, w, 1), (w, num_classes, 1)]
        return sum(cin * cout * k + cout for cin, cout, k in convs)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw each convolution's weights from a normal with its own std; zero the biases.

        INIT_STDS are the walk-through's, for width 128. At another width the layers whose
        fan-in grows with the width get std * sqrt(128 / width), so that the signal keeps
        the same scale through the nine layers (at width 32 the unscaled net barely trains).
        """
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        width_scale = math.sqrt(128 / self.config.width)
        with torch.no_grad():
            for i, (conv, std) in enumerate(zip(convs, INIT_STDS, strict=True)):
                scale = width_scale if i > 0 else 1.0  # layer 1's fan-in is in_channels * 9 at any width
                conv.weight.normal_(0.0, std * scale, generator=generator)
                conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"AllConvNet expects input of shape (N, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return self.features(x)  # (N, num_classes) logits; softmax belongs to the loss
