"""Weight histograms, statistics, changes, figures, TensorBoard export and the `weights` CLI.

References: numpy in float64 (np.histogram, np.mean, np.std, np.quantile), hand-computed
tables, and tensorboard's own EventAccumulator reading the event files back.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from mindscope.model import AllConvNet
from mindscope.render.tables import format_change_table
from mindscope.weights import (
    histogram_quantiles,
    histogram_rows,
    paired_histograms,
    shared_edges,
    weight_changes,
    weight_histograms,
)


@pytest.fixture
def model() -> AllConvNet:
    torch.manual_seed(0)
    return AllConvNet(width=4)


def test_counts_sum_to_numel_for_every_parameter(model):
    hists = weight_histograms(model, bins=16)
    params = dict(model.named_parameters())
    assert list(hists) == list(params)  # weights and biases apart, in order
    for name, h in hists.items():
        assert h.counts.dtype == torch.int64 and h.counts.shape == (16,)
        assert h.edges.dtype == torch.float64 and h.edges.shape == (17,)
        assert int(h.counts.sum()) == params[name].numel() == h.stats.count


def test_values_beyond_an_explicit_range_land_in_the_end_bins():
    x = torch.tensor([-5.0, -1.0, 0.0, 0.5, 1.0, 7.0])
    h = weight_histograms({"w": x}, bins=4, range=(-1.0, 1.0))["w"]
    assert h.counts.tolist() == [2, 0, 1, 3]
    assert h.stats.min == -5.0 and h.stats.max == 7.0


def test_histogram_and_stats_match_numpy_float64():
    torch.manual_seed(1)
    x = (torch.randn(37, 11) * 0.02 + 0.003).float()
    x[0, :5] = torch.tensor([0.0, 1e-3, -1e-3, 1.1e-3, -2e-4])
    h = weight_histograms({"w": x}, bins=23)["w"]
    ref = x.double().numpy().ravel()
    counts, edges = np.histogram(ref, bins=23)
    np.testing.assert_array_equal(h.counts.numpy(), counts)
    np.testing.assert_array_equal(h.edges.numpy(), edges)
    s = h.stats
    assert s.count == ref.size and s.nan_count == 0 and s.inf_count == 0
    assert s.mean == pytest.approx(np.mean(ref), rel=1e-12)
    assert s.std == pytest.approx(np.std(ref), rel=1e-12)
    assert (s.min, s.max) == (ref.min(), ref.max())
    assert s.l2 == pytest.approx(np.sqrt(np.sum(ref * ref)), rel=1e-12)
    assert s.near_zero_fraction == pytest.approx(np.mean(np.abs(ref) <= 1e-3), abs=0)


@pytest.mark.parametrize("values", [np.arange(11) / 10, np.arange(-7, 30) / 7, np.linspace(-0.3, 0.2, 64)])
def test_values_on_bin_edges_fall_where_numpy_puts_them(values):
    for bins in (3, 10, 64):
        h = weight_histograms({"w": torch.from_numpy(values)}, bins=bins)["w"]
        np.testing.assert_array_equal(h.counts.numpy(), np.histogram(values, bins=bins)[0])


def test_nan_and_inf_are_counted_not_binned_and_do_not_poison_the_row():
    x = torch.tensor([0.5, float("nan"), -0.25, float("inf"), 1.0, -float("inf"), 0.0])
    h = weight_histograms({"w": x}, bins=5)["w"]
    finite = np.array([0.5, -0.25, 1.0, 0.0])
    assert (h.stats.nan_count, h.stats.inf_count, h.stats.count) == (1, 2, 7)
    assert int(h.counts.sum()) == 4
    np.testing.assert_array_equal(h.counts.numpy(), np.histogram(finite, bins=5)[0])
    for value in (h.stats.mean, h.stats.std, h.stats.min, h.stats.max, h.stats.l2):
        assert math.isfinite(value)
    assert h.stats.mean == pytest.approx(finite.mean())
    assert h.stats.std == pytest.approx(finite.std())
    assert (h.stats.min, h.stats.max) == (-0.25, 1.0)
    assert h.stats.near_zero_fraction == pytest.approx(0.25)
    assert torch.isfinite(h.edges).all()


def test_all_nan_and_constant_tensors_do_not_crash():
    hists = weight_histograms({"nan": torch.full((3,), float("nan")), "zero": torch.zeros(4)}, bins=4)
    assert int(hists["nan"].counts.sum()) == 0 and hists["nan"].stats.nan_count == 3
    assert math.isnan(hists["nan"].stats.mean)
    zero = hists["zero"]  # numpy's convention: range widened to +-0.5
    np.testing.assert_array_equal(zero.counts.numpy(), np.histogram(np.zeros(4), bins=4)[0])
    np.testing.assert_allclose(zero.edges.numpy(), np.histogram(np.zeros(4), bins=4)[1])
    assert zero.stats.std == 0.0 and zero.stats.near_zero_fraction == 1.0


# --- exactness against numpy, at random edges ------------------------------------------


def _numpy_reference(values: torch.Tensor, *, bins: int = 64, range=None, edges=None):
    """numpy's answer for one tensor: its finite values in float64, those beyond the edges clipped into them."""
    f = values.detach().double().numpy().ravel()
    f = f[np.isfinite(f)]
    if edges is None and not (f.size or range):  # no finite value and no range: -0.5..0.5, as shared_edges
        edges = np.linspace(-0.5, 0.5, bins + 1)
    elif edges is None:
        try:
            edges = np.histogram_bin_edges(f, bins, range=range)
        except ValueError:  # numpy refuses bins narrower than its float64 step; np.linspace still defines them
            edges = np.linspace(f.min(), f.max(), bins + 1)
    return np.histogram(np.clip(f, edges[0], edges[-1]), bins=edges)[0], edges, f


