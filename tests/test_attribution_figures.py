"""Attribution figures state their scale and flag what cannot be read: numbers read out of the figures."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mindscope.attribution import Attribution, InteriorGradients
from mindscope.render.attribution import attribution_panels, interior_frame_figures, overlay

CLASSES = ["circle", "square", "triangle"]


def synthetic_interior() -> tuple[InteriorGradients, torch.Tensor]:
    """Three alphas for one 1x6x6 image; the first frame's gradient is 1e-16, rounding noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64)
    scales = torch.tensor([1e-16, 1.0, 0.1], dtype=torch.float64)
    grads = torch.randn(3, 1, 1, 6, 6, generator=g, dtype=torch.float64) * scales.view(3, 1, 1, 1, 1)
    result = InteriorGradients(
        alphas=torch.tensor([0.01, 0.5, 1.0], dtype=torch.float64),
        gradients=grads,
        predictions=torch.tensor([[1], [0], [0]]),
        probabilities=torch.tensor([[0.5], [0.7], [0.9]], dtype=torch.float64),
        target_probabilities=torch.tensor([[0.2], [0.7], [0.9]], dtype=torch.float64),
        gradient_norms=grads.flatten(2).norm(dim=2),
        targets=torch.tensor([0]),
        baseline=torch.zeros(1, 1, 6, 6, dtype=torch.float64),
    )
    return result, x


def _signed_image(ax):
    return ax.get_images()[-1]  # the overlay drawn over the grey copy


def test_interior_frames_share_one_stated_colour_scale_and_mark_zero_gradients() -> None:
    result, x = synthetic_interior()
    figures = interior_frame_figures(result, x, CLASSES)
    maps = result.gradients[:, 0].sum(1).numpy()  # (A, H, W), summed over channels
    scale = np.percentile(np.abs(maps), 99)  # pooled over every frame
    for k, fig in enumerate(figures):
        left, right = fig.axes[:2]
        low, high = _signed_image(right).get_clim()
        np.testing.assert_allclose([low, high], [-scale, scale], rtol=1e-12)
        assert left.get_title().startswith(f"α = {[0.01, 0.5, 1.0][k]:g}\n")
        assert f"±{scale:.2g}" in fig.get_supxlabel() and "every α" in fig.get_supxlabel()
        marked = any("numerically zero" in t.get_text() for t in right.texts)
        assert marked == (k == 0), f"frame {k}: zero mark {marked}"


def test_attribution_panels_state_each_scale_and_flag_images() -> None:
    g = torch.Generator().manual_seed(1)
    n = 3
    maps = torch.randn(n, 1, 5, 5, generator=g, dtype=torch.float64)
    maps[2] *= 1e-12  # numerically zero beside the others
    result = Attribution(
        attributions=maps,
        targets=torch.zeros(n, dtype=torch.int64),
        predictions=torch.zeros(n, dtype=torch.int64),
        probabilities=torch.full((n,), 0.9, dtype=torch.float64),
        steps=torch.full((n,), 17),
        relative_completeness_error=torch.tensor([0.001, 20.0, 0.002], dtype=torch.float64),
        converged=torch.tensor([True, True, False]),
        ill_conditioned=torch.tensor([False, True, False]),
    )
    pixels = torch.ones(n, 1, 5, 5, dtype=torch.float64)  # white: where blending rounds past 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Clipping input data to the valid range for imshow" fails the test
        fig = attribution_panels(pixels, result, CLASSES)
        fig.canvas.draw()
    axes = np.array(fig.axes).reshape(n, 3)
    for i in range(n):
        scale = np.percentile(np.abs(maps[i, 0].numpy()), 99)
        np.testing.assert_allclose(_signed_image(axes[i, 1]).get_clim(), [-scale, scale], rtol=1e-12)
        np.testing.assert_allclose(axes[i, 2].get_images()[0].get_clim(), [0, scale], rtol=1e-12)
        assert f"±{scale:.2g}" in axes[i, 1].get_title()
    flags = [axes[i, 0].get_xlabel().replace("\n", " ") for i in range(n)]
    assert flags[0] == ""
    assert "nothing to explain: the baseline already scores F(x)" in flags[1]
    assert "not converged" in flags[2] and "numerically zero" in flags[2]


def test_overlay_stays_in_the_valid_range_on_white_images() -> None:
    pixels = np.ones((3, 8, 8))
    attribution = np.random.default_rng(0).normal(size=(3, 8, 8))
    rgb = overlay(pixels, attribution)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0


def test_the_saturation_curve_marks_added_alphas_and_the_flip() -> None:
    from mindscope.render.attribution import saturation_curve

    result, _ = synthetic_interior()  # the prediction changes between alpha 0.01 and 0.5
    added = torch.tensor([False, True, False])
    fig = saturation_curve(result, CLASSES, added=added)
    prob_ax = fig.axes[0]
    main, hollow = prob_ax.get_lines()[:2]
    np.testing.assert_allclose(main.get_xdata(), [0.01, 0.5, 1.0])
    assert list(main.get_markevery()) == [0, 2]  # the asked-for alphas, filled
    np.testing.assert_allclose(hollow.get_xdata(), [0.5])
    assert hollow.get_markerfacecolor() == "white" and hollow.get_label() == "added by bisection"
    (band,) = prob_ax.patches
    x0, x1 = band.get_x(), band.get_x() + band.get_width()
    assert (x0, x1) == pytest.approx((0.01, 0.5))
    assert prob_ax.get_xlabel().startswith("α")


def test_flags_say_why_an_image_did_not_converge() -> None:
    from mindscope.render.attribution import flag_text

    assert flag_text(False, True) == ""
    assert flag_text(False, False) == "not converged: the step budget ran out before the tolerance"
    assert flag_text(True, True) == "nothing to explain: the baseline already scores F(x)"
    assert flag_text(True, False).endswith("(its map was not refined to the tolerance)")
    assert "step budget" not in flag_text(True, False)  # stopping early on purpose is not running out
