"""Layers that keep their channels last, (N, h, w, C) as Keras's do: Grad-CAM, layer attribution, feature visualisation.

A channels-last twin of a PyTorch network computes the same function with the same
weights, its layers' outputs permuted. Read with `channel_axis=-1` it must give what the
NCHW network gives; the references are naive re-implementations over the true channel
axis, closed forms, and the NCHW network. The shapes are chosen so that reading the
wrong axis as channels gives other shapes (6 x 10 maps of 4 and 5 channels).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as functional
from torch import nn
from torch.testing import assert_close

from mindscope import grad_cam
from mindscope.attribution import (
    class_logit,
    conductance,
    last_spatial_layer,
    layer_integrated_gradients,
    neuron_integrated_gradients,
)
from mindscope.quadrature import gauss_legendre
from mindscope.visualisation import feature_visualisation

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 6, 10


class ConvLast(nn.Module):
    """A convolution on channels-last maps (N, H, W, C), as a Keras Conv2D computes it, with conv's weights."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias, self.padding = conv.weight, conv.bias, conv.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = functional.conv2d(x.permute(0, 3, 1, 2), self.weight, self.bias, padding=self.padding)
        return out.permute(0, 2, 3, 1)


class MeanLast(nn.Module):
    """Global average pooling of channels-last maps, keeping the (1, 1) positions: (N, 1, 1, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2), keepdim=True)


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def twins() -> tuple[nn.Sequential, nn.Sequential]:
    """(an NCHW network, the same network channels last throughout: it takes (N, H, W, 3))."""
    torch.manual_seed(0)
    first = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ELU(),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    ).double()
    last = nn.Sequential(ConvLast(first[0]), nn.ELU(), ConvLast(first[2]), nn.ELU(), MeanLast(), nn.Flatten(), first[6])
    return first.eval(), last.eval()


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, H, W, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).contiguous()


def naive_grad_cam(model: nn.Sequential, x: torch.Tensor, cut: int, targets: torch.Tensor, axis: int) -> torch.Tensor:
    """Grad-CAM one example at a time with channels at `axis`: split the Sequential at the layer, float64 autograd."""
    maps = []
    spatial = tuple(d for d in (1, 2, 3) if d != axis % 4)
    for i in range(x.shape[0]):
        a = model[: cut + 1](x[i : i + 1]).detach().requires_grad_(True)
        score = model[cut + 1 :](a)[0, targets[i]]
        (g,) = torch.autograd.grad(score, a)
        w = g.mean(dim=spatial, keepdim=True)  # one weight per channel, broadcast over the positions
        maps.append(torch.relu((w * a.detach()).sum(dim=axis))[0])  # (h, w)
    return torch.stack(maps)


@pytest.mark.parametrize("cut", [1, 2])
def test_grad_cam_of_channels_last_layers_equals_a_naive_version_over_the_last_axis(cut: int) -> None:
    first, last = twins()
    x = images()
    targets = torch.tensor([0, 2, 1])
    expected = naive_grad_cam(last, nhwc(x), cut, targets, axis=-1)  # (3, H, W)
    assert_close(expected, naive_grad_cam(first, x, cut, targets, axis=1), rtol=1e-10, atol=1e-12)
    upsampled = functional.interpolate(expected[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    # NHWC x: the layers' channel axis follows x's layout unless told
    result = grad_cam(last, nhwc(x), targets, layer=str(cut), layout="NHWC", max_batch=2)
    assert_close(result.layer_maps, expected, rtol=1e-10, atol=1e-12)
    assert_close(result.maps, upsampled, rtol=1e-10, atol=1e-12)
    assert result.weights.shape == (3, 4 if cut == 1 else 5)
    # NCHW x permuted in front of channels-last layers, as mindscope.subject adapts a Keras model
    adapted = nn.Sequential(Permute(0, 2, 3, 1), *last)
    result = grad_cam(adapted, x, targets, layer=str(cut + 1), channel_axis=-1)
    assert_close(result.layer_maps, expected, rtol=1e-10, atol=1e-12)
    assert_close(result.maps, upsampled, rtol=1e-10, atol=1e-12)


def test_an_nhwc_wrapper_of_an_nchw_model_gives_the_nchw_maps() -> None:
    first, _ = twins()
    wrapper = nn.Sequential(Permute(0, 3, 1, 2), *first)  # takes (N, H, W, C); its layers are NCHW
    x = images()
    targets = torch.tensor([1, 0, 2])
    expected = naive_grad_cam(first, x, 3, targets, axis=1)
    result = grad_cam(wrapper, nhwc(x), targets, layer="4", layout="NHWC", channel_axis=1)
    assert_close(result.layer_maps, expected, rtol=1e-10, atol=1e-12)
    upsampled = functional.interpolate(expected[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    assert_close(result.maps, upsampled, rtol=1e-10, atol=1e-12)


def test_the_default_layer_reads_positions_on_the_true_axes() -> None:
    _, last = twins()
    x = nhwc(images(1))
    # MeanLast's (N, 1, 1, 5) has one position; read channels first it would be 5 positions of 1 channel
    assert last_spatial_layer(last, x, channel_axis=-1) == "3"
    assert grad_cam(last, x, layout="NHWC").layer == "3"


def test_channels_last_input_needs_its_layout_and_a_bad_axis_is_refused() -> None:
    _, last = twins()
    x = torch.randn(2, 12, 20, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x has shape \(2, 12, 20, 3\): channels last .* Pass layout='NHWC'"):
        grad_cam(last, x)
    with pytest.raises(ValueError, match="Grad-CAM maps images: give layout='NCHW' or 'NHWC'"):
        grad_cam(last, x.flatten(1), layout="NF")
    with pytest.raises(ValueError, match="channel_axis 4 is not a channel axis of layer '1' output"):
        grad_cam(last, x, layer="1", layout="NHWC", channel_axis=4)
    with pytest.raises(TypeError, match="channel_axis must be an int"):
        grad_cam(last, x, layer="1", layout="NHWC", channel_axis="last")


def linear_after_last() -> nn.Sequential:
    """Channels last and nonlinear up to layer '3', then linear: F = w . A + b with A flattened as (h, w, C)."""
    torch.manual_seed(2)
    conv1, conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
    return nn.Sequential(
        ConvLast(conv1), nn.ELU(), ConvLast(conv2), nn.Tanh(), nn.Flatten(), nn.Linear(H * W * 5, 3)
    ).double()


@pytest.mark.parametrize("method", [layer_integrated_gradients, conductance])
def test_layer_attribution_is_the_closed_form_with_channels_at_dim_1(method) -> None:
    model = linear_after_last().eval()
    x, base = nhwc(images()), 0.3 * nhwc(images())
    targets = torch.tensor([0, 2, 1])
    a, a0 = model[:4](x), model[:4](base)  # (3, H, W, 5)
    w = model[5].weight[targets].view(3, H, W, 5)
    expected = ((a - a0) * w).detach().permute(0, 3, 1, 2)  # (3, 5, H, W)
    options = {"rule": gauss_legendre(1)} if method is layer_integrated_gradients else {"tolerance": 1e-10}
    result = method(model, x, "3", targets, baseline=base, output=class_logit, channel_axis=-1, **options)
    assert_close(result.attributions, expected, rtol=1e-8, atol=1e-12)
    assert_close(result.channel_totals, expected.flatten(2).sum(2), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("method", [layer_integrated_gradients, conductance])
def test_layer_attribution_of_the_twins_agrees(method) -> None:
    first, last = twins()
    x = images()
    ours = method(last, nhwc(x), "2", 0, rule=gauss_legendre(16), channel_axis=-1)
    reference = method(first, x, "2", 0, rule=gauss_legendre(16))
    assert ours.attributions.shape == (3, 5, H, W)
    assert_close(ours.attributions, reference.attributions, rtol=1e-9, atol=1e-12)


def test_neuron_integrated_gradients_take_the_channel_on_the_true_axis() -> None:
    first, last = twins()
    x = images()
    for neuron in (3, (2, 4, 7)):  # a channel's mean; one unit as (channel, row, column)
        ours = neuron_integrated_gradients(last, nhwc(x), "1", neuron, rule=gauss_legendre(8), channel_axis=-1)
        reference = neuron_integrated_gradients(first, x, "1", neuron, rule=gauss_legendre(8))
        assert_close(ours.attributions, nhwc(reference.attributions), rtol=1e-9, atol=1e-12)
        assert_close(ours.output, reference.output, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"neuron 4 is outside layer '1', whose output per example has shape \(4, 6"):
        neuron_integrated_gradients(last, nhwc(x), "1", 4, channel_axis=-1)


def test_feature_visualisation_counts_and_drives_the_true_channels() -> None:
    first, last = twins()
    adapted = nn.Sequential(Permute(0, 2, 3, 1), *last)  # takes (N, C, H, W), as feature visualisation feeds it
    with pytest.raises(ValueError, match=r"channel 4 is not in layer '1', which has channels 0..3"):
        feature_visualisation(adapted, "1", [0, 4], steps=1, size=(H, W), channel_axis=-1)
    ours = feature_visualisation(adapted, "1", [1, 3], steps=3, size=(H, W), channel_axis=-1)
    reference = feature_visualisation(first, "0", [1, 3], steps=3, size=(H, W))
    assert_close(ours.images, reference.images, rtol=1e-9, atol=1e-12)
    means = first[0](reference.images).mean(dim=(2, 3))[torch.arange(2), torch.tensor([1, 3])]
    assert_close(ours.activations, means.detach(), rtol=1e-9, atol=1e-12)