def _assert_like_numpy(h, values: torch.Tensor, **reference) -> None:
    counts, edges, f = _numpy_reference(values, **reference)
    np.testing.assert_array_equal(h.counts.numpy(), counts)
    np.testing.assert_array_equal(h.edges.numpy(), edges)
    x, s = values.detach().double().numpy(), h.stats
    assert (s.count, s.nan_count, s.inf_count) == (x.size, np.isnan(x).sum(), np.isinf(x).sum())
    if not f.size:
        assert math.isnan(s.mean) and math.isnan(s.std) and s.l2 == 0.0
        return
    scale = np.abs(f).max()
    assert (s.min, s.max) == (f.min(), f.max())
    assert s.mean == pytest.approx(f.mean(), rel=1e-12, abs=1e-14 * scale)
    assert s.std == pytest.approx(f.std(), rel=1e-11, abs=1e-14 * scale)
    assert s.l2 == pytest.approx(np.sqrt(np.sum(f * f)), rel=1e-12)
    assert s.near_zero_fraction == np.mean(np.abs(f) <= 1e-3)


def _beside_edges(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """x plus, for every edge, the numbers of x's dtype just below, at (rounded) and just above it."""
    at = edges.astype(x.dtype)
    near = [np.nextafter(at, np.array(-np.inf, x.dtype)), at, np.nextafter(at, np.array(np.inf, x.dtype))]
    return np.random.default_rng(0).permutation(np.concatenate([x, *near]))


@pytest.fixture(params=["small", "large", "large, masked"])
def path(request, monkeypatch):
    """Send every tensor down one of the engine's paths: all at once in float64 on the host, or in
    its own dtype with the values near an edge picked out on the host, or masked as on a GPU."""
    import mindscope.histogram

    monkeypatch.setattr(mindscope.histogram, "TINY", 1 << 40 if request.param == "small" else 0)
    if request.param == "large, masked":
        monkeypatch.setattr(mindscope.histogram, "_host", lambda device: False)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(4))
def test_values_beside_random_edges_are_binned_exactly_like_numpy(dtype, seed, path):
    rng = np.random.default_rng(seed)
    misplaced = 0  # values that rounded arithmetic in the tensor's dtype puts in the wrong bin: the data is hard
    for bins in (1, 3, 64, 255, 300):
        x = (rng.normal(size=3000) * 10.0 ** rng.uniform(-5, 2) + rng.normal() * rng.choice([0, 0.1, 30])).astype(dtype)
        interior = np.histogram_bin_edges(x.astype(np.float64), bins)[1:-1]  # min and max unchanged below
        x = _beside_edges(x, interior)
        _assert_like_numpy(
            weight_histograms({"w": torch.from_numpy(x)}, bins=bins)["w"], torch.from_numpy(x), bins=bins
        )
        naive = np.clip(np.floor((x - x.min()) * dtype(bins / (x.max() - x.min()))), 0, bins - 1).astype(int)
        misplaced += np.abs(np.bincount(naive, minlength=bins) - np.histogram(x.astype(np.float64), bins)[0]).sum()
    assert misplaced > 0


