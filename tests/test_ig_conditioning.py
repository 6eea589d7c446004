"""Integrated gradients when there is nothing to explain, and whether a tolerance was reached.

References are forward passes and naive quadrature sums in float64, never the code's own
earlier output.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.testing import assert_close

from mindscope.attribution import (
    ILL_CONDITIONING_FLOOR,
    class_logit,
    class_probability,
    completeness_scale,
    integrated_gradients,
)
from mindscope.quadrature import composite, gauss_legendre
from test_attribution import elu_net  # one small ELU net for both files


def scores(model: nn.Module, z: torch.Tensor, targets: torch.Tensor, output=class_probability) -> torch.Tensor:
    with torch.no_grad():
        return output(model(z))[torch.arange(z.shape[0]), targets]


def naive_ig(model: nn.Module, x, base, targets, rule, output=class_probability) -> torch.Tensor:
    total = torch.zeros_like(x)
    for a, w in zip(rule.nodes, rule.weights):
        z = (base + a * (x - base)).detach().requires_grad_(True)
        total += w * torch.autograd.grad(output(model(z))[torch.arange(x.shape[0]), targets].sum(), z)[0]
    return total * (x - base)


def reference_map(model, x, base, targets, output=class_probability) -> torch.Tensor:
    return naive_ig(model, x, base, targets, composite(gauss_legendre(8), np.linspace(0, 1, 65)), output)


def test_completeness_scale_is_the_stated_rule() -> None:
    assert ILL_CONDITIONING_FLOOR == 0.01
    f = torch.tensor([1.0, 0.5, 0.0, 2.0, -4.0], dtype=torch.float64)
    f0 = torch.tensor([0.9995, 0.1, 0.0, -3.0, -3.98], dtype=torch.float64)
    scale, ill = completeness_scale(f, f0)
    # |dF| = 5e-4, 0.4, 0, 5, 0.02; 1% of max |F| = 0.01, 0.005, 0, 0.03, 0.04
    assert_close(scale, torch.tensor([0.01, 0.4, 0.0, 5.0, 0.04], dtype=torch.float64))
    assert ill.tolist() == [True, False, True, False, True]


def test_fixed_rule_flags_ill_conditioned_examples_and_judges_them_against_the_floor() -> None:
    torch.manual_seed(2)
    model, x = elu_net(), torch.randn(4, 3, 6, 6, dtype=torch.float64)
    base = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    base[0] = x[0] + 1e-4 * torch.randn(3, 6, 6, dtype=torch.float64)  # the baseline scores what x scores
    base[2] = x[2]  # no path at all: F(x) = F(x') exactly
    rule = gauss_legendre(3)
    result = integrated_gradients(model, x, baseline=base, rule=rule)
    targets = result.targets
    f, f0 = scores(model, x, targets), scores(model, base, targets)
    delta, top = (f - f0).abs(), torch.maximum(f.abs(), f0.abs())
    ill = delta <= 0.01 * top
    assert result.ill_conditioned.tolist() == ill.tolist() == [True, False, True, False]
    naive = naive_ig(model, x, base, targets, rule)
    assert_close(result.attributions, naive, rtol=1e-12, atol=1e-15)
    error = (naive.flatten(1).sum(1) - (f - f0)).abs()
    expected = error / torch.where(ill, 0.01 * top, delta)
    expected[2] = 0.0  # 0 / 0: no path, no error
    assert_close(result.relative_completeness_error, expected, rtol=1e-6, atol=1e-15)
    assert result.converged is None and result.map_error is None  # fixed rules promise nothing


def saturated_net() -> nn.Module:
    """A net whose class 0 scores p ~ 1 everywhere near the origin: x and the baseline alike."""
    model = elu_net()
    with torch.no_grad():
        model[5].bias[0] += 25.0
    return model


def test_a_saturated_example_is_ill_conditioned_and_still_converges() -> None:
    torch.manual_seed(3)
    model, x = saturated_net(), torch.randn(3, 3, 8, 8, dtype=torch.float64)
    tolerance = 0.01
    result = integrated_gradients(model, x, 0, tolerance=tolerance, max_steps=2048)
    zero = torch.zeros(3, dtype=torch.int64)
    f, f0 = scores(model, x, zero), scores(model, torch.zeros_like(x), zero)
    assert ((f - f0).abs() < 1e-9).all() and (f > 0.99).all()  # nothing to explain
    assert result.ill_conditioned.all()
    naive_error = (result.attributions.flatten(1).sum(1) - (f - f0)).abs()
    assert (naive_error < tolerance * 0.01 * f).all()
    assert_close(result.relative_completeness_error, naive_error / (0.01 * f), rtol=1e-6, atol=1e-15)
    assert result.converged.all() == bool((result.map_error < tolerance).all())


class Bump(nn.Module):
    """Two classes; logit 0 = 3 - 4 (mean(z) - 0.3)^2, a bump along any path across mean 0.3."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = z.mean((1, 2, 3))
        logit = 3.0 - 4.0 * (s - 0.3) ** 2
        return torch.stack([logit, torch.zeros_like(logit)], 1)


