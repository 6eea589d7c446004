"""Figures for rows and sequences: the numbers read out of them are the attributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mindscope.attribution import Attribution, class_logit, integrated_gradients
from mindscope.quadrature import gauss_legendre
from mindscope.render import attribution_figure, feature_bars, sequence_heatmap
from mindscope.render.attribution import NEGATIVE, POSITIVE

CLASSES = ["low", "mid", "high"]


def row_attribution() -> tuple[Attribution, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(7, 3).double()
    x = torch.randn(2, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return integrated_gradients(model, x, 1, rule=gauss_legendre(2), output=class_logit), x


def test_bars_are_the_attributions_sorted_by_size_with_names_and_a_shared_scale() -> None:
    result, _ = row_attribution()
    a = result.attributions.numpy()
    names = [f"f{j}" for j in range(7)]
    fig = feature_bars(result, names=names, top_k=4, classes=CLASSES)
    assert len(fig.axes) == 2
    peak = np.abs(a).max()
    for i, ax in enumerate(fig.axes):
        order = np.argsort(-np.abs(a[i]), kind="stable")[:4]
        bars = ax.patches
        np.testing.assert_allclose([b.get_width() for b in bars], a[i, order], rtol=1e-12)
        np.testing.assert_allclose([b.get_y() + b.get_height() / 2 for b in bars], np.arange(4))
        assert [t.get_text() for t in ax.get_yticklabels()] == [names[j] for j in order]
        assert ax.yaxis_inverted()  # the largest on top
        for b, v in zip(bars, a[i, order]):
            np.testing.assert_allclose(b.get_facecolor()[:3], POSITIVE if v >= 0 else NEGATIVE)
        np.testing.assert_allclose(ax.get_xlim(), (-1.05 * peak, 1.05 * peak), rtol=1e-12)
        rest = a[i].sum() - a[i, order].sum()
        title = ax.get_title()
        assert f"top 4 of 7 features by |attribution|; the other 3 sum to {rest:.3g}" in title
        delta = float(result.output[i] - result.baseline_output[i])
        assert f"sum {a[i].sum():.4g}, F(x) - F(x') {delta:.4g}" in title
        assert title.startswith(f"#{i}: pred {CLASSES[int(result.predictions[i])]}")
    assert f"±{peak:.3g} = max |attribution|" in fig.axes[-1].get_xlabel()


def test_bars_default_names_all_features_and_flag_a_zero_map() -> None:
    values = torch.zeros(1, 3)
    fig = feature_bars(values)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["feature 0", "feature 1", "feature 2"]
    assert any(t.get_text() == "all attributions are zero" for t in ax.texts)
    assert ax.get_title() == "#0\ntop 3 of 3 features by |attribution|"
    with pytest.raises(ValueError, match="2 feature names for 3 features"):
        feature_bars(values, names=["a", "b"])
    with pytest.raises(ValueError, match="feature_bars draws rows"):
        feature_bars(torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="top_k must be a positive integer, got 0"):
        feature_bars(values, top_k=0)


def test_the_heat_map_is_the_map_with_a_symmetric_stated_scale() -> None:
    g = torch.Generator().manual_seed(2)
    maps = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    fig = sequence_heatmap(maps, positions=list("abcde"))
    axes = [ax for ax in fig.axes if ax.get_images()]
    assert len(axes) == 2
    peak = float(maps.abs().max())
    for i, ax in enumerate(axes):
        (image,) = ax.get_images()
        np.testing.assert_array_equal(np.asarray(image.get_array()), maps[i].numpy().T)  # values down, positions across
        np.testing.assert_allclose(image.get_clim(), (-peak, peak), rtol=1e-12)
        assert [t.get_text() for t in ax.get_xticklabels()] == list("abcde")
        assert ax.get_ylabel() == "value (d)"
    assert axes[-1].get_xlabel() == "position"
    bar = next(ax for ax in fig.axes if not ax.get_images())  # the colour bar's axes
    assert f"±{peak:.3g} = max |attribution|" in bar.get_ylabel()
    summed = sequence_heatmap(maps, per_position=True)
    strip = [ax for ax in summed.axes if ax.get_images()]
    total = maps.sum(2).numpy()
    for i, ax in enumerate(strip):
        np.testing.assert_allclose(np.asarray(ax.get_images()[0].get_array()), total[i][None, :], rtol=1e-12)
        np.testing.assert_allclose(ax.get_images()[0].get_clim(), (-np.abs(total).max(), np.abs(total).max()))
    with pytest.raises(ValueError, match="3 position labels for 5 positions"):
        sequence_heatmap(maps, positions=list("abc"))


def test_attribution_figure_picks_the_figure_that_fits_the_input() -> None:
    result, x = row_attribution()
    assert len(attribution_figure(x, result, CLASSES).axes[0].patches) == 7  # bars
    seq = torch.zeros(1, 4, 2, dtype=torch.float64)
    sequence_result = Attribution(
        seq + 1, torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), torch.ones(1), torch.ones(1)
    )
    assert attribution_figure(seq, sequence_result, CLASSES).axes[0].get_images()  # a heat map
    images = torch.rand(1, 3, 4, 5, dtype=torch.float64)
    image_result = Attribution(
        images, torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), torch.ones(1), torch.ones(1)
    )
    assert len(attribution_figure(images, image_result, CLASSES).axes) == 3  # image, overlay, heat map
    with pytest.raises(
        ValueError, match=r"draws images, but the input is tabular \(NF\); draw it with render.feature_bars"
    ):
        from mindscope.render import attribution_panels

        attribution_panels(x, result, CLASSES)