def test_tensors_of_one_size_binned_together_like_numpy(path, monkeypatch):
    """Rows of one matrix, each on its own edges: the slots of the last rows lie far from 0."""
    import mindscope.histogram

    monkeypatch.setattr(mindscope.histogram, "BATCH", 1 << 40)
    rng = np.random.default_rng(3)
    tensors = {}
    for k in range(16):
        x = (rng.normal(size=2000) * 10.0 ** rng.uniform(-4, 1) + rng.normal() * rng.choice([0, 1, 30])).astype(
            np.float32
        )
        x = _beside_edges(x, np.histogram_bin_edges(x.astype(np.float64), 64)[1:-1])[:2100]  # one size for all
        tensors[f"t{k}"] = torch.from_numpy(np.concatenate([x, [x.min(), x.max()]]))
    for options in ({"bins": 64}, {"bins": 64, "range": (-0.5, 2.0)}):
        hists = weight_histograms(tensors, **options)
        for name, t in tensors.items():
            _assert_like_numpy(hists[name], t, **options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_explicit_range_and_edges_count_values_beyond_them_in_the_end_bins(dtype, path):
    rng = np.random.default_rng(1)
    even, uneven = np.linspace(-0.7, 1.3, 17), np.sort(rng.uniform(-1.0, 1.0, 9))
    raw = rng.normal(0.0, 1.0, 4000).astype(np.float32 if dtype == torch.float32 else np.float64)
    x = torch.from_numpy(_beside_edges(_beside_edges(raw, even), uneven))
    _assert_like_numpy(weight_histograms({"w": x}, bins=16, range=(-0.7, 1.3))["w"], x, bins=16, range=(-0.7, 1.3))
    for edges in (even, uneven):
        _assert_like_numpy(weight_histograms({"w": x}, edges=torch.from_numpy(edges))["w"], x, edges=edges)
    inside = x[(x >= -0.7) & (x <= 1.3)]  # the same edges given explicitly and implied by the data
    _assert_like_numpy(
        weight_histograms({"w": inside}, edges=torch.tensor([-0.7, 0.0, 1.3], dtype=torch.float64))["w"],
        inside,
        edges=[-0.7, 0.0, 1.3],
    )


def _awkward_tensors() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(2)
    holes = torch.from_numpy(rng.normal(0.0, 0.05, 40000)).float()
    holes[rng.integers(0, 40000, 300)] = torch.tensor([math.nan, math.inf, -math.inf]).repeat(100)
    small_holes = torch.tensor([0.5, math.nan, -0.25, math.inf, 1.0, -math.inf, 0.0])
    offset = (1.0 + 0.01 * rng.normal(size=2000)).astype(np.float32)  # mean >> spread: the widest error bound
    return {
        "offset": torch.from_numpy(_beside_edges(offset, np.histogram_bin_edges(offset.astype(np.float64), 10))),
        "empty": torch.zeros(0),
        "constant": torch.full((7,), 0.3),
        "zeros": torch.zeros(5, dtype=torch.float64),
        "large constant": torch.full((30000,), -2.5),
        "holes": holes,
        "small holes": small_holes,
        "nothing finite": torch.tensor([math.inf, -math.inf, math.nan]),
        "one value": torch.tensor([1e-3]),
        "tiny range": torch.tensor([1.0, 1.0 + 2**-23, 1.0 + 2**-22], dtype=torch.float32),
        "huge values": torch.tensor([-3e38, 0.0, 3e38]),
        "subnormal": torch.tensor([1e-45, 0.0, 3e-45, 1e-44]),
        "zero step": torch.tensor([0.0, 5e-324, 1e-323], dtype=torch.float64),  # numpy's linspace steps 0 here
    }


@pytest.mark.parametrize("options", [{"bins": 10}, {"bins": 1}, {"bins": 10, "range": (-1.0, 1.0)}])
def test_nan_inf_empty_and_constant_tensors_match_numpy(options):
    tensors = _awkward_tensors()
    hists = weight_histograms(tensors, **options)
    for name, t in tensors.items():
        _assert_like_numpy(hists[name], t, **options)


def test_tensors_of_very_different_sizes_and_dtypes_at_once():
    rng = np.random.default_rng(5)
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    tensors = {
        f"t{i}": torch.from_numpy(rng.normal(rng.uniform(-1, 1), 10 ** rng.uniform(-4, 1), n)).to(dtypes[i % 4])
        for i, n in enumerate([1, 2, 9, 300, 5000, 16383, 16384, 70000, 400000, 3])
    }
    hists = weight_histograms(tensors, bins=64)
    assert list(hists) == list(tensors)
    for name, t in tensors.items():
        _assert_like_numpy(hists[name], t, bins=64)


@pytest.mark.parametrize(
    "tiny, batch, host",
    [
        (0, 0, True),  # every tensor large and alone: binned in its dtype, near-edge values picked out on the host
        (0, 0, False),  # ... near-edge values masked, as on a GPU
        (0, 1 << 40, True),  # large tensors of one size as the rows of one matrix
        (0, 1 << 40, False),
        (1 << 12, 1 << 16, True),  # the defaults: small tensors all together on the host, in float64
        (1 << 12, 1 << 16, False),
        (1 << 40, 1 << 40, True),  # every tensor small
    ],
)
def test_results_do_not_depend_on_the_path_or_the_order(model, monkeypatch, tiny, batch, host):
    import mindscope.histogram

    monkeypatch.setattr(mindscope.histogram, "TINY", tiny)
    monkeypatch.setattr(mindscope.histogram, "BATCH", batch)
    monkeypatch.setattr(mindscope.histogram, "_host", lambda device: host and device.type == "cpu")
    state = model.state_dict()
    state["features.0.weight"][0, 0, 0, :2] = torch.tensor([float("nan"), float("-inf")])
    tensors = {**state, **_awkward_tensors()}
    shuffled = dict(reversed(list(tensors.items())))
    for options in ({"bins": 12}, {"bins": 7, "range": (-0.1, 0.2)}, {"edges": torch.tensor([-1.0, -0.01, 0.0, 0.3])}):
        hists, reordered = weight_histograms(tensors, **options), weight_histograms(shuffled, **options)
        for name, t in tensors.items():
            reference = {"edges": options["edges"].numpy()} if "edges" in options else options
            _assert_like_numpy(hists[name], t, **reference)
            assert torch.equal(hists[name].counts, reordered[name].counts)
    for name, h in weight_histograms(model, bins=12).items():  # the parameters themselves, which require grad
        _assert_like_numpy(h, state[name], bins=12)
        assert not (h.counts.requires_grad or h.edges.requires_grad)


def test_shared_edges_are_shared_and_span_both_states(model):
    after = AllConvNet(width=4)
    with torch.no_grad():
        for p in after.parameters():
            p.mul_(3.0).add_(0.1)
    edges = shared_edges(model, after, bins=10)
    values = torch.cat([p.detach().reshape(-1) for m in (model, after) for p in m.parameters()])
    assert edges[0] == values.min().double() and edges[-1] == values.max().double()
    first = weight_histograms(model, edges=edges)
    second = weight_histograms(after, edges=edges)
    for name in first:
        assert torch.equal(first[name].edges, second[name].edges)
        x = after.state_dict()[name].double().numpy().ravel()
        np.testing.assert_array_equal(second[name].counts.numpy(), np.histogram(x, bins=edges.numpy())[0])
    b, a = paired_histograms(model, after, bins=8)
    for name in b:
        assert torch.equal(b[name].edges, a[name].edges)
        assert int(b[name].counts.sum()) == int(a[name].counts.sum()) == b[name].stats.count


def test_layers_accept_numbers_names_and_prefixes(model):
    assert list(weight_histograms(model, layers="1")) == ["features.0.weight", "features.0.bias"]
    assert list(weight_histograms(model, layers=[9, "features.2.weight"])) == [
        "features.18.weight",
        "features.18.bias",
        "features.2.weight",
    ]
    state = model.state_dict()
    assert list(weight_histograms(state, layers="features.4")) == ["features.4.weight", "features.4.bias"]
    with pytest.raises(ValueError, match="needs the model"):
        weight_histograms(state, layers="3")
    with pytest.raises(ValueError, match="no tensor named or under 'features.99'"):
        weight_histograms(state, layers="features.99")
    with pytest.raises(ValueError, match="no layer 99"):
        weight_histograms(model, layers="99")
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        weight_histograms(model, bins=0)
    with pytest.raises(TypeError, match="nn.Module or a state_dict"):
        weight_histograms([torch.zeros(2)])


def test_change_table_on_a_hand_made_pair():
    before = {"a": torch.tensor([1.0, -1.0, 1.0, -1.0]), "b": torch.zeros(2), "c": torch.tensor([3.0, 4.0])}
    after = {"a": torch.tensor([2.0, 0.0, 2.0, 0.0]), "b": torch.tensor([3.0, 4.0]), "c": torch.zeros(2)}
    changes = {c.tensor: c for c in weight_changes(before, after)}
    a = changes["a"]
    assert a.mean == (0.0, 1.0) and a.std == (1.0, 1.0)
    assert a.min == (-1.0, 0.0) and a.max == (1.0, 2.0)
    assert a.l2 == pytest.approx((2.0, math.sqrt(8.0)))
    assert a.l2_change == pytest.approx(math.sqrt(2.0) - 1.0)
    assert changes["b"].l2 == (0.0, 5.0) and changes["b"].l2_change == math.inf
    assert changes["c"].l2_change == pytest.approx(-1.0)
    table = format_change_table(changes.values()).splitlines()
    assert table[0].split()[:2] == ["tensor", "mean"]
    assert table[1].startswith("a ") and "+0 -> +1" in table[1] and "+41.4%" in table[1]
    assert "+5 (from 0)" in table[2] and "-100.0%" in table[3]
    # the same statistics from histograms (which cannot know how far the weights moved)
    from_histograms = weight_changes(weight_histograms(before), weight_histograms(after))
    assert [replace(c, moved=None) for c in changes.values()] == from_histograms
    with pytest.raises(ValueError, match="different tensors"):
        weight_changes(before, {"a": after["a"]})


def test_quantiles_from_a_histogram_match_numpy_within_a_bin():
    rng = np.random.default_rng(0)
    x = rng.normal(size=4000)
    counts, edges = np.histogram(x, bins=64)
    qs = [0.0, 0.0668, 0.1587, 0.5, 0.8413, 1.0]
    got = histogram_quantiles(counts, edges, qs)
    np.testing.assert_allclose(got, np.quantile(x, qs), atol=edges[1] - edges[0])
    assert got[0] == x.min() and got[-1] == x.max()
    # uniform mass in [0, 4): exact
    np.testing.assert_allclose(histogram_quantiles([1, 1, 1, 1], [0, 1, 2, 3, 4], [0.25, 0.5, 0.875]), [1.0, 2.0, 3.5])
    assert histogram_quantiles([0, 2, 0], [0, 1, 2, 3], [0.0, 1.0]).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match=r"quantiles must lie in \[0, 1\]"):
        histogram_quantiles([1], [0, 1], [50])


