"""keras:FILE through the adapter, checked against the same network in torch with the weights copied over.

Keras is channels-last: its images are (N, H, W, C), its kernels (kh, kw, in, out), its dense
kernels (in, out). The torch reference gets the same images permuted to (N, C, H, W).
"""

from __future__ import annotations

import copy
import importlib.util
import sys

import numpy as np
import pytest
import torch

from mindscope.activations import capture_activations
from mindscope.attribution import integrated_gradients
from mindscope.evaluation.randomisation import randomise_layer
from mindscope.layers import describe_layers
from mindscope.models import load_model
from mindscope.models.keras import import_keras
from mindscope.quadrature import gauss_legendre
from mindscope.weights import weight_histograms

pytest.importorskip("h5py")
if importlib.util.find_spec("keras") is None:
    pytest.skip("keras is not installed", allow_module_level=True)
keras = import_keras()  # on the torch backend; a plain `import keras` would pick TensorFlow
layers = keras.layers

NAMES = ["conv1", "relu1", "conv2", "relu2", "pool", "flatten", "fc"]


def nchw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2) if t.dim() == 4 else t


def keras_weights(name: str, tensor: torch.Tensor) -> np.ndarray:
    """A torch weight in Keras's layout."""
    if tensor.dim() == 4:
        return tensor.permute(2, 3, 1, 0).numpy()  # (out, in, kh, kw) -> (kh, kw, in, out)
    return tensor.T.numpy() if tensor.dim() == 2 else tensor.numpy()


def torch_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights renamed and laid out as the torch network's state dict."""
    state = {}
    for name, value in model.state_dict().items():
        layer, _, variable = name.rpartition(".")
        value = value.permute(3, 2, 0, 1) if value.dim() == 4 else (value.T if value.dim() == 2 else value)
        state[f"{layer}.{'weight' if variable == 'kernel' else 'bias'}"] = value
    return state


@pytest.fixture(scope="module")
def keras_files(small_cnn, tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras")
    inputs = keras.Input((8, 8, 3))
    stack = [
        layers.Conv2D(4, 3, padding="same", name="conv1"),
        layers.ReLU(name="relu1"),
        layers.Conv2D(6, 3, name="conv2"),
        layers.ReLU(name="relu2"),
        layers.GlobalAveragePooling2D(keepdims=True, name="pool"),
        layers.Flatten(name="flatten"),
        layers.Dense(3, name="fc"),
    ]
    h = inputs
    for layer in stack:
        h = layer(h)
    model = keras.Model(inputs, h)
    for layer in stack:
        source = getattr(small_cnn, layer.name)
        if layer.weights:
            layer.set_weights([keras_weights(layer.name, source.weight.detach()), source.bias.detach().numpy()])
    model.save(folder / "cnn.keras")
    model.save(folder / "cnn.h5")
    return {"keras": folder / "cnn.keras", "h5": folder / "cnn.h5"}


@pytest.fixture(scope="module", params=["keras", "h5"])
def loaded(request, keras_files):
    return load_model(f"keras:{keras_files[request.param]}")


def test_outputs_match_the_torch_network(loaded, small_cnn):
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x.permute(0, 2, 3, 1)), small_cnn(x), rtol=1e-5, atol=1e-5)


def test_keras_layers_are_captured_by_their_keras_names(loaded, small_cnn):
    x = torch.randn(4, 3, 8, 8)
    captured = capture_activations(loaded.model, x.permute(0, 2, 3, 1), NAMES)
    assert list(captured) == NAMES
    with torch.no_grad():
        for name, layer in small_cnn.named_children():
            x = layer(x)
            torch.testing.assert_close(nchw(captured[name]), x, rtol=1e-5, atol=1e-5)


def test_integrated_gradients_match_the_permuted_torch_maps(loaded, small_cnn):
    x = torch.randn(2, 3, 8, 8)
    ours = integrated_gradients(loaded.model, x.permute(0, 2, 3, 1), 0, rule=gauss_legendre(8))
    reference = integrated_gradients(small_cnn, x, 0, rule=gauss_legendre(8))
    torch.testing.assert_close(nchw(ours.attributions), reference.attributions, rtol=1e-4, atol=1e-6)


def test_the_layer_listing_shows_the_keras_layers_with_shapes(loaded, small_cnn):
    ours = describe_layers(loaded.model, (8, 8, 3))
    assert [i.name for i in ours] == NAMES
    assert [i.kind for i in ours] == [
        "Conv2D",
        "ReLU",
        "Conv2D",
        "ReLU",
        "GlobalAveragePooling2D",
        "Flatten",
        "Dense",
    ]
    for info, reference in zip(ours, describe_layers(small_cnn, (3, 8, 8))):
        shape = info.output_shape
        assert (shape[:1] + shape[3:] + shape[1:3] if len(shape) == 4 else shape) == reference.output_shape
        assert info.parameters == reference.parameters


