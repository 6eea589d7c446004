"""Grad-CAM against a network whose answer is known by construction and a naive float64 version."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as functional
from torch import nn
from torch.testing import assert_close

from mindscope import grad_cam
from mindscope.attribution import last_spatial_layer
from test_attribution import elu_net  # one small ELU net for the attribution tests

pytestmark = pytest.mark.usefixtures("one_thread")


def quadrant_net() -> nn.Module:
    """Channel 0 fires on red pixels, channel 1 on green; class 0 is 'red', class 1 is 'green'."""
    conv = nn.Conv2d(3, 2, 3, padding=1)
    head = nn.Linear(2, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0] = 1.0 / 9  # a 3x3 mean of the red channel
        conv.weight[1, 1] = 1.0 / 9
        head.weight.copy_(torch.eye(2))
        head.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).double()


def planted(quadrants: list[int], size: int = 16) -> torch.Tensor:
    """Images with a red square inside one quadrant each (0 top-left, 1 top-right, 2 bottom-left, 3 ...)."""
    x = torch.zeros(len(quadrants), 3, size, size, dtype=torch.float64)
    half = size // 2
    for i, q in enumerate(quadrants):
        top, left = (q // 2) * half, (q % 2) * half
        x[i, 0, top + 2 : top + half - 2, left + 2 : left + half - 2] = 1.0
    return x


def test_the_map_peaks_on_the_planted_quadrant() -> None:
    quadrants = [0, 1, 2, 3]
    result = grad_cam(quadrant_net(), planted(quadrants), 0)
    half = 8
    for i, q in enumerate(quadrants):
        top, left = (q // 2) * half, (q % 2) * half
        peak = divmod(int(result.maps[i].argmax()), 16)
        assert top <= peak[0] < top + half and left <= peak[1] < left + half, (q, peak)
        inside = result.maps[i, top : top + half, left : left + half].sum() / result.maps[i].sum()
        assert inside > 0.95
    assert result.layer == "1"  # the ReLU: the last module with a spatial output
    assert (result.weights[:, 0] > 0).all() and (result.weights[:, 1] == 0).all()
    assert not result.empty.any()


def test_a_class_without_evidence_gives_an_empty_map_and_says_so() -> None:
    result = grad_cam(quadrant_net(), planted([0, 3]), 1)  # 'green': no green pixel anywhere
    assert result.empty.all()
    assert (result.maps == 0).all()


def naive_grad_cam(model: nn.Sequential, x: torch.Tensor, cut: int, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM one example at a time: split the Sequential at the layer, autograd in float64."""
    maps = []
    for i in range(x.shape[0]):
        a = model[: cut + 1](x[i : i + 1]).detach().requires_grad_(True)  # (1, C, h, w)
        score = model[cut + 1 :](a)[0, targets[i]]
        (g,) = torch.autograd.grad(score, a)
        w = g[0].mean(dim=(1, 2))  # (C,)
        maps.append(torch.relu((w[:, None, None] * a[0].detach()).sum(0)))
    return torch.stack(maps)


@pytest.mark.parametrize("cut", [1, 3, 4])
def test_grad_cam_equals_a_naive_float64_implementation(cut: int) -> None:
    model = elu_net().eval()
    x = torch.randn(5, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3, 1])
    result = grad_cam(model, x, targets, layer=str(cut), max_batch=2)
    expected = naive_grad_cam(model, x, cut, targets)
    assert_close(result.layer_maps, expected, rtol=1e-12, atol=1e-14)
    upsampled = functional.interpolate(expected[:, None], size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    assert_close(result.maps, upsampled, rtol=1e-12, atol=1e-14)
    assert result.targets.tolist() == targets.tolist()
    assert_close(result.output, model(x)[torch.arange(5), targets])


def test_the_default_layer_is_the_last_spatial_one_and_a_module_object_works() -> None:
    model = elu_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert last_spatial_layer(model, x) == "5"  # the 1x1 conv at 4x4; the global pool gives 1x1
    by_name = grad_cam(model, x, layer="3")
    by_module = grad_cam(model, x, layer=model[3])
    assert by_module.layer == "3"
    assert_close(by_name.maps, by_module.maps, rtol=0, atol=0)
    assert grad_cam(model, x).layer == "5"


def test_a_layer_without_a_spatial_map_is_refused() -> None:
    model = elu_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"layer '7' gives output of shape \(2, 5\); Grad-CAM needs a spatial map"):
        grad_cam(model, x, layer="7")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).double()
    with pytest.raises(ValueError, match="no layer of Sequential gives a spatial map"):
        grad_cam(mlp, x)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        grad_cam(model, x, layer="nope")