# --- figures ---------------------------------------------------------------------------


def _history(model: nn.Module, steps=(0, 5, 10)) -> list[dict]:
    rows = []
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * step)
        rows += histogram_rows(weight_histograms(model, bins=8), step=step, epoch=step / 10)
    return rows


def test_before_after_figures_share_x_and_label_density(model):
    from mindscope.render.weights import weight_histogram_figures

    after = AllConvNet(width=4)
    with torch.no_grad():
        for p in after.parameters():
            p.mul_(4.0)
    before_h, after_h = paired_histograms(model, after, bins=16)
    figs = weight_histogram_figures(before_h, after_h)
    assert len(figs) == 3  # 9 weight tensors, 3 per figure
    left, right = figs[0].axes
    assert left.get_xlim() == right.get_xlim()
    assert "density" in left.get_ylabel()
    for patch in left.patches:  # each curve is a density: area 1
        values, edges, _ = patch.get_data()
        assert np.sum(values * np.diff(edges)) == pytest.approx(1.0)
    assert len(left.patches) == 3
    legend = [t.get_text() for t in left.get_legend().get_texts()]
    s = before_h["features.0.weight"].stats
    assert legend[0] == f"features.0.weight: mean {s.mean:.3g}, std {s.std:.3g}"
    with pytest.raises(ValueError, match="no histograms for"):
        weight_histogram_figures(before_h, after_h, tensors=["features.99.weight"])


