"""An ONNX graph that ends in Softmax returns its logits, so that mindscope's softmax gives its probabilities.

References: onnxruntime running the file, and the torch network it was exported from.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mindscope.attribution.core import class_probability
from mindscope.models import load_model
from mindscope.models.onnx import load_onnx

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _export(net: nn.Module, path, opset: int) -> None:
    with warnings.catch_warnings():  # the TorchScript-based exporter says it is legacy
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(2, 6),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}},
        )


@pytest.fixture
def logits_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()


@pytest.mark.parametrize("opset", [11, 17])  # before and after Softmax's axis semantics changed (13)
def test_class_probabilities_equal_onnxruntime(logits_net, tmp_path, opset):
    path = tmp_path / "m.onnx"
    _export(nn.Sequential(logits_net, nn.Softmax(dim=1)), path, opset)
    x = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32) * 3
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    module, carried = load_onnx(path)
    assert "ends in Softmax" in carried["output"]
    assert not any(name.endswith("Softmax") for name, _ in module.named_children())
    model = load_model(f"onnx:{path}").model
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        np.testing.assert_allclose(class_probability(logits).numpy(), reference, rtol=0, atol=1e-6)
        torch.testing.assert_close(logits, logits_net(torch.from_numpy(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("last", [nn.Identity(), nn.LogSoftmax(dim=1)])  # logits, log-probabilities: kept
def test_a_graph_without_a_final_softmax_is_unchanged(logits_net, tmp_path, last):
    path = tmp_path / "m.onnx"
    net = nn.Sequential(logits_net, last).eval()
    _export(net, path, 17)
    module, carried = load_onnx(path)
    assert "output" not in carried
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(module(x), net(x), rtol=1e-5, atol=1e-5)