def test_tolerance_mode_stops_an_ill_conditioned_example_once_the_floor_is_met() -> None:
    torch.manual_seed(3)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    x = x - x.mean((1, 2, 3), keepdim=True) + 1.3  # mean 1.3
    base = 0.6 - x  # mean -0.7: F(x') = F(x) = sigmoid(-1), p rises to 0.95 on the way
    model, tolerance = Bump(), 0.01
    result = integrated_gradients(model, x, 0, baseline=base, tolerance=tolerance, max_steps=2048)
    zero = torch.zeros(2, dtype=torch.int64)
    f, f0 = scores(model, x, zero), scores(model, base, zero)
    assert result.ill_conditioned.tolist() == [True, True]
    # Simpson's two starting panels, each bisected once for a map error estimate, and no further:
    # the completeness error is already far below 1% of 1% of F. Judged against |dF| (~1e-16,
    # rounding), the whole step budget would go on float rounding.
    assert result.steps.tolist() == [9, 9]
    assert ((result.attributions.flatten(1).sum(1) - (f - f0)).abs() < tolerance * 0.01 * f).all()
    # The map explains a change of F that is not there: it is not claimed to have converged.
    assert result.converged.tolist() == (result.map_error < tolerance).tolist()


def test_tolerance_mode_refines_well_conditioned_examples_as_before_in_the_same_batch() -> None:
    torch.manual_seed(4)
    model, x = elu_net(), 3 * torch.randn(4, 3, 8, 8, dtype=torch.float64)
    base = torch.zeros_like(x)
    base[1] = x[1] * (1 - 1e-6)  # this one has nothing to explain
    tolerance = 1e-3
    result = integrated_gradients(model, x, baseline=base, tolerance=tolerance, max_steps=4000)
    targets = result.targets
    f, f0 = scores(model, x, targets), scores(model, base, targets)
    ill = (f - f0).abs() <= 0.01 * torch.maximum(f.abs(), f0.abs())
    assert result.ill_conditioned.tolist() == ill.tolist() and ill[1] and not ill[[0, 2, 3]].any()
    reference = reference_map(model, x, base, targets)
    true_error = (result.attributions - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)
    well = ~ill
    assert (true_error[well] < tolerance).all()
    assert ((result.attributions.flatten(1).sum(1) - (f - f0)).abs()[well] < tolerance * (f - f0).abs()[well]).all()
    assert result.converged[well].all()


def test_converged_is_true_for_a_smooth_case_and_false_when_max_steps_runs_out() -> None:
    torch.manual_seed(5)
    model, x = elu_net(), 3 * torch.randn(3, 3, 8, 8, dtype=torch.float64)
    targets = torch.ones(3, dtype=torch.int64)
    f, f0 = scores(model, x, targets, class_logit), scores(model, torch.zeros_like(x), targets, class_logit)
    assert ((f - f0).abs() > 0.01 * torch.maximum(f.abs(), f0.abs())).all()  # all well-conditioned
    reference = reference_map(model, x, torch.zeros_like(x), targets, class_logit)

    def true_error(result) -> torch.Tensor:
        return (result.attributions - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)

    done = integrated_gradients(model, x, targets, tolerance=1e-3, output=class_logit, max_steps=4000)
    assert done.converged.dtype == torch.bool and done.converged.tolist() == [True] * 3
    assert (true_error(done) < 1e-3).all() and (done.steps < 4000).all()

    short = integrated_gradients(model, x, targets, tolerance=1e-7, output=class_logit, max_steps=9)
    assert short.converged.tolist() == [False] * 3 and (short.steps <= 9).all()
    assert (true_error(short) > 1e-7).all()  # it really is further from the answer than asked
    assert not short.ill_conditioned.any()
