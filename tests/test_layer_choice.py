"""The layer a spec names is stated: names mean themselves, numbers say which output they give and why."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from mindscope.activations import capture_activations
from mindscope.layers import explain_layer, resolve_layer
from mindscope.model import AllConvNet
from mindscope.weights import weight_histograms


def conv_bn_relu() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3)).double()
    with torch.no_grad():
        model[1].running_mean.normal_(0, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_sequential_names_are_those_modules_in_every_look() -> None:
    model = conv_bn_relu()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    conv = F.conv2d(x, model[0].weight, model[0].bias)
    bn = F.batch_norm(conv, model[1].running_mean, model[1].running_var, model[1].weight, model[1].bias)
    got = capture_activations(model, x, ["0", "1", "2"])
    assert list(got) == ["0", "1", "2"]
    assert_close(got["0"], conv)
    assert_close(got["1"], bn)
    assert_close(got["2"], bn.clamp_min(0))  # the ReLU "2", not the second convolution
    for spec, name in (("0", "0"), ("1", "1"), ("2", "2"), ("3", "3")):
        assert resolve_layer(model, spec, output=True) == name
        assert explain_layer(model, spec, output=True).name == name
    assert set(weight_histograms(model, layers=["1"])) == {"1.weight", "1.bias"}  # the BatchNorm's own
    assert set(weight_histograms(model, layers=["0"])) == {"0.weight", "0.bias"}


def test_a_layer_number_asked_for_its_output_says_which_activation_it_took() -> None:
    model = conv_bn_relu()
    choice = explain_layer(model, "L1", output=True)
    assert choice.name == "2" and choice.layer == "0" and choice.kind == "ReLU"
    assert str(choice) == "L1 -> 2 (ReLU after layer 1, Conv2d 0, through BatchNorm2d 1)"
    last = explain_layer(model, "L2", output=True)
    assert last.name == "3"
    assert str(last) == (
        "L2 -> 3 (layer 2, Conv2d: its own output, before any activation; its output is the model's output)"
    )
    assert str(explain_layer(model, "L1")) == "L1 -> 0 (layer 1, Conv2d)"
    assert str(explain_layer(model, "0", output=True)) == "0 (Conv2d: its own output)"
    assert str(explain_layer(model, model[2])) == "2 (ReLU, the module given)"
    walk = explain_layer(AllConvNet(width=4), 3, output=True)
    assert str(walk) == "3 -> features.5 (ELU after layer 3, Conv2d features.4)"
    assert "AdaptiveAvgPool2d features.19 follows it, not an activation" in str(
        explain_layer(AllConvNet(width=4), "L9", output=True)
    )


def test_an_activation_after_a_nested_sequential_is_found() -> None:
    model = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5)), nn.GELU(), nn.Linear(4, 2))
    assert (
        str(explain_layer(model, "L1", output=True)) == "L1 -> 1 (GELU after layer 1, Linear 0.0, through Dropout 0.1)"
    )


class Graph(nn.Module):
    """Outside an nn.Sequential: conv -> bn -> ReLU module, then a conv whose ReLU is a function."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.bn(self.conv(x)))
        return self.fc(torch.relu(self.conv2(a)).mean(dim=(2, 3)))


def test_in_an_fx_graph_the_activation_module_is_followed_and_a_function_is_stated() -> None:
    torch.manual_seed(0)
    eager = Graph().double().eval()
    graph = torch.fx.symbolic_trace(eager)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    first = explain_layer(graph, "L1", output=True)
    assert str(first) == "L1 -> act (ReLU after layer 1, Conv2d conv, through BatchNorm2d bn)"
    reference = eager.act(eager.bn(eager.conv(x)))
    assert_close(capture_activations(graph, x, ["L1"])["act"], reference.detach())
    second = explain_layer(graph, "L2", output=True)
    assert second.name == "conv2"
    assert "its own output, before any activation; the activation after it, if any, is the function relu" in str(second)
    assert str(explain_layer(graph, "L3", output=True)).endswith("its output is the model's output)")
    # the same model as written: its forward is traced, and the same activation found
    assert str(explain_layer(eager, "L1", output=True)) == str(first)
    assert_close(capture_activations(eager, x, ["L1"])["act"], reference.detach())


def test_unknown_layers_are_refused_with_the_way_out() -> None:
    model = conv_bn_relu()
    with pytest.raises(ValueError, match=r"no layer 'head'; layers are: 0, 1, 2, 3 \(see 'mindscope layers'\)"):
        explain_layer(model, "head")
    with pytest.raises(ValueError, match=r"no layer L5; layer numbers run from 1 to 2 \(L1 \.\. L2"):
        explain_layer(model, "L5")
    with pytest.raises(ValueError, match="the ReLU given is not a submodule of Sequential"):
        explain_layer(model, nn.ReLU())