def test_weight_histograms_count_each_weight_once(loaded, small_cnn):
    counts = {name: h.stats.count for name, h in weight_histograms(loaded.model).items()}
    kinds = {"weight": "kernel", "bias": "bias"}
    expected = {
        f"{k.rpartition('.')[0]}.{kinds[k.rpartition('.')[2]]}": p.numel() for k, p in small_cnn.named_parameters()
    }
    assert counts == expected


def test_integer_seed_state_and_moving_statistics_are_not_weights(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((6,)),
            layers.Dense(5, name="d1"),
            layers.BatchNormalization(name="bn"),
            layers.Dropout(0.5, name="drop"),
            layers.Dense(2, name="d2"),
        ]
    )
    assert any("int" in str(v.dtype) for v in model.variables)  # the Dropout's seed state is there to leave out
    model.save(tmp_path / "mlp.keras")
    adapter = load_model(f"keras:{tmp_path / 'mlp.keras'}").model
    counts = {name: h.stats.count for name, h in weight_histograms(adapter).items()}
    assert sum(counts.values()) == sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 57
    assert set(counts) == {"d1.kernel", "d1.bias", "bn.gamma", "bn.beta", "d2.kernel", "d2.bias"}
    state = adapter.state_dict()
    assert all(t.is_floating_point() for t in state.values())
    assert set(state) == set(counts) | {"bn.moving_mean", "bn.moving_variance"}  # each float variable once


def test_weights_are_the_ones_keras_computes_with_also_in_a_deep_copy(loaded, small_cnn):
    work = copy.deepcopy(loaded.model)
    randomise_layer(work.get_submodule("conv2"), torch.Generator().manual_seed(4))
    reference = copy.deepcopy(small_cnn)
    reference.load_state_dict(torch_state(work))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(work(x.permute(0, 2, 3, 1)), reference(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded.model(x.permute(0, 2, 3, 1)), small_cnn(x), rtol=1e-5, atol=1e-5)


def test_a_nested_model_is_captured_by_dotted_names(tmp_path):
    inner_in = keras.Input((6, 6, 2))
    base = keras.Model(inner_in, layers.Conv2D(3, 3, name="conv")(inner_in), name="base")
    outer = keras.Sequential([keras.Input((6, 6, 2)), base, layers.GlobalAveragePooling2D(name="gap"), layers.Dense(2)])
    outer.save(tmp_path / "nested.keras")
    model = load_model(f"keras:{tmp_path / 'nested.keras'}").model
    x = torch.randn(3, 6, 6, 2)
    captured = capture_activations(model, x, ["base.conv", "gap"])
    torch.testing.assert_close(captured["base.conv"], base(x).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(x), outer(x).detach(), rtol=1e-5, atol=1e-6)


def test_the_card_reads_shape_layout_and_the_pixel_range_a_rescaling_implies(loaded, tmp_path):
    assert loaded.card.input_shape == (8, 8, 3) and loaded.card.layout == "NHWC"
    assert loaded.card.assumed == ("pixel_range", "mean", "std", "classes")
    inputs = keras.Input((4, 4, 3))
    outputs = layers.Dense(2)(layers.Flatten()(layers.Rescaling(1 / 255)(inputs)))
    keras.Model(inputs, outputs).save(tmp_path / "raw.keras")
    card = load_model(f"keras:{tmp_path / 'raw.keras'}").card
    assert card.pixel_range == (0.0, 255.0) and "pixel_range" not in card.assumed


def test_a_lambda_layer_is_refused_by_safe_mode(tmp_path):
    inputs = keras.Input((4,))
    keras.Model(inputs, layers.Lambda(lambda t: t * 2)(inputs)).save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="holds a Lambda layer, whose code Keras's safe mode will not run"):
        load_model(f"keras:{tmp_path / 'lambda.keras'}")


def test_without_keras_one_line_says_what_to_install(keras_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(ValueError, match=r"keras:FILE needs keras and h5py: pip install 'mindscope\[keras\]'"):
        load_model(f"keras:{keras_files['keras']}")


def test_keras_on_another_backend_is_refused(keras_files, monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="keras was already imported with the 'jax' backend; .* KERAS_BACKEND=torch"):
        load_model(f"keras:{keras_files['keras']}")
