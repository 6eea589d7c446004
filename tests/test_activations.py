"""Activations: captures equal a hand-written forward pass; statistics equal numpy's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mindscope.activations import (
    LayerStatistics,
    Saturation,
    activation_statistics,
    capture_activations,
    top_activating,
)
from mindscope.model import AllConvNet

# --- three architectures, each with a hand-written reference forward ----------------------


def allconv(width: int = 4, *, gain: float = 1.0) -> AllConvNet:
    torch.manual_seed(0)
    model = AllConvNet(width=width).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):  # non-zero biases, so ELU sees both signs
                m.weight.mul_(gain)
                m.bias.normal_(0.0, 0.3 * gain)
    return model.eval()


@torch.no_grad()
def allconv_reference(model: AllConvNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out, a = {}, x
    for i, module in enumerate(model.features):
        if isinstance(module, nn.Conv2d):
            a = F.conv2d(a, module.weight, module.bias, padding=module.padding)
        elif isinstance(module, nn.ELU):
            a = torch.where(a > 0, a, torch.exp(a) - 1)
        elif isinstance(module, nn.AvgPool2d):
            a = F.avg_pool2d(a, 2)
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            a = a.mean(dim=(2, 3), keepdim=True)
        else:
            a = a.flatten(1)
        out[f"features.{i}"] = a
    return out


class Nested(nn.Module):
    """A stem, a block inside a ModuleDict and a head: names three deep, BatchNorm inside."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh())
        self.body = nn.ModuleDict({"block": nn.Sequential(nn.Conv2d(4, 5, 3, stride=2), nn.BatchNorm2d(5))})
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        a = self.body["block"](self.stem(x))
        return self.head(F.relu(a).mean(dim=(2, 3)))


def nested() -> Nested:
    torch.manual_seed(1)
    model = Nested().double()
    with torch.no_grad():
        for bn in (model.stem[1], model.body["block"][1]):
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_(1.0, 0.2)
            bn.bias.normal_(0.0, 0.2)
    return model.eval()


