"""A scan's figures, read back as numbers: one colour scale for all classes; every error counted once."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from mindscope.render.attribution import overlay
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


def test_a_figure_of_classes_without_images_invents_no_colour_scale():
    fig = class_maps_figure(np.zeros((1, 3, 4, 4)), ("ring",), [0], title="integrated: mean map of ring")
    assert len(fig.axes) == 1  # the panel alone: no colour bar
    assert fig._suptitle.get_text() == "integrated: mean map of ring; no image was attributed to ring"


def test_class_maps_are_blue_for_the_class_and_red_against_it_as_the_attribution_panels_are():
    mean = np.zeros((2, 3, 5, 5))
    mean[0, 0, 1, 1] = 2.0  # for class a: the largest |mean|
    mean[1, 2, 3, 3] = -1.5  # against class b
    fig = class_maps_figure(mean, ("a", "b"), [4, 3])
    images = [ax.images[0] for ax in fig.axes if ax.images]
    rgb = [image.to_rgba(image.get_array())[..., :3] for image in images]
    for_a, against_b, nothing = rgb[0][1, 1], rgb[1][3, 3], rgb[0][0, 0]
    assert for_a[2] > for_a[0] + 0.5 and against_b[0] > against_b[2] + 0.3, (for_a, against_b)
    assert np.allclose(nothing, 1.0, atol=0.01)  # zero is white
    # the walk-through's overlay: positive attribution is drawn blue, negative red
    marked = overlay(np.full((3, 2, 2), 0.5), np.array([[[1.0, -1.0], [0.0, 0.0]]]))
    assert marked[0, 0, 2] > marked[0, 0, 0] and marked[0, 1, 0] > marked[0, 1, 2]

    (bar,) = [image.colorbar for image in images if image.colorbar is not None]
    assert bar.ax.get_ylim() == pytest.approx((-2.0, 2.0))  # symmetric, the largest |mean|
    assert "blue: for the class, red: against it" in bar.ax.get_ylabel()
    # read the drawn colour bar back from the rendered figure: blue at its top, red at its bottom
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(float) / 255  # (rows from the top, columns, 3)
    box = bar.ax.get_window_extent()
    height = pixels.shape[0]
    column = int((box.x0 + box.x1) / 2)
    top, bottom = pixels[height - int(box.y1) + 3, column], pixels[height - int(box.y0) - 3, column]
    assert top[2] > top[0] + 0.5 and bottom[0] > bottom[2] + 0.5, (top, bottom)


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
