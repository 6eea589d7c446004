"""A scan equals the looks it runs, image by image; its sums and statistics equal one naive pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mindscope.activations import activation_statistics
from mindscope.attribution import integrated_gradients
from mindscope.baselines import black
from mindscope.cli import main
from mindscope.render.attribution import attribution_panels
from mindscope.run import load_run
from mindscope.scan import Moments, ScanOptions, ScanSource, open_scan, scan
from mindscope.scan.files import leftovers, remove_leftovers, write_bytes
from mindscope.scan.statistics import join

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def run192(tmp_path_factory) -> str:
    """A run of AllConvNet(width=8) whose test split holds 192 built-in images."""
    out = tmp_path_factory.mktemp("runs") / "r192"
    args = ["train", "--epochs", "1", "--width", "8", "--train-limit", "256", "--test-limit", "192",
            "--batch-size", "32", "--histogram-every", "0", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return str(out)


def test_joined_layer_statistics_equal_one_pass_over_every_example():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ELU(), nn.Conv2d(5, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)).double()
    with torch.no_grad():
        model[2].bias[0] = -50.0  # channel 0 after the ReLU is dead
    x = torch.randn(40, 3, 9, 9, dtype=torch.float64)
    layers = ["1", "3", "4"]
    whole = activation_statistics(model, x, layers, batch_size=40)
    parts = [
        activation_statistics(model, x[a:b], layers, batch_size=6) for a, b in ((0, 5), (5, 18), (18, 19), (19, 40))
    ]
    for name in layers:
        joined = join([Moments.of(p[name]) for p in parts]).statistics(name)
        reference = whole[name]
        assert joined.dead_channels.tolist() == reference.dead_channels.tolist()
        assert (joined.examples, joined.positions, joined.saturation) == (40, reference.positions, reference.saturation)
        for field in ("mean", "std", "active", "saturated", "maximum"):
            np.testing.assert_allclose(getattr(joined, field), getattr(reference, field), rtol=1e-12, atol=1e-14)
    assert whole["3"].dead_channels.tolist() == [0]  # the test holds a dead channel to find


@pytest.mark.slow
def test_a_scan_equals_integrated_gradients_image_by_image(run192, tmp_path, one_thread):
    out = tmp_path / "scan"
    progress = scan(ScanSource(f"run:{run192}"), out, options=ScanOptions(shard_size=64, layers=()))
    assert (progress.computed, progress.skipped) == (3, 0)
    found = open_scan(out)
    table = found.table()
    assert table["index"].tolist() == list(range(192))  # every image exactly once
    run = load_run(run192)
    norm = run.data.normalization
    maps = found.maps(range(192))
    for i in range(192):
        x = norm.apply(run.data.test.pixels([i]))
        ref = integrated_gradients(run.model, x, baseline=lambda z: black(z, norm), tolerance=0.01)
        row = table.iloc[i]
        assert row["steps"] == int(ref.steps[0]), i
        assert (row["prediction"], row["target"], row["label"]) == (
            int(ref.predictions[0]),
            int(ref.targets[0]),
            int(run.data.test.labels[i]),
        )
        assert row["converged"] == bool(ref.converged[0]) and row["ill_conditioned"] == bool(ref.ill_conditioned[0])
        # float32 probabilities near 0.1 round at about 1e-8: batches of 32 and of 1 differ by that much
        np.testing.assert_allclose(row["delta"], float(ref.output[0] - ref.baseline_output[0]), atol=1e-7)
        np.testing.assert_allclose(row["completeness_error"], float(ref.completeness_error[0]), atol=1e-7)
        np.testing.assert_allclose(row["map_error"], float(ref.map_error[0]), rtol=1e-3, atol=1e-6)
        scale = float(ref.attributions.abs().max())
        torch.testing.assert_close(maps[i], ref.attributions[0], rtol=0, atol=1e-5 * scale)
    summary = found.summary
    ill = table["ill_conditioned"].astype(bool)
    entry = summary["methods"]["integrated"]
    assert entry["converged"] == int((table["converged"] & ~ill).sum()) and entry["well_conditioned"] == int(
        (~ill).sum()
    )
    kept = table["relative_completeness_error"][~ill].to_numpy(dtype=float)  # the figures leave ill-conditioned out
    assert entry["completeness_error_median"] == pytest.approx(np.median(kept))
    assert entry["completeness_error_max"] == pytest.approx(kept.max())


def _scan_tiny(run: str, out, **options) -> object:
    defaults = {"methods": ("gradient", "integrated"), "tolerance": None, "steps": 4, "shard_size": 24}
    return scan(ScanSource(f"run:{run}"), out, options=ScanOptions(**{**defaults, **options}))


def test_class_maps_statistics_and_summary_equal_a_naive_reading(tiny_run, tmp_path, one_thread):
    out = tmp_path / "scan"
    progress = _scan_tiny(tiny_run, out)
    assert (progress.computed, len(progress.plan.shards)) == (3, 3)  # 64 images in shards of 24, 24, 16
    found = open_scan(out)
    table = found.table()
    run = load_run(tiny_run)
    for method in ("gradient", "integrated"):
        rows = table[table["method"] == method]
        assert rows["index"].tolist() == list(range(64))
        maps = found.maps(np.arange(64), method).double().numpy()
        targets = rows["target"].to_numpy()
        classes = found.class_maps(method)
        assert classes.counts.tolist() == np.bincount(targets, minlength=10).tolist()
        for k in range(10):
            chosen = maps[targets == k]
            mean = chosen.mean(0) if len(chosen) else np.zeros(maps.shape[1:])
            np.testing.assert_allclose(classes.mean[k].numpy(), mean, rtol=1e-5, atol=1e-12)
            np.testing.assert_allclose(classes.mean_abs[k].numpy(), np.abs(chosen).mean(0) if len(chosen) else mean,
                                       rtol=1e-5, atol=1e-12)  # fmt: skip
    x = run.data.inputs(run.data.test)
    whole = activation_statistics(run.model, x, progress.plan.layers, batch_size=64)
    for name, stats in found.layer_statistics().items():
        for field in ("mean", "std", "active", "saturated", "maximum"):
            np.testing.assert_allclose(getattr(stats, field), getattr(whole[name], field), rtol=1e-6, atol=1e-9)
    first = table[table["method"] == "gradient"]
    wrong = first[first["prediction"] != first["label"]].sort_values(["probability", "index"], ascending=[False, True])
    summary = found.summary
    assert [w["index"] for w in summary["most_confident_wrong"]] == wrong["index"].tolist()[:20]
    assert summary["accuracy"] == pytest.approx((first["prediction"] == first["label"]).mean())
    assert "converged" not in summary["methods"]["integrated"]  # a fixed rule promises no tolerance
    integrated = table[table["method"] == "integrated"]
    ill = integrated["ill_conditioned"].astype(bool)
    assert ill.any() and summary["methods"]["integrated"]["ill_conditioned"] == int(ill.sum())
    well = integrated[~ill]  # the worst list ranks only images with something to explain
    badness = np.fmax(well["relative_completeness_error"], well["map_error"]).fillna(-np.inf)
    ranked = well.assign(badness=badness).sort_values(["badness", "index"], ascending=[False, True])
    assert [w["index"] for w in summary["methods"]["integrated"]["worst"]] == ranked["index"].tolist()[:20]
    assert summary["dead_channels"] == {n: s.dead_channels.tolist() for n, s in whole.items()}
    chosen = found.attribution([40, 3], "integrated")  # the worst images of a report, say, with their maps
    rows = table[table["method"] == "integrated"].set_index("index").loc[[40, 3]]
    assert chosen.steps.tolist() == rows["steps"].tolist() == [4, 4]
    assert chosen.predictions.tolist() == rows["prediction"].tolist()
    assert chosen.converged is None and chosen.relative_completeness_error.tolist() == pytest.approx(
        rows["relative_completeness_error"].tolist()
    )
    in_order = found.maps(range(64), "integrated")
    torch.testing.assert_close(chosen.attributions, in_order[[40, 3]], rtol=0, atol=0)  # across shards, as asked
    figure = attribution_panels(run.data.test.pixels([40, 3]), chosen, found.plan.classes)
    assert "steps 4" in figure.axes[1].get_title()


def test_float16_maps_keep_three_digits_of_each_map_at_half_the_size(tiny_run, tmp_path, one_thread):
    full = _scan_tiny(tiny_run, tmp_path / "full", methods=("gradient",), layers=())
    half = _scan_tiny(tiny_run, tmp_path / "half", methods=("gradient",), layers=(), float16=True)
    a, b = open_scan(tmp_path / "full"), open_scan(tmp_path / "half")
    exact, rounded = a.maps(range(64)), b.maps(range(64))
    scale = exact.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
    assert ((rounded - exact).abs() <= 2**-11 * scale).all()  # float16's half unit in the last place, relative
    assert torch.equal(a.class_maps().mean, b.class_maps().mean)  # sums are taken before rounding
    size = lambda p: p.plan.shard_files(0)[0].stat().st_size  # noqa: E731
    saved = size(full) - size(half)  # 2 of 4 bytes per value, less a float32 scale per map and its header
    assert 24 * (3 * 32 * 32 * 2 - 4) - 256 <= saved <= 24 * 3 * 32 * 32 * 2


def test_a_rerun_skips_finished_shards_and_redoes_a_missing_one(tiny_run, tmp_path, one_thread):
    out = tmp_path / "scan"
    first = _scan_tiny(tiny_run, out, methods=("gradient",))
    before = open_scan(out).table().drop(columns="seconds")
    first.plan.shard_files(1)[1].unlink()  # the table of shard 1: the shard counts as not done
    again = _scan_tiny(tiny_run, out, methods=("gradient",))
    assert (again.computed, again.skipped) == (1, 2)
    after = open_scan(out).table().drop(columns="seconds")
    assert after.equals(before)


def test_temp_files_of_dead_writers_go_and_those_of_live_writers_stay(tmp_path):
    import fcntl
    import os

    write_bytes(tmp_path / "a.bin", b"hello")
    assert (tmp_path / "a.bin").read_bytes() == b"hello" and leftovers([tmp_path]) == []
    dead = tmp_path / ".b.bin.x1.tmp"
    dead.write_bytes(b"half")
    live = tmp_path / ".c.bin.x2.tmp"
    live.write_bytes(b"half")
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer in the middle of its file
    try:
        assert remove_leftovers([tmp_path], ["c.bin"]) == []  # not asked for b; c is held
        assert remove_leftovers([tmp_path]) == [dead]
    finally:
        os.close(fd)
    assert remove_leftovers([tmp_path]) == [live]
