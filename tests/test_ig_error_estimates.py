"""Tolerance-mode integrated gradients: the reported errors bound the true ones.

The reference is a float64 Gauss-Legendre rule with 1024 nodes (or the closed form),
never the code's own earlier output. Networks: smooth (tanh), kinked (ELU: the gradient
has kinks), piecewise constant gradients (ReLU with F = logit), and one trained briefly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mindscope.attribution import class_logit, class_probability, integrated_gradients
from mindscope.quadrature import adaptive_simpson, gauss_legendre


def conv_net(activation: type[nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        activation(),
        nn.Conv2d(6, 6, 3, padding=1),
        activation(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 4, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).double()


def trained_net() -> tuple[nn.Module, torch.Tensor]:
    """A ReLU net fitted for a few steps to separate bright from dark patches (sharpens its outputs)."""
    model = conv_net(nn.ReLU, 3)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(64, 2, 6, 6, generator=generator, dtype=torch.float64)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model, x[:8]


def true_errors(model: nn.Module, x: torch.Tensor, result, output) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (relative map error, relative completeness error) against Gauss-Legendre 1024.

    Where the gradient jumps (ReLU), Gauss-Legendre converges only as 1/n: the map error is
    then widened by the reference's own (its distance from Gauss-Legendre 512), in its favour.
    """
    reference = integrated_gradients(model, x, result.targets, rule=gauss_legendre(1024), output=output)
    check = integrated_gradients(model, x, result.targets, rule=gauss_legendre(512), output=output)
    ref = reference.attributions.flatten(1)
    own = (check.attributions.flatten(1) - ref).norm(dim=1) / ref.norm(dim=1)
    map_error = ((result.attributions.flatten(1) - ref).norm(dim=1) / ref.norm(dim=1) - own).clamp_min(0)
    change = reference.output - reference.baseline_output
    completeness = (result.attributions.flatten(1).sum(1) - change).abs() / change.abs()
    return map_error, completeness


CASES = {
    "tanh, probability": (lambda: conv_net(nn.Tanh, 0), class_probability),
    "ELU, probability": (lambda: conv_net(nn.ELU, 1), class_probability),
    "ELU, logit": (lambda: conv_net(nn.ELU, 1), class_logit),
    "ReLU, logit": (lambda: conv_net(nn.ReLU, 2), class_logit),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tolerance", [0.01, 0.001])
def test_estimated_map_error_bounds_the_true_error_and_the_tolerance_is_met(case: str, tolerance: float) -> None:
    make, output = CASES[case]
    model = make()
    x = 2 * torch.randn(8, 2, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    result = integrated_gradients(model, x, tolerance=tolerance, output=output, max_steps=4000)
    map_error, completeness = true_errors(model, x, result, output)
    well = ~result.ill_conditioned
    assert well.sum() >= 6
    assert result.converged[well].all()
    assert (map_error[well] <= result.map_error[well]).all(), (map_error, result.map_error)
    assert (map_error[well] < tolerance).all() and (completeness[well] < tolerance).all()
    torch.testing.assert_close(result.relative_completeness_error[well], completeness[well], rtol=1e-6, atol=1e-12)


@pytest.mark.slow
def test_on_a_trained_net_the_estimate_bounds_the_truth_on_at_least_95_percent() -> None:
    model, x = trained_net()
    result = integrated_gradients(model, x, tolerance=0.01, output=class_probability, max_steps=4000)
    map_error, _ = true_errors(model, x, result, class_probability)
    well = ~result.ill_conditioned
    bounded = (map_error[well] <= result.map_error[well]).double().mean()
    assert bounded >= 0.95 and (map_error[well] < 0.01).all()


def test_a_step_that_runs_out_of_budget_is_not_reported_converged() -> None:
    model = conv_net(nn.ReLU, 2)
    x = 2 * torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    result = integrated_gradients(model, x, tolerance=1e-9, output=class_logit, max_steps=21)
    assert (result.steps <= 21).all() and not result.converged.any()
    assert ((result.map_error >= 1e-9) | (result.relative_completeness_error >= 1e-9)).all()


def test_tolerance_results_do_not_depend_on_max_batch() -> None:
    model = conv_net(nn.ELU, 1)
    x = 2 * torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    one = integrated_gradients(model, x, tolerance=0.003, max_batch=3)
    other = integrated_gradients(model, x, tolerance=0.003, max_batch=500)
    assert one.steps.tolist() == other.steps.tolist()
    torch.testing.assert_close(one.attributions, other.attributions, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(one.map_error, other.map_error, rtol=1e-8, atol=1e-14)


def simpson_on(functions, exact: torch.Tensor) -> tuple[float, float, int]:
    """Integrate closed-form functions of alpha with adaptive Simpson; return (true error, estimate, steps)."""

    def evaluate(example: np.ndarray, alpha: np.ndarray) -> torch.Tensor:
        a = torch.as_tensor(alpha, dtype=torch.float64)
        return torch.stack([f(a) for f in functions], dim=1)  # (J, F)

    weights = torch.ones(1, len(functions), dtype=torch.float64)
    total = [float(exact.sum())]
    integral, steps, estimate = adaptive_simpson(evaluate, weights, total, tolerance=1e-3, max_steps=400, scales=total)
    return float((integral[0] - exact).norm() / exact.norm()), float(estimate[0]), int(steps[0])


@pytest.mark.parametrize("kink", [0.1, 0.37, 0.8])
def test_on_a_closed_form_kink_and_a_polynomial_the_estimate_bounds_the_error(kink: float) -> None:
    # |a - kink| has a kink (ELU-like integrands); a^3 Simpson integrates exactly.
    functions = [lambda a: (a - kink).abs(), lambda a: a**3]
    exact = torch.tensor([(kink**2 + (1 - kink) ** 2) / 2, 0.25], dtype=torch.float64)
    error, estimate, steps = simpson_on(functions, exact)
    assert error <= estimate < 1e-3 and steps < 400


def test_a_kink_anywhere_is_bounded_and_the_estimate_is_a_few_times_the_error() -> None:
    # One kink |a - k| at 100 random positions (the bisection grid meets it everywhere from exactly
    # to not at all): the full change S2 - S1 bounds the error of S2 at every one, and is not
    # wildly pessimistic (median 2.5-2.9x measured at tolerances 1e-2 to 1e-4).
    ratios = []
    for kink in np.random.default_rng(1).uniform(0.0, 1.0, 100):
        functions = [lambda a, k=kink: (a - k).abs(), lambda a: a**3]
        exact = torch.tensor([(kink**2 + (1 - kink) ** 2) / 2, 0.25], dtype=torch.float64)
        error, estimate, _ = simpson_on(functions, exact)
        ratios.append(estimate / error)
    assert min(ratios) >= 1.0 and 1.5 <= float(np.median(ratios)) <= 4.0


@pytest.mark.xfail(strict=True, reason="known defect: across a jump in f (ReLU gradients) |S2 - S1| is no bound")
@pytest.mark.parametrize("kink", [0.1, 0.8])
def test_on_a_closed_form_jump_the_estimate_bounds_the_error(kink: float) -> None:
    functions = [lambda a: (a - kink).abs(), lambda a: (a > kink).double()]
    exact = torch.tensor([(kink**2 + (1 - kink) ** 2) / 2, 1 - kink], dtype=torch.float64)
    error, estimate, steps = simpson_on(functions, exact)
    assert error <= estimate < 1e-3 and steps < 400