def test_ridge_and_percentile_figures_draw_from_rows_and_from_histograms(model):
    from mindscope.render.weights import weight_percentile_figure, weight_ridge_figure

    rows = _history(model)
    fig = weight_ridge_figure(rows, tensors=["features.0.weight", "features.2.bias"])
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["features.0.weight", "features.2.bias"]
    fig = weight_percentile_figure(rows, tensors=["features.0.weight"], time="epoch")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    median = ax.get_lines()[0].get_ydata()
    assert median.shape == (3,) and ax.get_xlabel() == "epoch"
    by_step = {0: weight_histograms(model, bins=8), 1: weight_histograms(model, bins=8)}
    assert weight_ridge_figure(by_step).axes
    with pytest.raises(ValueError, match="time must be 'step' or 'epoch'"):
        weight_ridge_figure(rows, time="wall")


# --- TensorBoard -----------------------------------------------------------------------


class FakeRun:
    """Just what export_tensorboard reads from a LoadedRun."""

    def __init__(self, rows: list[dict], metrics: list[dict], states: list[dict] | None = None) -> None:
        self.rows, self.metrics, self.states = rows, metrics, states or []
        self.epochs = list(range(len(self.states)))

    def histograms(self) -> list[dict]:
        return self.rows

    def state_dict_at(self, epoch: int) -> dict:
        return self.states[epoch]


