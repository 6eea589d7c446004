"""Figures say what they draw and fit the page: numbers read out of the figures, never pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from mindscope.activations import activation_statistics
from mindscope.model import AllConvNet
from mindscope.render.activations import channel_grid, channel_statistics_figure, layer_statistics_figure
from mindscope.render.evaluation import deletion_figure, randomisation_figure
from mindscope.render.html import figure_png
from mindscope.render.weights import weight_histogram_figures
from mindscope.weights import paired_histograms

PAGE_PX = 1030  # the report's figures are at most this wide on the page (template: 1100 - 2 x 24 - 2 x 11)
DPI = 110  # figure_png's resolution in the report


def allconv(gain: float = 8.0) -> AllConvNet:
    torch.manual_seed(0)
    model = AllConvNet(width=4).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(gain)
    return model


def drawn(fig):
    """Lay the figure out as it is saved; return (renderer, figure box in display units)."""
    canvas = FigureCanvasAgg(fig)
    fig.canvas.draw()
    return canvas.get_renderer(), fig.bbox


def inside(box, outer, slack: float = 1.0) -> bool:
    return (
        box.x0 >= outer.x0 - slack
        and box.y0 >= outer.y0 - slack
        and box.x1 <= outer.x1 + slack
        and box.y1 <= outer.y1 + slack
    )


def texts(fig):
    """Every text the figure draws: titles, labels, tick labels in view, legends, annotations."""
    found = list(fig.texts) + [t for legend in fig.legends for t in legend.get_texts()]
    for name in ("_suptitle", "_supxlabel", "_supylabel"):
        found.append(getattr(fig, name, None))
    for ax in fig.axes:
        found += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        found += [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]  # only ticks in view
        found += [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
        if ax.get_legend() is not None:
            found += ax.get_legend().get_texts()
    return [t for t in found if t is not None and t.get_visible() and t.get_text().strip()]


def test_layer_statistics_say_n_a_where_no_activation_saturates_and_stay_readable() -> None:
    model = allconv()
    stats = activation_statistics(model, torch.randn(6, 3, 16, 16, dtype=torch.float64), [3, 6, 9])
    assert list(stats) == ["features.5", "features.12", "features.18"]
    fig = layer_statistics_figure(stats)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]  # active x3, saturated x3, dead x3
    s3, s6 = stats["features.5"].summary, stats["features.12"].summary
    np.testing.assert_allclose(heights[3:6], [s3.saturated, s6.saturated, 0.0])  # layer 9: no bar...
    assert [t.get_text() for t in ax.texts] == ["n/a"]  # ...but "n/a" where it would stand
    x_na = ax.texts[0].get_position()[0]
    assert x_na == pytest.approx(ax.patches[5].get_x() + ax.patches[5].get_width() / 2)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "within 0.05 of -1" in legend[1] and "n/a: no saturating activation" in legend[1]
    # shown at full size on the page, every text is at least 8 pt
    width_px = fig.get_size_inches()[0] * DPI
    assert width_px <= PAGE_PX
    assert min(t.get_fontsize() for t in texts(fig)) >= 8
    renderer, box = drawn(fig)
    for t in texts(fig):
        assert inside(t.get_window_extent(renderer), box), f"{t.get_text()!r} is cut off"


def test_channel_statistics_title_fits_and_says_when_no_rule_applies() -> None:
    model = allconv()
    stats = activation_statistics(model, torch.randn(4, 3, 16, 16, dtype=torch.float64), [3, 9])
    for name, label in (("features.5", "layer 3 (features.5)"), ("features.18", "layer 9 (features.18)")):
        fig = channel_statistics_figure(stats[name], label=label)
        renderer, box = drawn(fig)
        title = fig.axes[0].title
        assert label in title.get_text()
        assert inside(title.get_window_extent(renderer), box), f"title cut off: {title.get_text()!r}"
        assert ("saturated" in title.get_text()) == (name == "features.5")
        if name == "features.18":
            assert "no saturating activation" in title.get_text()


def test_channel_grid_title_counts_the_channels_it_draws() -> None:
    a = torch.randn(32, 8, 8)
    fig = channel_grid(a, image=torch.rand(3, 32, 32))
    assert len(fig.axes[-1].texts) == 27
    assert "27 of 32 channels" in fig.axes[-1].get_title()
    fig = channel_grid(torch.randn(8, 4, 4))
    assert "8 channels" in fig.axes[-1].get_title() and " of " not in fig.axes[-1].get_title()


def test_a_numerically_flat_channel_is_labelled_not_stretched_silently() -> None:
    a = torch.randn(4, 6, 6, dtype=torch.float64)
    a[1] = -1.0 + 1e-9 * torch.randn(6, 6, dtype=torch.float64)  # a dead ELU channel: rounding noise only
    fig = channel_grid(a)
    assert [t.get_text() for t in fig.axes[0].texts] == ["0", "1 flat", "2", "3"]


def test_before_after_histograms_share_y_and_keep_legends_off_the_peaks() -> None:
    torch.manual_seed(0)
    before_model, after_model = AllConvNet(width=4), AllConvNet(width=4)
    with torch.no_grad():
        for p in after_model.parameters():
            p.mul_(0.3)  # narrower after: its peaks are higher than before's
    before, after = paired_histograms(before_model, after_model, bins=16)
    fig = weight_histogram_figures(before, after)[0]
    left, right = fig.axes[:2]
    assert left.get_ylim() == right.get_ylim()
    densities = [
        np.asarray(h.counts, dtype=np.float64) / (float(h.counts.sum()) * np.diff(np.asarray(h.edges, np.float64)))
        for side in (before, after)
        for name, h in side.items()
        if name in ("features.0.weight", "features.2.weight", "features.4.weight")
    ]
    peak = max(d.max() for d in densities)
    assert left.get_ylim()[1] >= peak  # the tallest peak of either side fits both panels
    renderer, box = drawn(fig)
    for ax in (left, right):
        legend = ax.get_legend().get_window_extent(renderer)
        assert not legend.overlaps(ax.get_window_extent(renderer)), "the legend covers the data"
        assert inside(legend, box)


def test_trust_figures_keep_every_label_inside() -> None:
    from mindscope.evaluation import DeletionResult, RandomisationResult

    # a model with long dotted names: the rotated tick labels take the height the y-label needs
    layers = tuple(f"backbone.stage{i}.block1.conv2" for i in range(9, 0, -1))
    values = np.linspace(1, 0, len(layers) + 1)[:, None].repeat(3, axis=1)
    rand = {"gradient": RandomisationResult(layers, values, values, 0.5)}
    fractions = np.linspace(0, 1, 5)
    curve = np.linspace(1, 0, 5)[None].repeat(3, axis=0)
    dele = {"gradient": DeletionResult(fractions, curve, curve[:, ::-1], curve, curve[:, ::-1], np.zeros(3, int))}
    for fig in (randomisation_figure(rand), deletion_figure(dele)):
        renderer, box = drawn(fig)
        for t in texts(fig):
            assert inside(t.get_window_extent(renderer), box), f"{t.get_text()!r} is cut off"
        figure_png(fig)  # and it saves
