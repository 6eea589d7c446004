"""Channels-last images give what channels-first images give: maps, evaluation numbers and figures.

The NHWC network is "permute to NCHW, then the NCHW network", so every number must agree
with the NCHW run on the same images; nothing here is compared with its own earlier output.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from mindscope.attribution import integrated_gradients, interior_gradients
from mindscope.evaluation import (
    deletion_insertion,
    evaluate_methods,
    localisation,
    pixel_map,
    randomisation_check,
)
from mindscope.quadrature import gauss_legendre
from mindscope.render.attribution import attribution_panels, interior_frame_figures
from mindscope.render.evaluation import maps_figure

CLASSES = ["a", "b", "c"]


class ToChannelsFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


def networks() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    first = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ELU(),
        nn.Conv2d(4, 3, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).double()
    last = nn.Sequential(ToChannelsFirst(), *first)  # the same modules, so the same weights
    return first, last


@pytest.fixture(scope="module")
def case():
    first, last = networks()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 1:5] = True
    ig = integrated_gradients(first, x, None, rule=gauss_legendre(8))
    return first, last, x, x.permute(0, 2, 3, 1).contiguous(), masks, ig


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.movedim(-3, -1).contiguous()


def test_the_maps_and_pixel_maps_agree(case) -> None:
    first, last, x, x_last, _, ig = case
    ig_last = integrated_gradients(last, x_last, None, rule=gauss_legendre(8))
    assert_close(ig_last.attributions, nhwc(ig.attributions), rtol=1e-10, atol=1e-14)
    assert_close(ig_last.targets, ig.targets)
    expected = ig.attributions.sum(1)  # (N, H, W), summed over the channel axis
    assert_close(pixel_map(ig_last.attributions, x_last.shape, layout="NHWC"), expected, rtol=1e-10, atol=1e-14)
    assert_close(pixel_map(ig.attributions, x.shape), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"x has shape \(3, 8, 8, 3\): channels last .* Pass layout='NHWC'"):
        pixel_map(ig_last.attributions, x_last.shape)


def test_deletion_insertion_and_localisation_agree(case) -> None:
    first, last, x, x_last, masks, ig = case
    maps = ig.attributions
    ours = deletion_insertion(first, x, None, maps, steps=8, baseline=x.mean())
    theirs = deletion_insertion(last, x_last, None, nhwc(maps), steps=8, baseline=x.mean(), layout="NHWC")
    for field in ("deletion", "insertion", "random_deletion", "random_insertion", "fractions"):
        np.testing.assert_allclose(getattr(theirs, field), getattr(ours, field), rtol=1e-12, err_msg=field)
    assert theirs.deletion_auc == pytest.approx(ours.deletion_auc, rel=1e-12)
    with pytest.raises(ValueError, match=r"channels last \(N, H, W, C\) or 8 channels first"):
        deletion_insertion(last, x_last, None, nhwc(maps))  # refused, not summed over the wrong axis
    loc, loc_last = localisation(maps, masks), localisation(nhwc(maps), masks, layout="NHWC")
    for field in ("mass_inside", "pointing", "random_mass_inside", "random_pointing", "mask_fraction"):
        np.testing.assert_array_equal(getattr(loc_last, field), getattr(loc, field), err_msg=field)
    summed = localisation(nhwc(maps).sum(-1), masks, layout="NHWC")  # already one value per pixel
    np.testing.assert_array_equal(summed.mass_inside, loc.mass_inside)
    # the old silent failure: a (N, H, W, C) map read as (N, C, H, W) does not fit the masks
    with pytest.raises(ValueError, match=r"channels last"):
        localisation(nhwc(maps), masks)


@pytest.mark.slow
def test_randomisation_and_the_whole_table_agree(case) -> None:
    first, last, x, x_last, masks, _ = case
    method = lambda m, z, t: integrated_gradients(m, z, t, rule=gauss_legendre(8))  # noqa: E731
    ours = randomisation_check(first, x, None, method, baseline=torch.zeros_like(x))
    theirs = randomisation_check(last, x_last, None, method, baseline=torch.zeros_like(x_last), layout="NHWC")
    assert len(theirs.layers) == len(ours.layers) == 2
    for field in ("spearman_abs", "spearman_signed", "spearman_abs_all", "spearman_signed_all", "compared"):
        np.testing.assert_allclose(getattr(theirs, field), getattr(ours, field), rtol=1e-9, err_msg=field)
    table = evaluate_methods(first, x, None, masks, {"ig": method}, steps=4)
    table_last = evaluate_methods(last, x_last, None, masks, {"ig": method}, steps=4, layout="NHWC")
    assert table_last.checks == table.checks
    np.testing.assert_allclose(table_last.values(), table.values(), rtol=1e-9)
    with pytest.raises(ValueError, match=r"masks of shape \(3, 8, 3\) do not fit x of shape \(3, 8, 8, 3\) \(NHWC\)"):
        evaluate_methods(last, x_last, None, masks[:, :, :3], {"ig": method}, layout="NHWC")


def _numbers(fig) -> list:
    """Every number and word a figure shows: image arrays, colour limits, titles and labels."""
    out = []
    for ax in fig.axes:
        out.append((ax.get_title(), ax.get_xlabel(), ax.get_ylabel()))
        for image in ax.get_images():
            out.append((np.asarray(image.get_array()), image.get_clim()))
    return out


def _assert_same(left, right) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        if isinstance(a[0], np.ndarray):
            np.testing.assert_array_equal(a[0], b[0])
            assert a[1] == b[1]
        else:
            assert a == b


def test_the_figures_agree(case) -> None:
    first, last, x, x_last, masks, ig = case
    ig_last = replace(ig, attributions=nhwc(ig.attributions))
    panels = attribution_panels(x, ig, CLASSES)
    _assert_same(_numbers(attribution_panels(x_last, ig_last, CLASSES, layout="NHWC")), _numbers(panels))
    assert len(panels.axes) == 9 and panels.axes[1].get_images()[-1].get_clim()[1] > 0
    with pytest.raises(ValueError, match=r"pixels has shape \(3, 8, 8, 3\): channels last"):
        attribution_panels(x_last, ig_last, CLASSES)
    inner = interior_gradients(first, x, None, alphas=[0.5, 1.0])
    inner_last = replace(inner, gradients=nhwc(inner.gradients), baseline=nhwc(inner.baseline))
    frames = interior_frame_figures(inner, x, CLASSES, index=1)
    frames_last = interior_frame_figures(inner_last, x_last, CLASSES, index=1, layout="NHWC")
    for fig, fig_last in zip(frames, frames_last, strict=True):
        _assert_same(_numbers(fig_last), _numbers(fig))
        assert fig_last.get_supxlabel() == fig.get_supxlabel()
    grid = maps_figure(x.numpy(), {"ig": ig.attributions.numpy()}, masks.numpy())
    grid_last = maps_figure(x_last.numpy(), {"ig": nhwc(ig.attributions).numpy()}, masks.numpy(), layout="NHWC")
    _assert_same(_numbers(grid_last), _numbers(grid))
