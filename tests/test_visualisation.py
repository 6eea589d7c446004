"""Feature visualisation on layers built to detect one colour or one orientation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from mindscope.visualisation import _adam_step, feature_visualisation

pytestmark = pytest.mark.usefixtures("one_thread")

SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])  # responds to vertical edges


def colour_net() -> nn.Module:
    """Channel 0 = red - green, channel 1 = blue - red, per pixel."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0], conv.weight[0, 1] = 1.0, -1.0
        conv.weight[1, 2], conv.weight[1, 0] = 1.0, -1.0
    return nn.Sequential(conv)


def edge_net() -> nn.Module:
    """Channel 0 fires on vertical edges, channel 1 on horizontal ones (grey level, rectified)."""
    conv = nn.Conv2d(3, 2, 3, bias=False)
    with torch.no_grad():
        conv.weight[0] = SOBEL / 3
        conv.weight[1] = SOBEL.T / 3
    return nn.Sequential(conv, nn.ReLU())


def channel_means(model: nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
    return model[: layer + 1](x).mean(dim=(2, 3))  # (N, C)


def test_a_colour_detector_gets_its_colour_and_beats_every_random_image() -> None:
    model = colour_net()
    result = feature_visualisation(model, "0", [0, 1], steps=160, size=16)
    mean = result.images.mean(dim=(2, 3))  # (K, 3) mean R, G, B
    assert mean[0, 0] - mean[0, 1] > 0.3  # red over green
    assert mean[1, 2] - mean[1, 0] > 0.3  # blue over red
    assert result.images.min() >= 0 and result.images.max() <= 1
    data = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    reached = channel_means(model, 0, data).amax(dim=0)  # the best random image per channel
    assert (result.activations > reached).all()
    assert_close(result.activations, channel_means(model, 0, result.images).diagonal())


def dominant_orientation(image: torch.Tensor) -> float:
    """Fraction of the grey image's spectral energy at |fx| > |fy| (vertical stripes) over |fy| > |fx|."""
    grey = image.mean(0)
    power = torch.fft.fft2(grey - grey.mean()).abs() ** 2
    fy = torch.fft.fftfreq(grey.shape[0]).abs()[:, None]
    fx = torch.fft.fftfreq(grey.shape[1]).abs()[None, :]
    return float(power[(fx > fy).expand_as(power)].sum() / power[(fy > fx).expand_as(power)].sum())


def test_an_edge_detector_gets_stripes_of_its_orientation() -> None:
    model = edge_net()
    result = feature_visualisation(model, "1", [0, 1], steps=96, size=24)
    assert dominant_orientation(result.images[0]) > 2.0  # vertical edges: energy along fx
    assert dominant_orientation(result.images[1]) < 0.5  # horizontal edges: along fy
    data = torch.rand(64, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    assert (result.activations > channel_means(model, 1, data).amax(dim=0)).all()


def test_the_same_seed_gives_the_same_images_and_another_seed_others() -> None:
    model = edge_net()
    first, again = (feature_visualisation(model, "1", [1], steps=5, size=12, seed=3) for _ in range(2))
    other = feature_visualisation(model, "1", [1], steps=5, size=12, seed=4)
    assert torch.equal(first.images, again.images) and torch.equal(first.history, again.history)
    assert not torch.equal(first.images, other.images)
    assert first.history.shape == (5, 1) and first.channels == (1,)


def test_normalise_maps_pixels_to_the_models_input() -> None:
    model = colour_net()

    def normalise(pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - 0.5) / 0.25

    result = feature_visualisation(model, model[0], 0, steps=3, size=8, normalise=normalise)
    assert result.layer == "0"
    assert_close(result.activations, channel_means(model, 0, normalise(result.images))[:, 0])


def test_bad_channels_and_options_are_refused() -> None:
    model = colour_net()
    with pytest.raises(ValueError, match=r"channel 2 is not in layer '0', which has channels 0..1"):
        feature_visualisation(model, "0", [0, 2], steps=1, size=8)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        feature_visualisation(model, "0", 0, steps=0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        feature_visualisation(model, "0", 0, lr=-1)
    with pytest.raises(TypeError, match="channels must be an int or a non-empty sequence of ints"):
        feature_visualisation(model, "0", [], steps=1)


def test_the_written_out_adam_step_equals_torch_optim_adam() -> None:
    start = torch.randn(7, dtype=torch.float64)
    ours, theirs = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([theirs], lr=0.05)
    moments = (torch.zeros_like(ours), torch.zeros_like(ours))
    for step in range(1, 6):
        (grad,) = torch.autograd.grad((ours**3).sum(), ours)
        _adam_step(ours, grad, moments, step, 0.05)
        optimiser.zero_grad()
        (theirs**3).sum().backward()
        optimiser.step()
    assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
