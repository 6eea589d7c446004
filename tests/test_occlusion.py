"""Occlusion against a naive loop over windows, and a closed form on a linear model."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from mindscope.attribution import class_logit, class_probability, occlusion
from mindscope.attribution.occlusion import window_starts

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_occlusion(model, x, targets, window, stride, baseline, output=class_probability) -> torch.Tensor:
    """One window and one example at a time: the definition, spelt out."""
    shape = x.shape[1:]
    total, count = torch.zeros_like(x), torch.zeros(shape, dtype=x.dtype)
    starts = []
    for size, w, s in zip(shape, window, stride):
        along = list(range(0, size - w + 1, s))
        if along[-1] + w < size:  # one more window, flush with the end
            along.append(size - w)
        starts.append(along)
    with torch.no_grad():
        for corner in itertools.product(*starts):
            where = tuple(slice(c, c + w) for c, w in zip(corner, window))
            count[where] += 1
            for i in range(x.shape[0]):
                copy = x[i].clone()
                copy[where] = baseline[i][where]
                before = output(model(x[i : i + 1]))[0, targets[i]]
                after = output(model(copy[None]))[0, targets[i]]
                total[i][where] += before - after
    return total / count


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    ).double()


@pytest.mark.parametrize(
    "window, stride, full_window, full_stride",
    [
        ((4, 4), (4, 4), (3, 4, 4), (1, 4, 4)),
        ((5, 5), (3, 3), (3, 5, 5), (1, 3, 3)),
        ((2, 3, 3), None, (2, 3, 3), (2, 3, 3)),
    ],
)
def test_occlusion_equals_a_naive_loop_over_windows(window, stride, full_window, full_stride) -> None:
    model = cnn().eval()
    x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
    base = 0.1 * torch.randn_like(x)
    targets = torch.tensor([0, 2, 1])
    result = occlusion(model, x, targets, window=window, stride=stride, baseline=base)
    expected = naive_occlusion(model, x, targets, full_window, full_stride, base)
    assert_close(result.attributions, expected, rtol=1e-10, atol=1e-14)
    windows = 1
    for size, w, s in zip(x.shape[1:], full_window, full_stride):
        windows *= len(window_starts(size, w, s))
    assert result.steps.tolist() == [windows + 1] * 3


def test_the_result_does_not_depend_on_the_batch_size() -> None:
    model = cnn().eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    results = [occlusion(model, x, window=(3, 3), stride=(2, 2), batch_size=b).attributions for b in (1, 5, 64, 1000)]
    for other in results[1:]:
        assert_close(other, results[0], rtol=1e-12, atol=1e-15)


def test_on_tabular_data_single_features_give_the_linear_closed_form() -> None:
    model = nn.Linear(6, 3).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    base = torch.randn(6, dtype=torch.float64)
    result = occlusion(model, x, 1, window=1, baseline=base, output=class_logit)
    # F(x) - F(x with feature i set to b_i) = w_1i (x_i - b_i)
    assert_close(result.attributions, (x - base) * model.weight[1].detach(), rtol=1e-12, atol=1e-14)


def test_sequences_and_callable_baselines() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(7 * 4, 2), nn.Tanh()).double()
    x = torch.randn(2, 7, 4, dtype=torch.float64)
    targets = torch.tensor([1, 0])
    result = occlusion(model, x, targets, window=(3, 4), stride=(2, 4), baseline=lambda v: v.mean(1, keepdim=True))
    base = x.mean(1, keepdim=True).expand_as(x)
    assert_close(result.attributions, naive_occlusion(model, x, targets, (3, 4), (2, 4), base), rtol=1e-10, atol=1e-14)


def test_bad_windows_and_baselines_are_refused() -> None:
    model = cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"window 4 is ambiguous for inputs of shape \(N, 3, 8, 8\)"):
        occlusion(model, x, window=4)
    with pytest.raises(ValueError, match=r"window \(3, 9, 9\) is larger than one example \(3, 8, 8\)"):
        occlusion(model, x, window=(9, 9))
    with pytest.raises(ValueError, match="window must be a tuple of at most 3 sizes"):
        occlusion(model, x, window=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="stride must be a positive integer, got 0"):
        occlusion(model, x, window=(2, 2), stride=(0, 2))
    with pytest.raises(ValueError, match=r"baseline of shape \(5,\) does not broadcast"):
        occlusion(model, x, window=(2, 2), baseline=torch.zeros(5))
    with pytest.raises(ValueError, match=r"x must be a non-empty batch \(N, ...\)"):
        occlusion(model, torch.zeros(8, dtype=torch.float64), window=(2,))
