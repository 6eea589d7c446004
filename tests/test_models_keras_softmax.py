"""A Keras model that ends in softmax returns its logits, so that mindscope's softmax gives its probabilities.

The references are Keras's own `predict` (numpy) and, for a dense head, the logits computed in numpy.
"""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch

from mindscope.attribution.core import class_probability
from mindscope.models import load_model
from mindscope.models.keras import import_keras, load_keras

pytest.importorskip("h5py")
if importlib.util.find_spec("keras") is None:
    pytest.skip("keras is not installed", allow_module_level=True)
keras = import_keras()
layers = keras.layers


def _dense_softmax():
    return keras.Sequential(
        [keras.Input((6,)), layers.Dense(5, activation="relu", name="h"), layers.Dense(3, activation="softmax")]
    )


def _softmax_layer():
    inputs = keras.Input((6,))
    return keras.Model(inputs, layers.Softmax(name="probs")(layers.Dense(3, name="fc")(inputs)))


def _activation_layer():
    return keras.Sequential([keras.Input((6,)), layers.Dense(3), layers.Activation("softmax", name="act")])


def _nested_head():
    head = keras.Sequential([keras.Input((5,)), layers.Dense(3, activation="softmax")], name="head")
    inputs = keras.Input((6,))
    return keras.Model(inputs, head(layers.Dense(5, activation="tanh")(inputs)))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32) * 3


@pytest.mark.parametrize("build", [_dense_softmax, _softmax_layer, _activation_layer, _nested_head])
def test_class_probabilities_equal_keras_predict(build, x, tmp_path):
    keras.utils.set_random_seed(0)
    path = tmp_path / "m.keras"
    build().save(path)
    reference = keras.saving.load_model(path).predict(x, verbose=0)  # (N, 3) probabilities
    module, carried = load_keras(path)
    assert "ends in softmax" in carried["output"]
    loaded = load_model(f"keras:{path}").model
    for model in (module.eval(), loaded, copy.deepcopy(loaded)):
        with torch.no_grad():
            probabilities = class_probability(model(torch.from_numpy(x))).numpy()
        np.testing.assert_allclose(probabilities, reference, rtol=0, atol=1e-6)


def test_the_output_is_the_dense_layers_logits(x, tmp_path):
    keras.utils.set_random_seed(0)
    model = _dense_softmax()
    model.save(tmp_path / "m.keras")
    (w1, b1), (w2, b2) = (layer.get_weights() for layer in model.layers)
    logits = np.maximum(x.astype(np.float64) @ w1 + b1, 0) @ w2 + b2  # float64 numpy, before the softmax
    with torch.no_grad():
        ours = load_model(f"keras:{tmp_path / 'm.keras'}").model(torch.from_numpy(x))
    np.testing.assert_allclose(ours.numpy(), logits, rtol=1e-5, atol=1e-5)


def test_a_model_without_softmax_is_unchanged(x, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    softmax_inside = layers.Dense(3, activation="softmax", name="inner")(inputs)  # not the last layer
    keras.Model(inputs, layers.Dense(3, name="fc")(softmax_inside)).save(tmp_path / "m.keras")
    reference = keras.saving.load_model(tmp_path / "m.keras").predict(x, verbose=0)
    module, carried = load_keras(tmp_path / "m.keras")
    assert "output" not in carried
    with torch.no_grad():
        np.testing.assert_allclose(module.eval()(torch.from_numpy(x)).numpy(), reference, rtol=1e-6, atol=1e-6)


def test_the_card_and_the_printout_say_the_softmax_was_removed(tmp_path):
    from mindscope.subject import open_subject

    keras.utils.set_random_seed(0)
    _dense_softmax().save(tmp_path / "soft.keras")
    inputs = keras.Input((6,))
    keras.Model(inputs, layers.Dense(3, name="fc")(inputs)).save(tmp_path / "plain.keras")
    soft = open_subject(model=f"keras:{tmp_path / 'soft.keras'}")
    assert "ends in softmax" in soft.card.output_note
    assert [line for line in soft.describe() if line.startswith("output: logits: the model ends in softmax")]
    plain = open_subject(model=f"keras:{tmp_path / 'plain.keras'}")
    assert plain.card.output_note is None and not [line for line in plain.describe() if line.startswith("output:")]
