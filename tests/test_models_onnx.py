"""onnx:FILE converted to torch modules, checked against the torch network it came from and against onnxruntime."""

from __future__ import annotations

import copy
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mindscope.activations import capture_activations
from mindscope.attribution import integrated_gradients
from mindscope.evaluation.randomisation import randomise_layer
from mindscope.layers import describe_layers
from mindscope.models import load_model
from mindscope.quadrature import midpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

# torch module -> the submodule the converter makes of the node the legacy exporter wrote for it
ONNX_NAMES = {
    "conv1": "conv1_Conv",
    "relu1": "relu1_Relu",
    "conv2": "conv2_Conv",
    "relu2": "relu2_Relu",
    "pool": "pool_GlobalAveragePool",
    "flatten": "flatten_Flatten",
    "fc": "fc_Gemm",
}


def export(net: nn.Module, x: torch.Tensor, path) -> None:
    with warnings.catch_warnings():  # the TorchScript-based exporter says it is legacy; it needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}}
        )


def run_onnxruntime(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def cnn_file(small_cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "cnn.onnx"
    export(small_cnn, torch.randn(2, 3, 8, 8), path)
    return path


@pytest.fixture(scope="module")
def converted(cnn_file):
    return load_model(f"onnx:{cnn_file}")


def test_outputs_match_the_network_and_onnxruntime(converted, small_cnn, cnn_file):
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        ours = converted.model(x)
        torch.testing.assert_close(ours, small_cnn(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, torch.from_numpy(run_onnxruntime(cnn_file, x.numpy())), rtol=1e-5, atol=1e-6)


def test_each_node_is_captured_under_its_own_name(converted, small_cnn):
    x = torch.randn(4, 3, 8, 8)
    captured = capture_activations(converted.model, x, list(ONNX_NAMES.values()))
    with torch.no_grad():
        for name, layer in small_cnn.named_children():
            x = layer(x)
            torch.testing.assert_close(captured[ONNX_NAMES[name]], x, rtol=1e-5, atol=1e-6)
    assert converted.model.node_names["conv1_Conv"] == "/conv1/Conv"


def test_one_step_integrated_gradients_are_the_network_gradient_times_the_input(converted, small_cnn):
    """With one midpoint step IG is x * dF/dx at x / 2 (zero baseline); the reference is autograd on the torch net."""
    x = torch.randn(2, 3, 8, 8)
    ours = integrated_gradients(converted.model, x, 2, rule=midpoint(1))
    half = (x / 2).requires_grad_(True)
    small_cnn(half).softmax(dim=1)[:, 2].sum().backward()
    torch.testing.assert_close(ours.attributions, x * half.grad, rtol=1e-4, atol=1e-7)


def test_the_layer_listing_matches_the_network(converted, small_cnn):
    ours = {i.name: i for i in describe_layers(converted.model, (3, 8, 8))}
    assert list(ours) == list(ONNX_NAMES.values())
    kinds = ["Conv2d", "ReLU", "Conv2d", "ReLU", "GlobalAveragePool", "Flatten", "Linear"]
    assert [i.kind for i in ours.values()] == kinds
    for reference in describe_layers(small_cnn, (3, 8, 8)):
        info = ours[ONNX_NAMES[reference.name]]
        assert (info.output_shape, info.parameters, info.number) == (
            reference.output_shape,
            reference.parameters,
            reference.number,
        )


def test_the_card_takes_the_input_shape_from_the_graph(converted):
    assert converted.card.input_shape == (3, 8, 8)
    assert "input_shape" not in converted.card.assumed and "layout" in converted.card.assumed


def test_weights_are_the_ones_the_model_computes_with_also_in_a_deep_copy(converted, small_cnn):
    work = copy.deepcopy(converted.model)
    randomise_layer(work.get_submodule("conv2_Conv"), torch.Generator().manual_seed(5))
    reference = copy.deepcopy(small_cnn)
    reference.load_state_dict({f"{torch_name}.{key.rpartition('.')[2]}": value for torch_name, onnx_name in
                               ONNX_NAMES.items() for key, value in work.state_dict().items()
                               if key.startswith(onnx_name + ".")})  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(work(x), reference(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(work(x), converted.model(x))


def test_a_tabular_mlp_converts_with_its_batch_norm(tmp_path):
    torch.manual_seed(2)
    mlp = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 4), nn.Softmax(dim=1))
    with torch.no_grad():
        mlp[1].running_mean.uniform_(-1, 1)
        mlp[1].running_var.uniform_(0.5, 2)
    mlp.eval()
    export(mlp, torch.randn(3, 10), tmp_path / "mlp.onnx")
    loaded = load_model(f"onnx:{tmp_path / 'mlp.onnx'}")
    assert loaded.card.input_shape == (10,) and loaded.card.layout == "NF"
    x = torch.randn(6, 10)
    with torch.no_grad():  # the final Softmax is left out: the module returns the logits before it
        torch.testing.assert_close(loaded.model(x), mlp[:-1](x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loaded.model(x).softmax(1), mlp(x), rtol=1e-5, atol=1e-6)


def _model(nodes, initialisers, x_shape, y_shape, opset):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32 if k[0] != "i" else np.int64), k)
         for k, v in initialisers.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _graphs():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3))
    same = [  # SAME padding with stride 2, asymmetric max-pool pads, Softmax of opset 11 over C*H*W
        helper.make_node("Conv", ["x", "w"], ["c"], "conv_same", auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("MaxPool", ["c"], ["p"], "pool", kernel_shape=[2, 2], pads=[0, 0, 1, 1], strides=[1, 1]),
        helper.make_node("Softmax", ["p"], ["s"], "softmax", axis=1),
        helper.make_node("Flatten", ["s"], ["y"], "flatten"),
    ]
    pooled = [  # average pool leaving pads out of the count, Clip by attributes, Squeeze by attribute, Gemm
        helper.make_node("AveragePool", ["x"], ["a"], "avg", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["a"], ["c"], "clip", min=-0.5, max=0.5),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], "gap"),
        helper.make_node("Squeeze", ["g"], ["s"], "squeeze", axes=[2, 3]),
        helper.make_node("Gemm", ["s", "b", "bias"], ["y"], "gemm", alpha=0.5, beta=2.0),
    ]
    shapes = [  # batch norm, leaky ReLU, Reshape with a 0, Transpose, MatMul by a constant, Add a constant
        helper.make_node("BatchNormalization", ["x", "scale", "shift", "mean", "var"], ["n"], "bn", epsilon=1e-3),
        helper.make_node("LeakyRelu", ["n"], ["r"], "leaky", alpha=0.2),
        helper.make_node("Reshape", ["r", "ishape"], ["f"], "reshape"),
        helper.make_node("Transpose", ["f"], ["t"], "transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "m"], ["mm"], "matmul"),
        helper.make_node("ReduceMean", ["mm"], ["rm"], "mean", axes=[1], keepdims=0),
        helper.make_node("Add", ["rm", "offset"], ["y"], "add"),
    ]
    channels = {k: rng.normal(size=3) for k in ("scale", "shift", "mean")} | {"var": rng.uniform(0.5, 2, size=3)}
    return [
        pytest.param(_model(same, {"w": w}, [None, 3, 7, 7], [None, 64], 11), (3, 7, 7), id="same-pads"),
        pytest.param(
            _model(pooled, {"b": rng.normal(size=(3, 5)), "bias": rng.normal(size=5)}, [None, 3, 9, 9], [None, 5], 10),
            (3, 9, 9),
            id="pooling",
        ),
        pytest.param(
            _model(
                shapes,
                {**channels, "ishape": [0, 3, -1], "m": rng.normal(size=(3, 2)), "offset": [1.0, -1.0]},
                [None, 3, 4, 4],
                [None, 2],
                13,
            ),
            (3, 4, 4),
            id="shapes",
        ),  # fmt: skip
    ]


@pytest.mark.parametrize("model, shape", _graphs())
def test_operators_agree_with_onnxruntime(model, shape, tmp_path):
    path = tmp_path / "graph.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(1).normal(size=(3, *shape)).astype(np.float32)
    with torch.no_grad():
        ours = load_model(f"onnx:{path}").model(torch.from_numpy(x))
    torch.testing.assert_close(ours, torch.from_numpy(run_onnxruntime(path, x)), rtol=1e-5, atol=1e-6)


def test_an_unsupported_operator_is_named_with_its_node(tmp_path):
    nodes = [helper.make_node("LRN", ["x"], ["l"], "norm1", size=3), helper.make_node("Flatten", ["l"], ["y"], "f")]
    path = tmp_path / "lrn.onnx"
    onnx.save(_model(nodes, {}, [None, 3, 4, 4], [None, 48], 13), str(path))
    with pytest.raises(ValueError, match="the ONNX node 'norm1' uses operator 'LRN', which mindscope's converter"):
        load_model(f"onnx:{path}")


def test_a_graph_with_two_inputs_is_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "z"], ["y"], "add")],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3]) for n in ("x", "z")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(tmp_path / "two.onnx"))
    with pytest.raises(ValueError, match=r"takes 2 inputs \['x', 'z'\]; mindscope feeds one batch"):
        load_model(f"onnx:{tmp_path / 'two.onnx'}")


def test_without_the_onnx_package_one_line_says_what_to_install(cnn_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails as if it were not installed
    with pytest.raises(ValueError, match=r"onnx:FILE needs the onnx package: pip install 'mindscope\[onnx\]'"):
        load_model(f"onnx:{cnn_file}")
