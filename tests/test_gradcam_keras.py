"""A Keras model's layers are channels last: Grad-CAM, layer IG and feature visualisation read them so.

The Keras network is the shared `small_cnn` rebuilt in Keras with its weights copied over,
so every number is checked against the PyTorch network: a naive Grad-CAM over its true
channels, and its layer IG. Its layers' maps are (N, 8, 8, 4) and (N, 6, 6, 6); read
channels first, the first gives 8 "channels" of 8 x 4 and the pool's (N, 1, 1, 6) looks spatial.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as functional
from PIL import Image
from torch import nn
from torch.testing import assert_close

from mindscope import grad_cam
from mindscope.attribution import layer_integrated_gradients
from mindscope.cli import main
from mindscope.models import load_model
from mindscope.models.keras import import_keras
from mindscope.quadrature import gauss_legendre
from mindscope.subject import open_subject

pytest.importorskip("h5py")
if importlib.util.find_spec("keras") is None:
    pytest.skip("keras is not installed", allow_module_level=True)
keras = import_keras()  # on the torch backend; a plain `import keras` would pick TensorFlow
from test_models_keras import keras_files  # noqa: E402, F401 - small_cnn rebuilt in Keras, its weights copied

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def keras_file(keras_files):  # noqa: F811 - the fixture imported above
    return keras_files["keras"]


def naive_grad_cam(model: nn.Sequential, x: torch.Tensor, layer: str, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of the NCHW torch network, one example at a time, split at the layer."""
    cut = [name for name, _ in model.named_children()].index(layer)
    maps = []
    for i in range(x.shape[0]):
        a = model[: cut + 1](x[i : i + 1]).detach().requires_grad_(True)  # (1, C, h, w)
        score = model[cut + 1 :](a)[0, targets[i]]
        (g,) = torch.autograd.grad(score, a)
        w = g[0].mean(dim=(1, 2))  # (C,) mean over positions
        maps.append(torch.relu((w[:, None, None] * a[0].detach()).sum(0)))  # sum over the true channels
    return torch.stack(maps)


def upsampled(maps: torch.Tensor) -> torch.Tensor:
    return functional.interpolate(maps[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("layer", ["relu1", None])
def test_grad_cam_of_a_keras_model_equals_the_naive_torch_version(keras_file, small_cnn, layer) -> None:
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 2, 1])
    expected = naive_grad_cam(small_cnn, x, layer or "relu2", targets)
    # the model as loaded takes (N, H, W, C): its layout says where the layers' channels are
    loaded = load_model(f"keras:{keras_file}").model
    result = grad_cam(loaded, x.permute(0, 2, 3, 1), targets, layer=layer, layout="NHWC")
    assert result.layer == (layer or "relu2")  # not the (N, 1, 1, 6) pool
    assert_close(result.layer_maps, expected, rtol=1e-4, atol=1e-6)
    assert_close(result.maps, upsampled(expected), rtol=1e-4, atol=1e-6)
    # as the commands open it: (N, C, H, W) permuted in a pre-hook, the layers still channels last
    subject = open_subject(model=f"keras:{keras_file}")
    assert subject.channels_last
    result = grad_cam(subject.model, x, targets, layer=layer, channel_axis=-1)
    assert_close(result.layer_maps, expected, rtol=1e-4, atol=1e-6)


def test_layer_integrated_gradients_of_a_keras_layer_come_per_true_channel(keras_file, small_cnn) -> None:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    subject = open_subject(model=f"keras:{keras_file}")
    ours = layer_integrated_gradients(subject.model, x, "conv1", 0, rule=gauss_legendre(8), channel_axis=-1)
    reference = layer_integrated_gradients(small_cnn, x, "conv1", 0, rule=gauss_legendre(8))
    assert ours.attributions.shape == (2, 4, 8, 8)
    assert_close(ours.attributions, reference.attributions, rtol=1e-4, atol=1e-7)
    assert_close(ours.channel_totals, reference.channel_totals, rtol=1e-4, atol=1e-7)


