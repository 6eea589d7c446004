"""What a report shows: which images, layers and tolerances."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportOptions:
    image: int = 0  # test image for activations
    layers: tuple[int, ...] = (3, 6, 9)  # layers for activation grids and the GIF
    attribution_images: int = 6  # test images for integrated gradients
    interior_image: int | None = None  # default: the first correctly classified test image
    tolerance: float = 0.01  # IG relative completeness error target
    statistics_images: int = 500  # test images for per-channel statistics
    evaluation_images: int = 6  # test images for the trust checks (0: skip)
    visualisation_channels: int = 9  # channels per layer synthesised in "what each channel looks for" (0: skip)
    visualisation_steps: int = 64  # optimisation steps per synthesised image
    device: str = "cpu"