def batchnorm(a, bn):
    shape = (1, -1, 1, 1)
    return (a - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(
        shape
    ) + bn.bias.view(shape)


@torch.no_grad()
def nested_reference(model: Nested, x):
    conv0, bn0 = model.stem[0], model.stem[1]
    conv1, bn1 = model.body["block"]
    s0 = F.conv2d(x, conv0.weight, conv0.bias, padding=1)
    s1 = batchnorm(s0, bn0)
    s2 = torch.tanh(s1)
    b0 = F.conv2d(s2, conv1.weight, conv1.bias, stride=2)
    b1 = batchnorm(b0, bn1)
    head = F.relu(b1).mean(dim=(2, 3)) @ model.head.weight.T + model.head.bias
    return {
        "stem.0": s0,
        "stem.1": s1,
        "stem.2": s2,
        "body.block.0": b0,
        "body.block.1": b1,
        "body.block": b1,
        "stem": s2,
        "head": head,
    }


class Residual(nn.Module):
    """A ResNet basic block: in-place ReLUs and an in-place skip addition."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        out += x  # in place on conv2's output
        return self.relu2(out)  # in place again


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = Residual(4)

    def forward(self, x):
        return self.block(self.stem(x))


def residual() -> ResidualNet:
    torch.manual_seed(2)
    model = ResidualNet().double()
    with torch.no_grad():
        model.block.bn1.running_mean.normal_(0.0, 0.3)
    return model.eval()


@torch.no_grad()
def residual_reference(model: ResidualNet, x):
    b = model.block
    s = F.conv2d(x, model.stem.weight, model.stem.bias)
    c1 = F.conv2d(s, b.conv1.weight, padding=1)
    n1 = batchnorm(c1, b.bn1)
    r1 = torch.clamp(n1, min=0)
    c2 = F.conv2d(r1, b.conv2.weight, b.conv2.bias, padding=1)
    r2 = torch.clamp(c2 + s, min=0)
    return {
        "stem": s,
        "block.conv1": c1,
        "block.bn1": n1,
        "block.relu1": r1,
        "block.conv2": c2,
        "block.relu2": r2,
        "block": r2,
    }


ARCHITECTURES = {
    "allconv": (allconv, allconv_reference, (3, 3, 16, 16)),
    "nested-batchnorm": (nested, nested_reference, (3, 3, 9, 9)),
    "residual-inplace": (residual, residual_reference, (3, 3, 6, 6)),
}


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --- capture_activations -----------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_capture_equals_manual_forward_for_every_module(arch):
    build, reference, shape = ARCHITECTURES[arch]
    model = build()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = reference(model, x)
    got = capture_activations(model, x, list(expected))
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, msg=f"layer {name}")
        assert got[name].grad_fn is None and not got[name].requires_grad
    assert no_hooks(model)


def test_layer_numbers_mean_the_activation_after_the_layer():
    model = allconv()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    expected = allconv_reference(model, x)
    got = capture_activations(model, x, "3,6,9")
    assert list(got) == ["features.5", "features.12", "features.18"]
    for name in got:
        torch.testing.assert_close(got[name], expected[name])
    assert set(capture_activations(model, x, 3)) == {"features.5"}
    assert list(capture_activations(model, x, ["features.4", 1])) == ["features.4", "features.1"]


def test_inplace_relu_does_not_corrupt_earlier_captures():
    model = residual()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    got = capture_activations(model, x, ["block.conv2", "block.bn1"])
    ref = residual_reference(model, x)
    # Without a clone, conv2's record would hold relu(conv2 + x) and bn1's would be clamped.
    torch.testing.assert_close(got["block.conv2"], ref["block.conv2"])
    torch.testing.assert_close(got["block.bn1"], ref["block.bn1"])
    assert (got["block.bn1"] < 0).any()


def test_a_module_called_twice_is_recorded_at_its_first_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3).double()

        def forward(self, x):
            return self.lin(self.lin(x))

    model = Twice()
    x = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        first = x @ model.lin.weight.T + model.lin.bias
    torch.testing.assert_close(capture_activations(model, x, ["lin"])["lin"], first)


def test_mode_is_restored_and_batchnorm_statistics_untouched():
    model = nested().train()
    model.stem.eval()  # a mixed state must come back exactly
    running = model.stem[1].running_mean.clone()
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    got = capture_activations(model, x, ["stem.1"])
    torch.testing.assert_close(got["stem.1"], nested_reference(model, x)["stem.1"])  # eval-mode BN
    torch.testing.assert_close(model.stem[1].running_mean, running, rtol=0, atol=0)
    assert model.training and not model.stem.training and model.body.training


def test_hooks_removed_when_forward_raises():
    model = allconv()
    model.train()
    with pytest.raises(ValueError, match="AllConvNet expects input"):
        capture_activations(model, torch.zeros(1, 5, 8, 8, dtype=torch.float64), [3])
    assert no_hooks(model)
    assert model.training

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            self.a(x)
            raise RuntimeError("boom")

    broken = Broken()
    with pytest.raises(RuntimeError, match="boom"):
        capture_activations(broken, torch.zeros(1, 2), ["a", "b"])
    assert no_hooks(broken)


def test_hooks_removed_after_success_and_early_stop():
    model = allconv()
    capture_activations(model, torch.zeros(1, 3, 8, 8, dtype=torch.float64), [1])
    assert no_hooks(model)


def test_capture_errors_name_the_problem():
    model = allconv()
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"no layer 'features.99'; layers are: features, features.0"):
        capture_activations(model, x, ["features.99"])
    with pytest.raises(ValueError, match="no layer 12; layer numbers run from 1 to 9"):
        capture_activations(model, x, "3,12")
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor"):
        capture_activations(model, np.zeros((1, 3, 8, 8)), [3])

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()
            self.unused = nn.Identity()

        def forward(self, x):
            return self.pair(x)[0]

    with pytest.raises(TypeError, match="layer 'pair' returned tuple, not a Tensor"):
        capture_activations(Wrap(), torch.zeros(1, 2), ["pair"])
    with pytest.raises(ValueError, match="layer 'unused' did not run in the forward pass"):
        capture_activations(Wrap(), torch.zeros(1, 2), ["unused"])
    assert no_hooks(model)


# --- activation_statistics -----------------------------------------------------------------


def numpy_statistics(a: np.ndarray, saturated) -> dict[str, np.ndarray]:
    flat = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)  # (C, N * positions)
    return {
        "mean": flat.mean(1),
        "std": flat.std(1),
        "active": (flat > 0).mean(1),
        "saturated": saturated(flat).mean(1),
        "maximum": flat.max(1),
    }


@pytest.mark.parametrize("as_loader", [False, True])
def test_statistics_match_numpy(as_loader):
    model = allconv(gain=8.0)  # large enough that ELU reaches its -1 floor
    x = torch.randn(11, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = allconv_reference(model, x)
    data = [(x[i : i + 4], torch.zeros(len(x[i : i + 4]))) for i in range(0, 11, 4)] if as_loader else x
    stats = activation_statistics(model, data, [3, 6, "features.18"], batch_size=3)
    assert list(stats) == ["features.5", "features.12", "features.18"]
    for name, s in stats.items():
        # layer 9 (features.18) is a convolution with no ELU after it: it has no floor to saturate at
        elu = name != "features.18"
        rule = (lambda f: np.abs(f + 1.0) <= 0.05) if elu else (lambda f: np.full(f.shape, np.nan))
        expected = numpy_statistics(ref[name].numpy(), rule)
        assert isinstance(s, LayerStatistics)
        assert s.examples == 11 and s.positions == ref[name][0, 0].numel()
        assert s.saturation == ("within 0.05 of -1" if elu else None)
        for field, value in expected.items():
            np.testing.assert_allclose(getattr(s, field), value, rtol=1e-10, atol=1e-12, err_msg=f"{name}.{field}")
        flat = ref[name].numpy()
        summary = s.summary
        assert summary.channels == flat.shape[1]
        np.testing.assert_allclose(summary.mean, flat.mean(), rtol=1e-10)
        np.testing.assert_allclose(summary.std, flat.std(), rtol=1e-10)
        np.testing.assert_allclose(summary.active, (flat > 0).mean(), rtol=1e-12)
        saturated = (np.abs(flat + 1) <= 0.05).mean() if elu else np.nan
        np.testing.assert_allclose(summary.saturated, saturated, rtol=1e-12)
    assert stats["features.5"].saturated.sum() > 0  # the saturation branch was exercised


def test_saturation_rule_is_a_parameter():
    model = allconv()
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    ref = allconv_reference(model, x)["features.5"].numpy()
    rule = Saturation(level=-0.5, tolerance=0.2)
    s = activation_statistics(model, x, [3], saturation=rule)["features.5"]
    np.testing.assert_allclose(s.saturated, numpy_statistics(ref, lambda f: np.abs(f + 0.5) <= 0.2)["saturated"])
    s = activation_statistics(model, x, [3], saturation=lambda a: a > 0.1)["features.5"]
    np.testing.assert_allclose(s.saturated, numpy_statistics(ref, lambda f: f > 0.1)["saturated"])
    with pytest.raises(TypeError, match="saturation must be a callable"):
        activation_statistics(model, x, [3], saturation=0.05)
    with pytest.raises(ValueError, match="saturation must return a mask shaped like its input"):
        activation_statistics(model, x, [3], saturation=lambda a: a.mean() < 0)


def test_statistics_in_float32_match_float64_numpy():
    model = allconv(gain=8.0).float()
    x = torch.randn(9, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    ref = allconv_reference(model.double(), x.double())["features.12"].numpy()
    s = activation_statistics(model.float(), x, [6], batch_size=4)["features.12"]
    expected = numpy_statistics(ref, lambda f: np.abs(f + 1.0) <= 0.05)
    np.testing.assert_allclose(s.mean, expected["mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.std, expected["std"], rtol=1e-4)
    np.testing.assert_allclose(s.maximum, expected["maximum"], rtol=1e-4)


def test_dead_channel_is_found_dead():
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 6, 3)
    with torch.no_grad():
        conv.bias.fill_(5.0)  # every other channel is active almost everywhere
        conv.weight[2].zero_()
        conv.bias[2] = -1.0  # channel 2: ELU(-1) < 0 on every input
        conv.weight[4].zero_()
        conv.bias[4] = 0.0  # channel 4: exactly 0, never > 0: dead too
    model = nn.Sequential(conv, nn.ELU())
    x = torch.randn(20, 3, 7, 7)
    stats = activation_statistics(model, x, [1], batch_size=6)["1"]
    np.testing.assert_array_equal(stats.dead_channels, [2, 4])
    assert stats.summary.dead == pytest.approx(2 / 6)
    assert stats.active[2] == 0 and stats.active[0] > 0.9


def test_statistics_reject_bad_input():
    model = allconv()
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        activation_statistics(model, torch.zeros(2, 3, 8, 8, dtype=torch.float64), [3], batch_size=0)
    with pytest.raises(ValueError, match="data held no examples"):
        activation_statistics(model, [], [3])
    with pytest.raises(TypeError, match="data must be a Tensor"):
        activation_statistics(model, 3.0, [3])


# --- top_activating ------------------------------------------------------------------------


def test_top_activating_matches_naive_ranking():
    model = allconv()
    x = torch.randn(13, 3, 16, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x[9] = x[2]  # a tie: the earlier example must come first
    maps = allconv_reference(model, x)["features.12"][:, 1].numpy()  # (N, 4, 4)
    scores = maps.reshape(13, -1).mean(1)
    order = sorted(range(13), key=lambda i: (-scores[i], i))[:5]
    top = top_activating(model, x, 6, 1, k=5, batch_size=4)
    assert top.layer == "features.12" and top.channel == 1
    np.testing.assert_array_equal(top.indices, order)
    np.testing.assert_allclose(top.scores, scores[order], rtol=1e-12)
    np.testing.assert_allclose(top.maps, maps[order], rtol=1e-6)  # maps are float32
    if 2 in order:
        assert 9 not in order or order.index(2) < order.index(9)
    all_top = top_activating(model, x, 6, 1, k=50)
    assert len(all_top.indices) == 13


def test_top_activating_errors():
    model = allconv()
    x = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="channel 4 is out of range .* channels run from 0 to 3"):
        top_activating(model, x, 3, 4)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_activating(model, x, 3, 0, k=0)


# --- figures -------------------------------------------------------------------------------


def test_scale_channels_per_channel_and_shared():
    from mindscope.render.activations import scale_channels

    rng = np.random.default_rng(7)
    a = rng.normal(size=(5, 3, 4)) * np.arange(1, 6)[:, None, None]
    a[3] = 2.5  # a flat map
    tiles, picked, (low, high) = scale_channels(a, 4, per_channel=True)
    assert picked == [0, 1, 2, 3]
    for i in range(3):
        np.testing.assert_allclose(tiles[i], (a[i] - a[i].min()) / (a[i].max() - a[i].min()))
    np.testing.assert_array_equal(tiles[3], 0.0)
    tiles, picked, (low, high) = scale_channels(torch.from_numpy(a), [4, 1], per_channel=False)
    chosen = a[[4, 1]]
    assert picked == [4, 1] and (low, high) == (chosen.min(), chosen.max())
    np.testing.assert_allclose(tiles, (chosen - chosen.min()) / (chosen.max() - chosen.min()))
    with pytest.raises(ValueError, match="channel 9 is out of range; this layer has channels 0 to 4"):
        scale_channels(a, [1, 9])
    with pytest.raises(ValueError, match=r"one example's \(C, H, W\) map"):
        scale_channels(a[None], 3)


def test_mosaic_upscales_with_nearest_neighbour():
    from mindscope.render.activations import mosaic_tiles

    tiles = np.arange(2 * 2 * 2, dtype=float).reshape(2, 2, 2) / 8
    mosaic, corners = mosaic_tiles(tiles, columns=2, cell=8, gap=1)
    assert mosaic.shape == (8, 17) and corners == [(0, 0), (0, 9)]
    np.testing.assert_array_equal(mosaic[:, :8], np.kron(tiles[0], np.ones((4, 4))))
    np.testing.assert_array_equal(mosaic[:, 9:], np.kron(tiles[1], np.ones((4, 4))))
    assert np.isnan(mosaic[:, 8]).all()


def test_channel_grid_labels_each_tile():
    from mindscope.render.activations import channel_grid

    a = torch.randn(40, 8, 8)
    a[2] = 0.0
    fig = channel_grid(a, image=torch.rand(3, 32, 32))
    labels = [t.get_text() for t in fig.axes[-1].texts]
    assert labels == [str(c) if c != 2 else "2 flat" for c in range(27)]
    assert len(fig.axes) == 2  # the input beside the grid
    fig = channel_grid(a, channels=[5, 30], per_channel=False)
    assert [t.get_text() for t in fig.axes[0].texts] == ["5", "30"]
    assert len(fig.axes) == 2  # grid + colour bar in activation units


def test_gif_frames_and_file(tmp_path):
    from PIL import Image

    from mindscope.render.activations import layer_gif_frames, save_gif

    model = allconv().float()
    x = torch.rand(1, 3, 32, 32)
    acts = capture_activations(model, x, "3,6,9")
    frames = layer_gif_frames(x[0], {n: a[0] for n, a in acts.items()}, labels={"features.5": "layer 3"}, channels=3)
    assert len(frames) == 4 and len({f.size for f in frames}) == 1
    path = save_gif(frames, tmp_path / "layers.gif", duration_ms=500)
    with Image.open(path) as gif:
        assert gif.is_animated and gif.n_frames == 4


def test_statistics_figures_show_the_numbers():
    from mindscope.render.activations import channel_statistics_figure, layer_statistics_figure

    model = allconv(gain=8.0)
    stats = activation_statistics(model, torch.randn(6, 3, 16, 16, dtype=torch.float64), "3,6")
    fig = layer_statistics_figure(stats)
    heights = [p.get_height() for p in fig.axes[0].patches]
    s3, s6 = stats["features.5"].summary, stats["features.12"].summary
    np.testing.assert_allclose(heights, [s3.active, s6.active, s3.saturated, s6.saturated, s3.dead, s6.dead])
    fig = channel_statistics_figure(stats["features.5"])
    assert len(fig.axes) == 2


def test_top_activating_figure():
    from mindscope.render.activations import top_activating_figure

    model = allconv().float()
    x = torch.rand(7, 3, 16, 16)
    top = top_activating(model, x, 3, 0, k=4)
    fig = top_activating_figure(x[top.indices], top)
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert [t.split()[0] for t in titles] == [f"#{i}" for i in top.indices]
    with pytest.raises(ValueError, match="got 3 images for 4 top examples"):
        top_activating_figure(x[:3], top)


# --- CLI (needs the lead's `tiny_run` fixture from tests/conftest.py) --------------------


@pytest.fixture
def run_dir(request):
    try:
        return request.getfixturevalue("tiny_run")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py has no tiny_run fixture yet")


@pytest.mark.slow
def test_cli_draws_grids_gif_stats_and_top(run_dir, tmp_path, capsys):
    from mindscope.cli import main

    out = tmp_path / "acts"
    assert (
        main(
            [
                "activations",
                str(run_dir),
                "--image",
                "0",
                "--out",
                str(out),
                "--stats",
                "--top",
                "1",
                "-k",
                "4",
                "--limit",
                "16",
            ]
        )
        == 0
    )
    names = {p.name for p in out.iterdir()}
    for layer in ("features.5", "features.12", "features.18"):
        assert {f"grid_{layer}.png", f"stats_{layer}.png", f"top_{layer}_channel1.png"} <= names
    assert {"layers.gif", "stats_layers.png"} <= names
    printed = capsys.readouterr().out
    assert "channels dead" in printed
    assert "layer 3 (features.5): " in printed and "saturated (within 0.05 of -1)" in printed
    assert "layer 9 (features.18): " in printed and "saturation n/a (no saturating activation)" in printed
    assert "nan%" not in printed


def test_cli_resizes_an_image_file_and_says_so(run_dir, tmp_path, capsys):
    from PIL import Image

    from mindscope.cli import main

    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 50, 3), dtype=np.uint8)).save(photo)
    assert (
        main(["activations", str(run_dir), "--image", str(photo), "--layers", "3", "--out", str(tmp_path / "o")]) == 0
    )
    assert "resized photo.png from 50x20 to 32x32" in capsys.readouterr().out


def test_cli_rejects_bad_layer_and_index(run_dir, tmp_path, capsys):
    from mindscope.cli import main

    assert main(["activations", str(run_dir), "--layers", "3,features.99", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mindscope: error: no layer 'features.99'; layers are: features, features.0")
    assert "\n" not in err
    assert main(["activations", str(run_dir), "--image", "100000", "--out", str(tmp_path)]) == 2
    assert "image index 100000 is out of range; the test split has" in capsys.readouterr().err
    assert main(["activations", str(run_dir), "--image", "missing.png", "--out", str(tmp_path)]) == 2
    assert "no image file 'missing.png'" in capsys.readouterr().err
