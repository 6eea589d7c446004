"""Attributions against references: closed forms, float64 autograd, naive re-implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from mindscope.attribution import (
    Attribution,
    class_logit,
    class_probability,
    gradients,
    integrated_gradients,
    interior_gradients,
    smoothgrad,
)
from mindscope.baselines import black, blurred, dataset_mean, uniform_noise
from mindscope.data import Normalization
from mindscope.quadrature import Quadrature, composite, gauss_legendre, left, midpoint, right, simpson, trapezoid

ALL_RULES = [left(7), right(7), midpoint(7), trapezoid(7), gauss_legendre(7), simpson(3)]


def linear_model(classes: int = 3, shape: tuple[int, ...] = (2, 3, 3)) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), classes)).double()


def elu_net(classes: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ELU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ELU(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, classes, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).double()


def naive_gradient(model: nn.Module, z: torch.Tensor, targets: torch.Tensor, output=class_probability) -> torch.Tensor:
    z = z.detach().clone().requires_grad_(True)
    score = output(model(z))[torch.arange(z.shape[0]), targets].sum()
    return torch.autograd.grad(score, z)[0]


# --- quadrature rules against closed forms ------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 10, 33])
def test_trapezoid_weights_sum_to_one_and_integrate_lines_exactly(n: int) -> None:
    rule = trapezoid(n)
    assert rule.weights.sum() == pytest.approx(1.0, abs=1e-15)
    assert rule.integrate(lambda t: 3 * t - 1) == pytest.approx(0.5, abs=1e-14)


@pytest.mark.parametrize("rule", ALL_RULES + [gauss_legendre(1), gauss_legendre(64)], ids=repr)
def test_rules_live_on_unit_interval_with_unit_mass(rule: Quadrature) -> None:
    assert rule.nodes.min() >= 0 and rule.nodes.max() <= 1
    assert rule.weights.sum() == pytest.approx(1.0, abs=1e-13)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_midpoint_is_exact_for_lines_but_not_parabolas(n: int) -> None:
    assert midpoint(n).integrate(lambda t: 5 * t + 2) == pytest.approx(4.5, abs=1e-14)
    # midpoint error on t^2 is -h^3/12 per panel of width h = 1/n: exactly -1/(12 n^2) in all
    assert midpoint(n).integrate(lambda t: t**2) - 1 / 3 == pytest.approx(-1 / (12 * n**2), abs=1e-14)


@pytest.mark.parametrize("n", [1, 3, 6])
def test_gauss_legendre_is_exact_to_degree_2n_minus_1(n: int) -> None:
    rule = gauss_legendre(n)
    for degree in range(2 * n):
        assert rule.integrate(lambda t, d=degree: (d + 1) * t**d) == pytest.approx(1.0, abs=1e-12)
    # Degree 2n is the first it misses, by the known (n!)^4 / ((2n)!)^2 for (2n+1) t^(2n) on [0, 1].
    missed = 1.0 - rule.integrate(lambda t: (2 * n + 1) * t ** (2 * n))
    assert missed == pytest.approx(math.factorial(n) ** 4 / math.factorial(2 * n) ** 2, rel=1e-6)


def test_gauss_legendre_uses_numpy_leggauss() -> None:
    nodes, weights = np.polynomial.legendre.leggauss(5)
    np.testing.assert_allclose(gauss_legendre(5).nodes, (nodes + 1) / 2, rtol=0, atol=1e-15)
    np.testing.assert_allclose(gauss_legendre(5).weights, weights / 2, rtol=0, atol=1e-15)


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_left_and_right_riemann_have_first_order_error(n: int) -> None:
    exact = math.e - 1
    # For exp on [0, 1] the Riemann errors are -(e - 1)/(2n) and +(e - 1)/(2n) to first order.
    assert (left(n).integrate(np.exp) - exact) * n == pytest.approx(-(math.e - 1) / 2, rel=2 / n)
    assert (right(n).integrate(np.exp) - exact) * n == pytest.approx((math.e - 1) / 2, rel=2 / n)


def test_simpson_and_composite_are_exact_for_cubics() -> None:
    cubic = lambda t: 4 * t**3 - 3 * t**2 + 2 * t  # noqa: E731 - integral 1 - 1 + 1 = 1
    assert simpson(2).integrate(cubic) == pytest.approx(1.0, abs=1e-14)
    assert composite(gauss_legendre(2), np.array([0.0, 0.3, 1.0])).integrate(cubic) == pytest.approx(1.0, abs=1e-14)


def test_rules_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        trapezoid(1)
    with pytest.raises(TypeError, match="must be an int"):
        left(2.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        Quadrature("bad", np.array([-1.0, 1.0]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError):
        gauss_legendre(3).nodes[0] = 0.5  # frozen: a shared default cannot be edited


# --- integrated gradients -----------------------------------------------------------------


@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_linear_model_ig_is_input_times_weight_under_every_rule(rule: Quadrature) -> None:
    model = linear_model()
    x, base = torch.randn(4, 2, 3, 3, dtype=torch.float64), torch.randn(2, 3, 3, dtype=torch.float64)
    result = integrated_gradients(model, x, 1, baseline=base, rule=rule, output=class_logit)
    weight = model[1].weight.detach()[1].view(2, 3, 3)
    assert_close(result.attributions, (x - base) * weight, rtol=0, atol=1e-13)
    assert (result.relative_completeness_error < 1e-12).all()
    assert result.steps.tolist() == [len(rule)] * 4


def test_one_step_ig_is_gradient_times_difference() -> None:
    model, x = elu_net(), torch.randn(3, 3, 6, 6, dtype=torch.float64)
    base = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    result = integrated_gradients(model, x, baseline=base, rule=right(1))
    assert_close(result.attributions, naive_gradient(model, x, result.targets) * (x - base), rtol=1e-12, atol=1e-14)
    # ...and the midpoint step is the gradient halfway along the path
    result = integrated_gradients(model, x, baseline=base, rule=midpoint(1))
    grad = naive_gradient(model, (x + base) / 2, result.targets)
    assert_close(result.attributions, grad * (x - base), rtol=1e-12, atol=1e-14)


def test_fixed_rule_matches_naive_sum_and_reports_completeness() -> None:
    model, x = elu_net(), torch.randn(2, 3, 6, 6, dtype=torch.float64)
    rule = gauss_legendre(5)
    result = integrated_gradients(model, x, rule=rule, output=class_logit)
    naive = sum(w * naive_gradient(model, a * x, result.targets, class_logit) for a, w in zip(rule.nodes, rule.weights))
    assert_close(result.attributions, naive * x, rtol=1e-12, atol=1e-14)
    logits = model(x).detach()[torch.arange(2), result.targets]
    delta = logits - model(torch.zeros_like(x)).detach()[torch.arange(2), result.targets]
    error = (result.attributions.flatten(1).sum(1) - delta).abs()
    assert_close(result.completeness_error, error)
    # Relative to |dF|, or to 1% of the larger |F| where dF is smaller than that (ill-conditioned).
    f, f0 = logits, logits - delta
    floor = 0.01 * torch.maximum(f.abs(), f0.abs())
    assert_close(result.relative_completeness_error, error / torch.maximum(delta.abs(), floor))
    assert result.ill_conditioned.tolist() == (delta.abs() <= floor).tolist()
    assert result.map_error is None


@pytest.mark.parametrize("output", [class_probability, class_logit])
def test_tolerance_reaches_completeness_and_map_accuracy_for_every_example(output) -> None:
    torch.manual_seed(1)
    model, x = elu_net(), 3 * torch.randn(6, 3, 8, 8, dtype=torch.float64)
    tolerance = 1e-3
    result = integrated_gradients(model, x, tolerance=tolerance, output=output, max_steps=4000)
    assert (result.relative_completeness_error < tolerance).all()
    assert (result.map_error < tolerance).all() and (result.steps < 4000).all()
    reference = integrated_gradients(
        model, x, rule=composite(gauss_legendre(8), np.linspace(0, 1, 65)), output=output
    ).attributions
    true_error = (result.attributions - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)
    assert (true_error < tolerance).all()


def test_results_do_not_depend_on_batch_size() -> None:
    model, x = elu_net(), torch.randn(5, 3, 6, 6, dtype=torch.float64)
    for options in ({"rule": gauss_legendre(6)}, {"tolerance": 1e-3}):
        results = [integrated_gradients(model, x, max_batch=b, **options) for b in (1, 7, 1000)]
        for other in results[1:]:
            assert_close(other.attributions, results[0].attributions, rtol=1e-12, atol=1e-15)
            assert other.steps.tolist() == results[0].steps.tolist()


def test_model_mode_and_parameter_flags_are_restored_and_params_get_no_grad() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.ELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.train()
    model[0].bias.requires_grad_(False)
    x = torch.randn(2, 3, 5, 5)
    first = integrated_gradients(model, x, rule=midpoint(3))
    second = integrated_gradients(model, x, rule=midpoint(3))
    assert_close(first.attributions, second.attributions)  # dropout was off: eval mode inside
    assert model.training and model[1].training
    assert model[0].weight.requires_grad and not model[0].bias.requires_grad
    assert model[0].weight.grad is None


# --- targets and input checks -------------------------------------------------------------


def test_targets_default_to_predictions_and_accept_int_or_tensor() -> None:
    model, x = elu_net(), torch.randn(4, 3, 6, 6, dtype=torch.float64)
    logits = model(x).detach()
    result = integrated_gradients(model, x, rule=midpoint(2))
    assert result.targets.tolist() == logits.argmax(1).tolist() == result.predictions.tolist()
    assert_close(result.probabilities, logits.softmax(1).max(1).values)
    assert integrated_gradients(model, x, 2, rule=midpoint(2)).targets.tolist() == [2] * 4
    chosen = torch.tensor([0, 1, 2, 3])
    assert gradients(model, x, chosen).targets.tolist() == [0, 1, 2, 3]
    assert_close(gradients(model, x, chosen).attributions, naive_gradient(model, x, chosen))


def test_bad_targets_and_shapes_raise_with_the_rule_and_the_way_out() -> None:
    model, x = elu_net(), torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"target class 5 is out of range for a model with 5 classes; use 0\.\.4"):
        integrated_gradients(model, x, 5)
    with pytest.raises(ValueError, match=r"target class -1 is out of range"):
        gradients(model, x, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match=r"one class per example \(N=2\), got shape \(3,\)"):
        gradients(model, x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer classes"):
        gradients(model, x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"scores of shape \(5, 1\) for x of shape \(3, 6, 6\); .* add the batch"):
        integrated_gradients(model, x[0])  # one image, read as a batch of 3 sequences
    with pytest.raises(ValueError, match=r"does not broadcast to x's shape"):
        integrated_gradients(model, x, baseline=torch.zeros(3, 5, 5))
    with pytest.raises(ValueError, match="tolerance must be a positive number"):
        integrated_gradients(model, x, tolerance=0)
    with pytest.raises(ValueError, match=r"with tolerance, rule must be a Simpson rule"):
        integrated_gradients(model, x, tolerance=0.01, rule=gauss_legendre(4))


# --- interior gradients, smoothgrad, baselines --------------------------------------------


def test_interior_gradients_match_autograd_at_each_alpha() -> None:
    model, x = elu_net(), torch.randn(3, 3, 6, 6, dtype=torch.float64)
    base = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    alphas = (0.01, 0.5, 1.0)
    result = interior_gradients(model, x, alphas=alphas, baseline=base, max_batch=4)
    targets = model(x).argmax(1)
    assert result.gradients.shape == (3, 3, 3, 6, 6) and result.targets.tolist() == targets.tolist()
    for k, a in enumerate(alphas):
        z = base + a * (x - base)
        probs = model(z).detach().softmax(1)
        assert_close(result.gradients[k], naive_gradient(model, z, targets))
        assert_close(result.target_probabilities[k], probs[torch.arange(3), targets])
        assert result.predictions[k].tolist() == probs.argmax(1).tolist()
        assert_close(result.gradient_norms[k], result.gradients[k].flatten(1).norm(dim=1))


def test_smoothgrad_without_noise_is_the_method_and_with_noise_averages() -> None:
    model, x = elu_net(), torch.randn(2, 3, 6, 6, dtype=torch.float64)
    plain = gradients(model, x)
    assert_close(smoothgrad(gradients, model, x, samples=3, noise=0.0).attributions, plain.attributions)
    noisy = smoothgrad(gradients, model, x, samples=4, noise=0.2, seed=3)
    assert noisy.targets.tolist() == plain.targets.tolist() and noisy.steps.tolist() == [4, 4]
    assert not torch.allclose(noisy.attributions, plain.attributions)
    interior = smoothgrad(interior_gradients, model, x, samples=2, noise=0.0, alphas=(0.5, 1.0))
    assert_close(interior.gradients, interior_gradients(model, x, alphas=(0.5, 1.0)).gradients)


def test_black_baseline_is_zero_pixels_not_zero_inputs() -> None:
    norm = Normalization(mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1))
    x = torch.randn(2, 3, 4, 4)
    base = black(x, norm)
    assert_close(base[0, :, 0, 0], torch.tensor([-2.0, -2.0, -3.0]))
    assert_close(norm.invert(base), torch.zeros_like(x), rtol=0, atol=1e-6)
    assert_close(norm.invert(dataset_mean(x, norm))[1, :, 2, 3], torch.tensor([0.5, 0.4, 0.3]))
    noise = norm.invert(uniform_noise(x, norm, seed=1))
    assert noise.min() >= -1e-6 and noise.max() <= 1 + 1e-6 and noise.std() > 0.2
    # IG from the black baseline explains F(x) - F(black image)
    model = linear_model(3, (3, 4, 4))
    result = integrated_gradients(model, x.double(), 0, baseline=lambda z: black(z, norm), output=class_logit)
    black_logit = model(norm.apply(torch.zeros(1, 3, 4, 4)).double()).detach()[0, 0]
    assert_close(result.baseline_output, black_logit.expand(2))


def test_blurred_baseline_keeps_constants_and_smooths_edges() -> None:
    x = torch.full((1, 3, 9, 9), 0.7, dtype=torch.float64)
    assert_close(blurred(x, sigma=2.0), x)
    edge = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    edge[..., 4:] = 1.0
    smooth = blurred(edge, sigma=1.0)
    assert 0 < smooth[0, 0, 4, 3] < 0.5 < smooth[0, 0, 4, 4] < 1
    assert_close(smooth.sum(-1).mean(), edge.sum(-1).mean(), rtol=0.05, atol=0)


def test_attribution_is_a_small_dataclass() -> None:
    result = gradients(elu_net(), torch.randn(1, 3, 6, 6, dtype=torch.float64))
    assert isinstance(result, Attribution) and result.steps.tolist() == [1]
    assert result.completeness_error is None and result.map_error is None


# --- figures ------------------------------------------------------------------------------


def test_overlay_draws_positive_blue_and_negative_red_over_grey() -> None:
    from mindscope.render.attribution import overlay

    pixels = torch.full((3, 4, 4), 0.5)
    attribution = torch.zeros(3, 4, 4)
    attribution[:, 0, 0] = 1.0  # strongly for the target
    attribution[:, 3, 3] = -1.0  # strongly against
    rgb = overlay(pixels, attribution, percentile=100)
    red, green, blue = rgb[0, 0]
    assert blue > 0.9 and red < 0.1
    red, green, blue = rgb[3, 3]
    assert red > 0.9 and blue < 0.1
    assert_close(torch.tensor(rgb[1, 2]), torch.full((3,), 0.5, dtype=torch.float64))  # untouched: grey


def test_outliers_are_clipped_at_the_stated_percentile() -> None:
    from mindscope.render.attribution import clip_outliers

    values = np.concatenate([np.linspace(-1, 1, 99), [50.0]])
    clipped = clip_outliers(values, 99)
    scale = np.percentile(np.abs(values), 99)
    np.testing.assert_allclose(clipped[:99], np.clip(values[:99] / scale, -1, 1))
    assert clipped[-1] == 1.0
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 100\]"):
        clip_outliers(values, 0)


def test_figures_and_gif_frames_are_drawn() -> None:
    from mindscope.render.attribution import attribution_panels, interior_frames, saturation_curve

    model, x = elu_net(), torch.rand(2, 3, 6, 6, dtype=torch.float64)
    classes = [f"class {k}" for k in range(5)]
    result = integrated_gradients(model, x, tolerance=0.05)
    fig = attribution_panels(x, result, classes)
    assert len(fig.axes) == 6 and "completeness err" in fig.axes[1].get_title()
    interior = interior_gradients(model, x, alphas=(0.1, 1.0))
    frames = interior_frames(interior, x, classes, index=1)
    assert len(frames) == 2 and frames[0].mode == "RGB"
    assert len(saturation_curve(interior, classes).axes) == 2


# --- command line -------------------------------------------------------------------------


def test_cli_interior_writes_gifs_and_saturation_curve(tiny_run, tmp_path, capsys) -> None:
    from mindscope.cli import main

    assert main(["attribute", str(tiny_run), "--image", "3", "--method", "interior", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "interior_3.gif").stat().st_size > 0 and (tmp_path / "saturation.png").is_file()
    assert "predicted" in capsys.readouterr().out


def test_cli_integrated_with_tolerance_prints_errors_below_it(tiny_run, tmp_path, capsys) -> None:
    import re

    from mindscope.cli import main

    status = main(
        ["attribute", str(tiny_run), "--image", "3", "--image", "4", "--tolerance", "0.01", "--out", str(tmp_path)]
    )
    assert status == 0 and (tmp_path / "integrated_3_4.png").is_file()
    errors = [float(e) for e in re.findall(r"completeness error ([0-9.]+)%", capsys.readouterr().out)]
    assert len(errors) == 2 and max(errors) < 1.0


def test_cli_refuses_steps_with_tolerance_and_bad_images(tiny_run, capsys) -> None:
    from mindscope.cli import main

    assert main(["attribute", str(tiny_run), "--image", "0", "--steps", "8", "--tolerance", "0.01"]) == 2
    assert "give --steps N or --tolerance E, not both" in capsys.readouterr().err
    assert main(["attribute", str(tiny_run), "--image", "99999"]) == 2
    assert "image index 99999 is out of range" in capsys.readouterr().err


def test_adaptive_simpson_puts_its_steps_at_the_kink_and_meets_the_tolerance() -> None:
    from mindscope.quadrature import adaptive_simpson

    kink = 0.3
    seen: list[np.ndarray] = []

    def evaluate(example: np.ndarray, alpha: np.ndarray) -> torch.Tensor:
        seen.append(alpha)
        a = torch.as_tensor(alpha)
        return torch.stack([(a - kink).abs(), torch.exp(a)], dim=1)  # (J, 2)

    exact = torch.tensor([(kink**2 + (1 - kink) ** 2) / 2, math.e - 1], dtype=torch.float64)
    weights = torch.ones(1, 2, dtype=torch.float64)
    integral, steps, estimate = adaptive_simpson(evaluate, weights, [float(exact.sum())], tolerance=1e-6, max_steps=500)
    error = float((integral[0] - exact).norm() / exact.norm())
    assert error < 1e-6 and estimate[0] < 1e-6 and steps[0] == sum(len(s) for s in seen) < 500
    nodes = np.concatenate(seen)
    near = np.sum(np.abs(nodes - kink) < 0.05)
    assert near > 0.5 * nodes.size  # most steps within 0.05 of the kink: 10% of the interval


def test_smoothgrad_equals_a_naive_loop_over_noisy_copies() -> None:
    model, x = elu_net(), torch.randn(3, 3, 6, 6, dtype=torch.float64)
    samples, noise, seed = 5, 0.1, 7
    targets = model(x).argmax(1)
    generator = torch.Generator().manual_seed(seed)
    sigma = noise * (x.flatten(1).max(1).values - x.flatten(1).min(1).values)
    naive = torch.zeros_like(x)
    for _ in range(samples):
        z = x + sigma.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=generator, dtype=torch.float64)
        z.requires_grad_(True)
        score = model(z).softmax(-1).gather(1, targets[:, None]).sum()
        naive += torch.autograd.grad(score, z)[0] / samples
    result = smoothgrad(gradients, model, x, samples=samples, noise=noise, seed=seed, max_batch=4)
    assert_close(result.attributions, naive)
    assert result.steps.tolist() == [samples] * 3
