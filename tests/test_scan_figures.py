"""A scan's figures, read back as numbers: one colour scale for all classes; every error counted once."""

from __future__ import annotations

import numpy as np
import pytest

from mindscope.render.scan import class_maps_figure, completeness_figure


def test_every_class_map_shares_one_symmetric_scale_set_by_the_largest_pixel():
    rng = np.random.default_rng(0)
    mean = 0.1 * rng.normal(size=(3, 3, 4, 4))
    mean[1] = 0.0  # a class nobody was attributed to
    mean[2, :, 1, 2] = [2.0, 3.0, -0.5]  # summed over channels: 4.5, the largest |value|
    fig = class_maps_figure(mean, ("a", "b", "c"), [5, 0, 7])
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 3
    limit = 4.5  # the planted pixel: no other sum over channels comes near it
    assert np.abs(mean.sum(axis=1)).max() == limit
    for image in images:
        assert image.norm.vmin == pytest.approx(-limit) and image.norm.vmax == pytest.approx(limit)
        np.testing.assert_allclose(image.get_array(), mean[images.index(image)].sum(axis=0))
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == ["a (5 images)", "b (no images)", "c (7 images)"]
    assert f"±{limit:.3g}" in fig._suptitle.get_text()


def test_the_histogram_counts_every_error_once_and_marks_the_tolerance():
    errors = np.array([1e-4, 2e-3, 5e-3, 0.02, 0.5, 0.0, np.nan])
    fig = completeness_figure(errors, 0.01, title="integrated")
    ax = fig.axes[0]
    heights = sum(patch.get_height() for patch in ax.patches)
    assert heights == 5  # the exact 0 and the NaN are not drawn...
    title = ax.get_title()
    assert "7 images" in title and "4 below the tolerance" in title  # ...but are counted
    assert "1 exact (not drawn)" in title and "1 without a completeness error" in title
    assert ax.get_xscale() == "log"
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [0.01]


def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match=r"needs mean \(K, C, H, W\) with K = 2 classes"):
        class_maps_figure(np.zeros((3, 1, 2, 2)), ("a", "b"), [1, 1])