def _accumulator(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_tensorboard_round_trip(model, tmp_path):
    from mindscope.tensorboard import export_tensorboard

    numel = {name: p.numel() for name, p in model.named_parameters()}
    rows = _history(model)
    metrics = [
        {"step": s, "epoch": s / 10, "split": split, "name": "accuracy", "scope": "step", "value": v}
        for s, v in ((0, 0.1), (5, 0.3), (10, 0.5))
        for split in ("train", "test")
    ]
    metrics.append({"step": 10, "epoch": 1.0, "split": "test", "name": "loss", "scope": "epoch", "value": 1.5})
    export_tensorboard(FakeRun(rows, metrics), tmp_path / "tb")
    acc = _accumulator(tmp_path / "tb")
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"train/accuracy", "test/accuracy", "test/loss_per_epoch"}
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("test/accuracy")] == [(0, 0.1), (5, 0.3), (10, 0.5)]
    assert set(tags["histograms"]) == {"features.0/weight", "features.0/bias"} | {
        f"{n.rpartition('.')[0]}/{n.rpartition('.')[2]}" for n in numel
    }
    for name, n in numel.items():
        events = acc.Histograms(f"{name.rpartition('.')[0]}/{name.rpartition('.')[2]}")
        assert [e.step for e in events] == [0, 5, 10]
        for event, row in zip(events, [r for r in rows if r["tensor"] == name]):
            h = event.histogram_value
            assert sum(h.bucket) == h.num == n
            np.testing.assert_allclose(h.bucket_limit, row["edges"])
    with pytest.raises(FileExistsError, match="already holds TensorBoard event files"):
        export_tensorboard(FakeRun(rows, metrics), tmp_path / "tb")


def test_tensorboard_falls_back_on_snapshots_when_nothing_was_recorded(model, tmp_path):
    from mindscope.tensorboard import export_tensorboard

    states = [
        {k: v.clone() for k, v in model.state_dict().items()},
        {k: v * 2 + 1 for k, v in model.state_dict().items()},
    ]
    export_tensorboard(FakeRun([], [], states), tmp_path)
    events = _accumulator(tmp_path).Histograms("features.2/weight")
    assert [e.step for e in events] == [0, 1]
    expected = np.histogram(states[1]["features.2.weight"].double().numpy(), bins=64)[0]
    np.testing.assert_array_equal(events[1].histogram_value.bucket, [0, *expected])


