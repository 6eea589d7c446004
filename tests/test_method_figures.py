"""Figures for Grad-CAM, layer attributions and feature visualisations: numbers read out of them."""

from __future__ import annotations

import numpy as np
import torch

from mindscope.attribution import GradCAM, LayerAttribution
from mindscope.render import (
    channel_looks_figure,
    feature_visualisation_figure,
    grad_cam_figure,
    layer_attribution_figure,
)
from mindscope.render.attribution import NEGATIVE, POSITIVE
from mindscope.render.gradcam import NO_EVIDENCE
from mindscope.visualisation import FeatureVisualisation

CLASSES = ["circle", "square", "triangle"]


def test_grad_cam_maps_share_one_stated_scale_over_the_image_and_empty_maps_say_so() -> None:
    maps = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    maps[1] *= 4.0
    maps[2] = 0.0
    result = GradCAM(
        maps=maps,
        layer_maps=maps[:, ::2, ::2],
        layer="features.4",
        weights=torch.ones(3, 2),
        targets=torch.tensor([0, 2, 1]),
        predictions=torch.tensor([0, 1, 1]),
        probabilities=torch.tensor([0.9, 0.6, 0.5]),
        output=torch.ones(3),
        empty=torch.tensor([False, False, True]),
    )
    fig = grad_cam_figure(torch.rand(3, 3, 6, 6), result, CLASSES)
    high = float(maps.max())
    panels = fig.axes[:3]
    for i, ax in enumerate(panels):
        heat = ax.get_images()[-1]
        np.testing.assert_allclose(heat.get_clim(), [0.0, high], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(heat.get_array()), maps[i].numpy())
        assert f"max {float(maps[i].max()):.3g}" in ax.get_title()
        assert (ax.get_xlabel() == NO_EVIDENCE) == (i == 2)
    assert "target triangle" in panels[1].get_title() and "target" not in panels[0].get_title()
    assert f"0 to {high:.3g}" in fig.get_supxlabel()
    assert "features.4" in fig.get_suptitle()


def layer_result() -> LayerAttribution:
    a = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    n = torch.ones(2, dtype=torch.float64)
    return LayerAttribution(
        attributions=a,
        layer="features.6",
        targets=torch.zeros(2, dtype=torch.int64),
        predictions=torch.zeros(2, dtype=torch.int64),
        probabilities=n,
        steps=torch.tensor([17, 33]),
        output=a.flatten(1).sum(1) + 0.01,
        baseline_output=0 * n,
        completeness_error=0.01 * n,
        relative_completeness_error=torch.tensor([0.0123, 0.02], dtype=torch.float64),
        map_error=None,
        converged=None,
        ill_conditioned=torch.zeros(2, dtype=torch.bool),
    )


def test_layer_bars_are_the_channel_totals_and_the_grid_shares_a_symmetric_scale() -> None:
    result = layer_result()
    fig = layer_attribution_figure(result, example=1, channels=3)
    a = result.attributions[1].numpy()
    totals = a.reshape(5, -1).sum(1)
    bars = fig.axes[0]
    heights = [p.get_height() for p in bars.patches]
    np.testing.assert_allclose(heights, totals, rtol=1e-12)
    for patch, total in zip(bars.patches, totals):
        assert np.allclose(patch.get_facecolor()[:3], POSITIVE if total >= 0 else NEGATIVE)
    assert "completeness err 2.00%" in bars.get_title() and "33 steps" in bars.get_title()
    top = np.argsort(-np.abs(totals))[:3]
    scale = np.abs(a[top]).max()
    tiles = fig.axes[1:4]
    for ax, channel in zip(tiles, top):
        image = ax.get_images()[0]
        np.testing.assert_allclose(image.get_clim(), [-scale, scale], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(image.get_array()), a[channel])
        assert ax.get_title().startswith(f"ch {channel}:")
    assert f"one scale ±{scale:.2g}" in fig.get_supxlabel()


def visualisation_result() -> FeatureVisualisation:
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    return FeatureVisualisation(
        images=images,
        layer="features.4",
        channels=(0, 5, 7, 9),
        activations=torch.tensor([1.5, 0.25, 3.0, 0.125]),
        history=torch.zeros(2, 4),
        seed=0,
    )


def tile(fig, row: int, column: int, size: int = 8) -> np.ndarray:
    """The pixels of tile (row, column) of a labelled mosaic of size x size tiles."""
    band = max(8, size // 2)
    top, left = row * (band + size + 2) + band, column * (size + 2)
    return np.asarray(fig.axes[0].get_images()[0].get_array())[top : top + size, left : left + size]


def test_the_feature_visualisation_grid_shows_each_image_with_the_activation_reached() -> None:
    result = visualisation_result()
    fig = feature_visualisation_figure(result, columns=2)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == [f"ch {c}: {float(a):.3g}" for c, a in zip(result.channels, result.activations)]
    for k, image in enumerate(result.images):
        np.testing.assert_allclose(tile(fig, k // 2, k % 2), image.permute(1, 2, 0).numpy(), rtol=1e-6)


def test_synthesised_images_sit_next_to_the_top_data_images_with_their_activations() -> None:
    result = visualisation_result()
    tops = [torch.rand(2, 3, 8, 8) for _ in range(4)]
    scores = [[0.9, 0.8], [0.7, 0.6], [0.5, 0.4], [0.3, 0.2]]
    fig = channel_looks_figure(result, tops, scores)
    labels = np.array([t.get_text() for t in fig.axes[0].texts]).reshape(4, 3)
    for k in range(4):
        assert labels[k, 0] == f"ch {result.channels[k]} made: {float(result.activations[k]):.3g}"
        np.testing.assert_allclose(tile(fig, k, 0), result.images[k].permute(1, 2, 0).numpy(), rtol=1e-6)
        for j in range(2):
            assert labels[k, j + 1] == f"data #{j + 1}: {scores[k][j]:.3g}"
            np.testing.assert_allclose(tile(fig, k, j + 1), tops[k][j].permute(1, 2, 0).numpy(), rtol=1e-6)