def test_the_commands_read_keras_layers_channels_last(keras_file, small_cnn, tmp_path, capsys) -> None:
    status = main(["visualise", "--model", f"keras:{keras_file}", "--layer", "conv1", "--channels", "5"]
                  + ["--steps", "1", "--out", str(tmp_path / "v")])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().splitlines() == ["mindscope: error: channel 5 is not in layer 'conv1', which has channels 0..3"]
    status = main(["visualise", "--model", f"keras:{keras_file}", "--layer", "conv1", "--channels", "3"]
                  + ["--steps", "1", "--out", str(tmp_path / "v")])  # fmt: skip
    assert status == 0 and (tmp_path / "v" / "conv1_channel_3.png").is_file()
    capsys.readouterr()
    image = tmp_path / "image.png"
    values = np.random.default_rng(2).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(values).save(image)
    x = torch.tensor(values).permute(2, 0, 1)[None].float() / 255  # the pixels the command reads, (1, 3, 8, 8)
    status = main(["attribute", "--model", f"keras:{keras_file}", "--image", str(image), "--method", "gradcam"]
                  + ["--layer", "relu1", "--out", str(tmp_path / "a")])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    with torch.no_grad():
        predicted = small_cnn(x).argmax(1)
    expected = upsampled(naive_grad_cam(small_cnn, x, "relu1", predicted))
    assert f"map max {float(expected.max()):.3g}" in out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """6 random 8x8 RGB images in 3 classes."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(4)
    for k in range(6):
        (folder / f"c{k % 3}").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(folder / f"c{k % 3}" / f"{k}.png")
    return folder


@pytest.fixture(scope="module")
def keras_subject(keras_file, image_folder):
    """The Keras network opened as the commands open it, on the image folder."""
    return open_subject(model=f"keras:{keras_file}", data=f"folder:{image_folder}")


def test_the_report_and_dashboard_read_keras_layers_channels_last(keras_subject, small_cnn) -> None:
    from mindscope.report import standard_methods
    from mindscope.report.channel_section import channel_means
    from mindscope.serve.activation_views import layer_scores
    from mindscope.serve.catalog import Entry

    subject = keras_subject
    test = subject.data.test
    x = subject.inputs(test.pixels(list(range(len(test)))))  # (6, 3, 8, 8) as the model is fed
    with torch.no_grad():
        relu1 = small_cnn[:2](x)  # (6, 4, 8, 8): the true channels
        predicted = small_cnn(x).argmax(1)
    methods = standard_methods(subject.normalization, alpha=0.5, tolerance=0.01, samples=2, seed=0)
    expected = upsampled(naive_grad_cam(small_cnn, x, "relu2", predicted))
    assert_close(methods["gradcam"](subject.model, x, predicted), expected, rtol=1e-4, atol=1e-6)
    means = channel_means(subject.model, x, ["relu1"])["relu1"]
    assert_close(means, relu1.mean(dim=(2, 3)), rtol=1e-4, atol=1e-6)
    entry = Entry("keras", subject)
    with entry.lock:
        layers = {name: shape for name, _, shape in entry.map_layers()}
    assert layers["relu1"] == (4, 8, 8) and layers["relu2"] == (6, 6, 6)
    scores = layer_scores(entry, None, "relu1", lambda *_: None)
    assert scores.shape == (6, 4)
    assert_close(torch.tensor(scores), relu1.mean(dim=(2, 3)).double(), rtol=1e-4, atol=1e-6)


def test_a_scan_of_a_keras_model_gives_layer_statistics_per_true_channel(
    keras_subject, keras_file, image_folder, small_cnn, tmp_path
) -> None:
    from mindscope.scan import ScanOptions, ScanSource, open_scan, scan

    source = ScanSource(f"keras:{keras_file}", data=f"folder:{image_folder}")
    scan(source, tmp_path / "scan", options=ScanOptions(methods=("gradient",), layers=("relu1",), shard_size=8))
    stats = open_scan(tmp_path / "scan").layer_statistics()["relu1"]
    test = keras_subject.data.test
    with torch.no_grad():
        relu1 = small_cnn[:2](keras_subject.inputs(test.pixels(list(range(len(test)))))).double()  # (6, 4, 8, 8)
    assert stats.mean.shape == (4,)
    np.testing.assert_allclose(stats.mean, relu1.mean(dim=(0, 2, 3)).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.active, (relu1 > 0).double().mean(dim=(0, 2, 3)).numpy(), atol=1e-12)


def test_the_looks_read_a_keras_models_channels_last_without_being_told(keras_subject, small_cnn) -> None:
    from mindscope import activation_statistics
    from mindscope.visualisation import feature_visualisation

    subject = keras_subject
    x = subject.inputs(subject.data.test.pixels(list(range(len(subject.data.test)))))
    with torch.no_grad():
        relu1 = small_cnn[:2](x).double()  # (6, 4, 8, 8)
        predicted = small_cnn(x).argmax(1)
    result = grad_cam(subject.model, x)  # no channel_axis: the model states its own
    assert result.layer == "relu2"
    assert_close(result.layer_maps, naive_grad_cam(small_cnn, x, "relu2", predicted), rtol=1e-4, atol=1e-6)
    stats = activation_statistics(subject.model, x, ["relu1"])["relu1"]
    np.testing.assert_allclose(stats.mean, relu1.mean(dim=(0, 2, 3)).numpy(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="channel 4 is not in layer 'conv1', which has channels 0..3"):
        feature_visualisation(subject.model, "conv1", [4], steps=1, size=8)
    lig = layer_integrated_gradients(subject.model, x[:2], "conv1", 0, rule=gauss_legendre(4))
    assert lig.attributions.shape == (2, 4, 8, 8)


def test_a_keras_elu_has_a_saturation_floor_and_its_statistics_count_it(tmp_path) -> None:
    from mindscope import activation_statistics, capture_activations
    from mindscope.activations import saturation_rule

    layers = keras.layers
    h = inputs = keras.Input((6, 6, 1))
    h = layers.Conv2D(4, 3, padding="same", name="c1")(h)
    h = layers.Activation("elu", name="a1")(h)
    h = layers.Conv2D(4, 3, padding="same", activation="selu", name="c2")(h)
    h = layers.ELU(alpha=0.5, name="e3")(h) if hasattr(layers, "ELU") else h
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="c4")(h)
    keras.utils.set_random_seed(0)
    keras.Model(inputs, layers.Dense(3, name="out")(layers.Flatten()(h))).save(tmp_path / "elu.keras")
    model = open_subject(model=f"keras:{tmp_path / 'elu.keras'}").model
    floors = {name: getattr(saturation_rule(m), "level", None) for name, m in model.named_children()}
    assert floors["a1"] == -1.0 and floors["c2"] == pytest.approx(-1.0507009873554805 * 1.6732632423543772)
    assert floors["c1"] is None and floors["c4"] is None
    if hasattr(layers, "ELU"):
        assert floors["e3"] == -0.5
    x = 3 * torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    stats = activation_statistics(model, x, ["a1"])["a1"]
    a = capture_activations(model, x, ["a1"])["a1"].double()  # (8, 6, 6, 4): channels last
    np.testing.assert_allclose(stats.saturated, ((a + 1).abs() <= 0.05).double().mean(dim=(0, 1, 2)).numpy())
    assert stats.saturated.max() > 0  # the inputs drive some units onto the floor