def test_tensorboard_recorder_speaks_the_run_recorder_protocol(model, tmp_path):
    from mindscope.tensorboard import TensorBoardRecorder

    with TensorBoardRecorder(tmp_path) as recorder:
        recorder.log(3, 0.5, "train", {"loss": 2.0, "accuracy": None}, scope="step")
        recorder.log_histograms(3, 0.5, weight_histograms(model, layers="1", bins=5))
    acc = _accumulator(tmp_path)
    assert acc.Tags()["scalars"] == ["train/loss"]
    (event,) = acc.Histograms("features.0/weight")
    assert event.step == 3 and sum(event.histogram_value.bucket) == model.features[0].weight.numel()


def test_missing_tensorboard_says_how_to_install(monkeypatch, tmp_path):
    from mindscope.tensorboard import TensorBoardRecorder

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'mindscope\[tensorboard\]'"):
        TensorBoardRecorder(tmp_path)


# --- CLI -------------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path, model):
    """A two-checkpoint run written through the run writer, without training."""
    from mindscope.run import Run

    config = {"model": {"width": 4, "num_classes": 10, "in_channels": 3}}
    run = Run.create(tmp_path / "run", config, model, {})
    try:
        for step in (0, 4, 8):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.5)
            run.log_histograms(step, step / 8, weight_histograms(model, bins=8))
            run.log_metrics(step, step / 8, "train", {"loss": 2.0 - step / 8}, scope="step")
        run.checkpoint(1, 8, model, {})
    finally:
        run.close()
    return tmp_path / "run"


def test_cli_weights_writes_figures_and_the_change_table(run_dir, tmp_path, capsys):
    from mindscope.cli import main

    assert main(["weights", str(run_dir), "--layers", "1,9", "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert "features.0.weight" in out and "features.18.bias" in out and "features.2.weight" not in out
    assert "+237.5%" in out  # three steps of x1.5: 1.5^3 - 1
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "weights_before_after_1.png",
        "weights_percentiles.png",
        "weights_ridge.png",
    ]


def test_cli_rejects_bad_input(run_dir, tmp_path, capsys):
    from mindscope.cli import main

    assert main(["weights", str(run_dir), "--layers", "99", "--out", str(tmp_path / "x")]) == 2
    assert "mindscope: error: no layer 99" in capsys.readouterr().err
    assert main(["weights", str(tmp_path / "missing")]) == 2
    assert "mindscope: error: no run at" in capsys.readouterr().err


def test_cli_export_tensorboard(run_dir, tmp_path, capsys):
    from mindscope.cli import main

    assert main(["export-tensorboard", str(run_dir), str(tmp_path / "tb")]) == 0
    acc = _accumulator(tmp_path / "tb")
    assert acc.Tags()["scalars"] == ["train/loss"]
    assert [e.step for e in acc.Histograms("features.18/weight")] == [0, 4, 8]
    assert main(["export-tensorboard", str(run_dir), str(tmp_path / "tb")]) == 2
    assert "already holds TensorBoard event files" in capsys.readouterr().err


def test_the_change_table_says_how_far_weights_moved_and_never_inf_for_zero_biases():
    """A bias that starts at 0 gets absolute figures; 'moved' is |W_T - W_0| / |W_0| against numpy."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 3)).astype(np.float32)
    w1 = w0 + rng.normal(scale=0.1, size=w0.shape).astype(np.float32)
    w1[0] *= -1  # same norm row, far away: the norm barely changes, the weights moved a lot
    before = {"w": torch.from_numpy(w0), "b": torch.zeros(3)}
    after = {"w": torch.from_numpy(w1), "b": torch.tensor([0.5, -0.5, 0.0])}
    changes = {c.tensor: c for c in weight_changes(before, after)}
    w = changes["w"]
    expected = np.linalg.norm(w1.astype(np.float64) - w0) / np.linalg.norm(w0.astype(np.float64))
    assert w.relative_move == pytest.approx(expected, rel=1e-6)
    assert w.relative_move > 5 * abs(w.l2_change)
    b = changes["b"]
    assert b.relative_move is None and b.moved == pytest.approx(math.sqrt(0.5))
    table = format_change_table(changes.values())
    assert "inf" not in table
    assert "(from 0)" in table.splitlines()[2] and f"{expected:.1%}" in table.splitlines()[1]
    assert table.splitlines()[0].split()[-2:] == ["change", "moved"]
    # from statistics alone the distance is unknown, and the table says so
    stats_only = weight_changes(weight_histograms(before), weight_histograms(after))
    assert all(c.moved is None for c in stats_only)
