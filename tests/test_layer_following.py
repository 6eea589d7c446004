"""Layer numbers asked for their output follow the graphs of Keras and ONNX models to the activation after them.

The expected names are those of the modules each test model is built with.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mindscope.cli import main
from mindscope.layers import explain_layer, resolve_layer
from mindscope.models import load_model


def _keras():
    pytest.importorskip("h5py")
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    from mindscope.models.keras import import_keras

    return import_keras()


def _export_onnx(net: nn.Module, shape: tuple[int, ...], path) -> None:
    pytest.importorskip("onnx")
    with warnings.catch_warnings():  # the TorchScript-based exporter says it is legacy
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(), (torch.zeros(2, *shape),), str(path), dynamo=False, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "n"}},
        )  # fmt: skip


def test_a_loaded_keras_sequential_follows_each_layer_to_its_activation(tmp_path):
    keras = _keras()
    layers = keras.layers
    keras.Sequential(
        [
            keras.Input((10, 12, 3)),
            layers.Conv2D(4, 3, padding="same", activation="relu", name="c1"),
            layers.Conv2D(4, 3, padding="same", name="c2"),
            layers.BatchNormalization(name="bn2"),
            layers.Activation("elu", name="a2"),
            layers.Conv2D(4, 3, name="c3"),
            layers.Dropout(0.5, name="d3"),
            layers.ReLU(name="r3"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(3, name="out"),
        ]
    ).save(tmp_path / "seq.keras")
    model = load_model(f"keras:{tmp_path / 'seq.keras'}").model
    expected = {1: "c1", 2: "a2", 3: "r3", 4: "out"}  # c1 applies its own relu; out ends the model
    assert {n: resolve_layer(model, n, output=True) for n in expected} == expected
    assert (
        str(explain_layer(model, 2, output=True))
        == "2 -> a2 (Activation after layer 2, Conv2D c2, through BatchNormalization bn2)"
    )


def test_a_keras_layer_in_a_nested_model_is_followed_out_of_it(tmp_path):
    keras = _keras()
    layers = keras.layers
    block = keras.Sequential([keras.Input((6, 6, 2)), layers.Conv2D(3, 3, name="conv")], name="block")
    inputs = keras.Input((6, 6, 2))
    h = layers.Activation("tanh", name="act")(block(inputs))
    keras.Model(inputs, layers.Dense(2, name="fc")(layers.Flatten(name="flat")(h))).save(tmp_path / "nested.keras")
    model = load_model(f"keras:{tmp_path / 'nested.keras'}").model
    assert resolve_layer(model, 1, output=True) == "act"
    assert resolve_layer(model, 2, output=True) == "fc"


def test_an_onnx_graph_follows_each_node_to_its_activation(tmp_path):
    path = tmp_path / "seq.onnx"
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3))
    _export_onnx(net, (1, 8, 8), path)
    model = load_model(f"onnx:{path}").model
    expected = {1: "1_Relu", 2: "3_Tanh", 3: "5_Gemm"}  # the exporter names nodes /<module>/<op>
    assert {n: resolve_layer(model, n, output=True) for n in expected} == expected


class _Residual(nn.Module):
    """A convolution whose output two operations take: no single activation follows it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        h = self.conv(x)
        return self.fc((self.act(h) + h).mean((2, 3)))


def test_an_onnx_node_with_two_users_keeps_its_own_output(tmp_path):
    path = tmp_path / "res.onnx"
    _export_onnx(_Residual(), (2, 6, 6), path)
    model = load_model(f"onnx:{path}").model
    assert resolve_layer(model, 1, output=True) == "conv_Conv"


def test_the_hint_for_a_layer_without_channel_maps_names_this_models_convolutions(small_cnn, tmp_path, capsys):
    path = tmp_path / "cnn.onnx"
    _export_onnx(small_cnn, (3, 8, 8), path)
    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        (tmp_path / "img" / label).mkdir(parents=True)
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(tmp_path / "img" / label / "0.png")
    command = ["activations", "--model", f"onnx:{path}", "--data", f"folder:{tmp_path / 'img'}", "--image", "0"]
    assert main([*command, "--layers", "3", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.endswith("no channel maps to draw; choose a convolution (layers 1-2) or the activation after one")


class _Plain(nn.Module):
    """Layers called in order by a forward of its own: no nn.Sequential, no graph until traced."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(1, 2, 3), nn.ReLU()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2), nn.ELU()
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        h = self.act2(self.bn2(self.conv2(self.act1(self.conv1(x)))))
        return self.fc(h.mean(dim=(2, 3)))


class _Branching(_Plain):
    def forward(self, x):
        h = self.act1(self.conv1(x))
        if h.sum() > 0:  # control flow on values: fx cannot trace it
            h = -h
        return self.fc(self.act2(self.bn2(self.conv2(h))).mean(dim=(2, 3)))


def test_layer_numbers_of_a_plain_module_follow_its_traced_forward_to_the_activation() -> None:
    model = _Plain()
    assert [resolve_layer(model, n, output=True) for n in (1, 2)] == ["act1", "act2"]  # through bn2
    assert resolve_layer(_Branching(), 1, output=True) == "conv1"  # untraceable: the layer itself, as before
