"""A model that gives NaN once randomised never passes, and the check's own randomisation keeps layers valid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from mindscope.evaluation import evaluate_methods, randomisation_check, randomise_layer, spearman
from mindscope.quadrature import gauss_legendre


class Guard(nn.Module):
    """Scales its input by w while w holds its trained values, and gives NaN once w is changed at all."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, width, dtype=torch.float64))
        self.register_buffer("trained", self.w.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unchanged = torch.isclose(self.w, self.trained, rtol=0, atol=1e-12)
        return x * torch.where(unchanged, self.w, torch.full_like(self.w, float("nan")))


class KerasNorm(nn.Module):
    """A batch normalisation stored as Keras stores it: statistics as non-trainable parameters."""

    def __init__(self, width: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.gamma = nn.Parameter(1 + 0.2 * torch.randn(width, generator=g, dtype=torch.float64))
        self.beta = nn.Parameter(0.2 * torch.randn(width, generator=g, dtype=torch.float64))
        # trained variances spread from nearly 0 to 4: redrawn from N(mean, std), many would be negative
        variance = torch.linspace(1e-3, 4.0, width, dtype=torch.float64)
        self.moving_variance = nn.Parameter(variance, requires_grad=False)
        self.moving_mean = nn.Parameter(torch.linspace(-1, 1, width, dtype=torch.float64), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.moving_mean) / torch.sqrt(self.moving_variance + 1e-3) * self.gamma + self.beta


def rows_net(middle: nn.Module, width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, width), middle, nn.Tanh(), nn.Linear(width, 3)).double()


def ig(model: nn.Module, x: torch.Tensor, targets: torch.Tensor):
    from mindscope.attribution import integrated_gradients

    return integrated_gradients(model, x, targets, rule=gauss_legendre(4))


def x_rows() -> torch.Tensor:
    return torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_nan_after_randomising_a_layer_fails_and_names_the_layer() -> None:
    model = rows_net(Guard(16))
    result = randomisation_check(model, x_rows(), None, ig)
    assert result.layers == ("3", "1", "0")  # top-down: the head, the guard, the first layer
    assert result.failure == "failed: model output is NaN after randomising 1"
    assert not result.passed and result.verdict == result.failure
    assert np.isfinite(result.spearman_abs[:2]).all()  # untouched, then the head randomised
    assert np.isnan(result.spearman_abs[2:]).all() and np.isnan(result.spearman_signed[2:]).all()
    assert np.isnan(result.final_abs) and np.isnan(result.final_abs_all)
    table = evaluate_methods(model, x_rows(), None, None, {"ig": ig}, steps=2)
    summary = table.rows[0].summary()
    assert summary["randomisation_passed"] == 0.0 and np.isnan(summary["randomised_spearman_abs"])


def test_nan_maps_of_the_untouched_model_fail_too() -> None:
    model = rows_net(nn.Identity())

    def nan_maps(m, x, t):
        return torch.full_like(x, float("nan"))

    result = randomisation_check(model, x_rows(), None, nan_maps)
    assert result.failure == "failed: the method's maps hold NaN on the model as given"
    assert not result.passed and np.isnan(result.spearman_abs).all()


def test_a_normalisation_keeps_its_statistics_and_stays_valid() -> None:
    norm = KerasNorm(16)
    before = {name: p.detach().clone() for name, p in norm.named_parameters()}
    randomise_layer(norm, torch.Generator().manual_seed(0))
    assert torch.equal(norm.moving_variance, before["moving_variance"])  # kept: still > 0
    assert torch.equal(norm.moving_mean, before["moving_mean"])
    assert not torch.equal(norm.gamma, before["gamma"]) and not torch.equal(norm.beta, before["beta"])
    # The naive redraw the check used to do makes this variance negative, and the layer NaN:
    redrawn = torch.randn(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    naive = redrawn * before["moving_variance"].std() + before["moving_variance"].mean()
    assert (naive < 0).any()
    torch_norm = nn.BatchNorm1d(4).double()
    torch_norm.running_var.uniform_(0.5, 2.0)
    kept = torch_norm.running_var.clone()
    randomise_layer(torch_norm, torch.Generator().manual_seed(0))
    assert torch.equal(torch_norm.running_var, kept)  # a buffer: never redrawn

    model = rows_net(KerasNorm(16))
    result = randomisation_check(model, x_rows(), None, ig)
    assert result.failure is None and np.isfinite(result.spearman_abs).all()
    assert result.verdict in ("pass", "FAIL") and result.passed == (result.final_abs < result.threshold)


def test_spearman_of_an_example_holding_nan_is_nan_as_scipy_says() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(3, 10, generator=g, dtype=torch.float64)
    b = torch.randn(3, 10, generator=g, dtype=torch.float64)
    b[1, 4] = float("nan")
    a[2, 0] = float("inf")
    got = spearman(a, b).numpy()
    assert np.isnan(got[1]) and np.isnan(got[2])
    assert got[0] == pytest.approx(stats.spearmanr(a[0].numpy(), b[0].numpy()).statistic, abs=1e-12)
    assert np.isnan(stats.spearmanr(a[1].numpy(), b[1].numpy()).statistic)


def test_the_figure_says_the_check_failed() -> None:
    from mindscope.render.evaluation import randomisation_figure

    result = randomisation_check(rows_net(Guard(16)), x_rows(), None, ig)
    fig = randomisation_figure({"ig": result})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "ig: failed: model output is NaN after randomising 1" in labels
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("ig")]
    np.testing.assert_allclose(line.get_ydata()[:2], result.spearman_abs[:2].mean(1))
    assert np.isnan(line.get_ydata()[2:]).all()
