"""AllConvNet against the walk-through's description, a float64 functional re-implementation,
layer naming, and `mindscope layers`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mindscope.cli import main
from mindscope.layers import numbered_layers, resolve_layer, resolve_layers
from mindscope.model import INIT_STDS, AllConvNet

# The walk-through's network, written out: (kind, kernel) per module of `features`.
SPEC = [
    "conv3",
    "elu",
    "conv3",
    "elu",
    "conv3",
    "elu",
    "pool",
    "conv3",
    "elu",
    "conv3",
    "elu",
    "conv3",
    "elu",
    "pool",
    "conv3",
    "elu",
    "conv1",
    "elu",
    "conv1",
    "gap",
    "flatten",
]
CONV_NAMES = [f"features.{i}" for i, kind in enumerate(SPEC) if kind.startswith("conv")]


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return f"conv{module.kernel_size[0]}"
    return {nn.ELU: "elu", nn.AvgPool2d: "pool", nn.AdaptiveAvgPool2d: "gap", nn.Flatten: "flatten"}[type(module)]


def test_structure():
    model = AllConvNet(width=8, num_classes=7, in_channels=1)
    assert [_kind(m) for m in model.features] == SPEC
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 9
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 8)] + [(8, 8)] * 7 + [(8, 7)]
    assert all(c.padding == ((1, 1) if c.kernel_size == (3, 3) else (0, 0)) for c in convs)
    pools = [m for m in model.features if isinstance(m, nn.AvgPool2d)]
    assert all(p.kernel_size == 2 and p.stride == 2 for p in pools)
    assert model.features[19].output_size in (1, (1, 1))
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules())
    out = model(torch.randn(5, 1, 32, 32))
    assert out.shape == (5, 7)
    assert not torch.allclose(out.softmax(1).sum(1), out.sum(1))  # logits, not probabilities


def test_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="width must be a positive integer, got 0"):
        AllConvNet(width=0)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\), got \(2, 1, 32, 32\)"):
        AllConvNet(width=4)(torch.zeros(2, 1, 32, 32))


def _check_normal(weight: torch.Tensor, std: float) -> None:
    """Sample std and mean of n draws from N(0, std) within 5 standard errors."""
    n = weight.numel()
    w = weight.double().flatten()
    assert abs(w.std().item() / std - 1) < 5 / math.sqrt(2 * n), (w.std().item(), std)
    assert abs(w.mean().item()) < 5 * std / math.sqrt(n)


def test_init_at_width_128():
    torch.manual_seed(1)
    model = AllConvNet(width=128)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert INIT_STDS == (0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.06, 0.04)
    for conv, std in zip(convs, INIT_STDS):
        assert torch.count_nonzero(conv.bias) == 0
        _check_normal(conv.weight, std)


@pytest.mark.parametrize("width, in_channels", [(32, 3), (8, 8)])
def test_init_scales_only_layers_whose_fan_in_is_the_width(width, in_channels):
    # Layer 1's fan-in is in_channels * 9 whatever the width, so it keeps the walk-through's std;
    # layers 2..9 take in `width` channels and get std * sqrt(128 / width).
    torch.manual_seed(2)
    model = AllConvNet(width=width, in_channels=in_channels)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    scale = math.sqrt(128 / width)
    for i, (conv, std) in enumerate(zip(convs, INIT_STDS)):
        _check_normal(conv.weight, std if i == 0 else std * scale)


def _functional_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The network re-implemented with torch.nn.functional, from its state dict."""
    h = x
    for i, name in enumerate(CONV_NAMES):
        weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
        h = F.conv2d(h, weight, bias, padding=weight.shape[-1] // 2)
        if i < 8:
            h = F.elu(h)
        if i in (2, 5):
            h = F.avg_pool2d(h, 2)
    return h.mean(dim=(2, 3))  # (N, classes)


def test_forward_matches_functional_float64():
    torch.manual_seed(3)
    model = AllConvNet(width=8, num_classes=10).double()
    with torch.no_grad():
        for conv in model.features:
            if isinstance(conv, nn.Conv2d):
                conv.bias.normal_(0, 0.1)  # exercise the biases too
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(model(x), _functional_forward(model.state_dict(), x))


# --- layer names and numbers ------------------------------------------------------------------
def test_numbered_layers():
    assert numbered_layers(AllConvNet(width=4)) == dict(enumerate(CONV_NAMES, start=1))


@pytest.mark.parametrize(
    "spec, output, name",
    [
        (1, False, "features.0"),
        ("3", False, "features.4"),
        (" 7 ", False, "features.14"),
        (9, False, "features.18"),
        (3, True, "features.5"),
        ("6", True, "features.12"),
        (8, True, "features.17"),
        (9, True, "features.18"),
        ("features.6", False, "features.6"),
        ("features.6", True, "features.6"),
        ("features.4", True, "features.4"),
    ],
)
def test_resolve_layer(spec, output, name):
    assert resolve_layer(AllConvNet(width=4), spec, output=output) == name


@pytest.mark.parametrize(
    "spec, message",
    [
        (0, r"no layer 0; layer numbers run from 1 to 9 \(L1 \.\. L9; see 'mindscope layers'\)"),
        ("10", r"no layer 10; layer numbers run from 1 to 9"),
        (
            "features.99",
            r"no layer 'features.99'; layers are: features, features.0, features.1, .*\(see 'mindscope layers'\)",
        ),
        ("", r"no layer ''; layers are: features"),
    ],
)
def test_resolve_layer_unknown(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_layer(AllConvNet(width=4), spec)


def test_resolve_layers():
    model = AllConvNet(width=4)
    assert resolve_layers(model, "3,6,9") == ["features.4", "features.11", "features.18"]
    assert resolve_layers(model, "3,6", output=True) == ["features.5", "features.12"]
    assert resolve_layers(model, [1, "features.1", "1"]) == ["features.0", "features.1"]
    assert resolve_layers(model, 2) == ["features.2"]
    with pytest.raises(ValueError, match="no layers given"):
        resolve_layers(model, " , ")


# --- `mindscope layers` -----------------------------------------------------------------------
def _reference_rows(width: int) -> dict[str, tuple[str, str, int]]:
    """name -> (layer number, output shape 'CxHxW', own parameters), worked out by hand."""
    rows, c, size, number = {}, 3, 32, 0
    for i, kind in enumerate(SPEC):
        params = 0
        if kind.startswith("conv"):
            number += 1
            k = int(kind[-1])
            out = 10 if number == 9 else width
            params, c = out * c * k * k + out, out
        elif kind == "pool":
            size //= 2
        elif kind == "gap":
            size = 1
        shape = str(c) if kind == "flatten" else f"{c}x{size}x{size}"
        rows[f"features.{i}"] = (str(number) if kind.startswith("conv") else "", shape, params)
    rows["features"] = ("", "10", 0)
    return rows


def test_layers_command_lists_every_module(capsys):
    assert main(["layers", "--width", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    reference = _reference_rows(8)
    listed = {}
    for line in lines[1:-1]:
        parts = line.split()
        name, params = parts[0], int(parts[-1].replace(",", ""))
        number = parts[1] if parts[1].isdigit() else ""
        listed[name] = (number, parts[-2], params)
    assert listed == reference
    assert [ln.split()[0] for ln in lines[1:-1]] == [n for n, _ in AllConvNet(width=8).named_modules() if n]
    total = sum(p for _, _, p in reference.values())
    assert lines[-1] == f"total parameters: {total:,}"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["layers"], "give a RUN_DIR, --model SPEC or --width W"),
        (["layers", "--width", "0"], "width must be a positive integer, got 0"),
    ],
)
def test_layers_command_bad_input(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mindscope: error: ") and message in err and err.count("\n") == 1


def test_a_name_that_exists_means_that_module_in_a_sequential():
    # In a plain nn.Sequential the children are named "0", "1", ...: those names win over layer numbers.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))
    assert resolve_layer(model, "2") == "2"  # the ReLU, not the second convolution
    assert resolve_layer(model, "0") == "0"
    assert resolve_layer(model, "L2") == "3"  # the second parameterised layer, by number
    assert resolve_layer(model, 2) == "3"
    assert resolve_layer(model, "L1", output=False) == "0"


def test_a_module_object_is_accepted_as_a_layer():
    model = AllConvNet(width=4)
    assert resolve_layer(model, model.features[4]) == "features.4"
    assert resolve_layers(model, [model.features[0], "L3"]) == ["features.0", "features.4"]
    with pytest.raises(ValueError, match="not a submodule of AllConvNet"):
        resolve_layer(model, nn.ReLU())
