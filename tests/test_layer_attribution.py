"""Layer and neuron integrated gradients and conductance, against closed forms and naive versions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from mindscope.attribution import (
    class_logit,
    conductance,
    layer_integrated_gradients,
    neuron_integrated_gradients,
)
from mindscope.quadrature import gauss_legendre
from test_attribution import elu_net  # one small ELU net for the attribution tests

pytestmark = pytest.mark.usefixtures("one_thread")


def linear_after(classes: int = 3) -> nn.Sequential:
    """Nonlinear up to layer '3', then linear (flatten + linear): F = w . A + b for the logits."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ELU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, classes),
    ).double()


def images(n: int = 3, size: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, size, size, dtype=torch.float64)


@pytest.mark.parametrize("method", [layer_integrated_gradients, conductance])
def test_on_a_network_linear_after_the_layer_it_is_the_closed_form(method) -> None:
    model = linear_after().eval()
    x, base = images(), 0.3 * images()
    targets = torch.tensor([0, 2, 1])
    a, a0 = model[:4](x), model[:4](base)
    w = model[5].weight[targets].view(3, 4, 6, 6)
    expected = (a - a0) * w
    # Layer IG's integrand is constant here, so one node is exact; conductance integrates dA/da too.
    options = {"rule": gauss_legendre(1)} if method is layer_integrated_gradients else {"tolerance": 1e-10}
    result = method(model, x, "3", targets, baseline=base, output=class_logit, **options)
    assert_close(result.attributions, expected.detach(), rtol=1e-8, atol=1e-12)
    assert result.layer == "3"
    assert_close(result.channel_totals, expected.detach().flatten(2).sum(2), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("method", [layer_integrated_gradients, conductance])
@pytest.mark.parametrize("tolerance", [1e-2, 1e-4])
def test_completeness_holds_within_the_tolerance(method, tolerance: float) -> None:
    model = elu_net().eval()
    x = 3 * images(4, 8)
    result = method(model, x, "2", 0, baseline=-x, tolerance=tolerance, output=class_logit)
    assert result.converged.all() and not result.ill_conditioned.any()
    # the reference: F from the model's own forward passes, not from the method
    logits = model(x)[torch.arange(4), result.targets]
    change = logits - model(-x)[torch.arange(4), result.targets]
    summed = result.attributions.flatten(1).sum(1)
    assert ((summed - change).abs() / change.abs() < tolerance).all()
    assert_close(result.completeness_error, (summed - change).abs().detach(), rtol=1e-9, atol=1e-15)
    assert (result.steps > 5).any() if tolerance < 1e-3 else True


def test_layer_integrated_gradients_equal_captums() -> None:
    captum = pytest.importorskip("captum.attr")
    model = elu_net().eval()
    x, base = images(3, 8), 0.5 * images(3, 8)
    targets = torch.tensor([1, 0, 3])
    ours = layer_integrated_gradients(model, x, "3", targets, baseline=base, output=class_logit, rule=gauss_legendre(9))
    theirs = captum.LayerIntegratedGradients(model, model[3]).attribute(
        x, base, target=targets, n_steps=9, method="gausslegendre"
    )
    assert_close(ours.attributions, theirs, rtol=1e-7, atol=1e-12)  # Captum's nodes are float32


def naive_conductance(model: nn.Sequential, x, base, cut: int, targets, nodes, weights) -> torch.Tensor:
    """sum_k w_k dF/dA(g(a_k)) * dA/da(a_k), one example and node at a time; dA/da by double backward."""
    total = torch.zeros_like(model[: cut + 1](x))
    for i in range(x.shape[0]):
        d = x[i : i + 1] - base[i : i + 1]
        for a, w in zip(nodes, weights):
            z = (base[i : i + 1] + a * d).requires_grad_(True)
            act = model[: cut + 1](z)
            u = torch.zeros_like(act, requires_grad=True)
            (vjp,) = torch.autograd.grad(act, z, u, create_graph=True)
            (jvp,) = torch.autograd.grad(vjp, u, d)  # dA/da = J (x - x')
            leaf = act.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(model[cut + 1 :](leaf)[0, targets[i]], leaf)
            total[i] += float(w) * (g * jvp)[0]
    return total


def test_conductance_equals_a_naive_double_backward_implementation() -> None:
    model = elu_net().eval()
    x, base = images(2, 8), 0.2 * images(2, 8)
    targets = torch.tensor([2, 1])
    rule = gauss_legendre(5)
    result = conductance(model, x, "1", targets, baseline=base, output=class_logit, rule=rule)
    expected = naive_conductance(model, x, base, 1, targets, rule.nodes, rule.weights)
    assert_close(result.attributions, expected, rtol=1e-10, atol=1e-14)


def test_the_two_agree_where_the_layer_is_affine_along_the_path_and_differ_elsewhere() -> None:
    model = elu_net().eval()
    x = images(2, 8)
    options = {"output": class_logit, "tolerance": 1e-6}
    affine = [method(model, x, "0", **options).attributions for method in (layer_integrated_gradients, conductance)]
    assert_close(affine[0], affine[1], rtol=1e-4, atol=1e-9)
    deeper = [method(model, x, "1", **options).attributions for method in (layer_integrated_gradients, conductance)]
    assert (deeper[0] - deeper[1]).norm() > 1e-3 * deeper[0].norm()


def test_neuron_integrated_gradients_explain_the_unit_and_are_the_closed_form_on_a_linear_unit() -> None:
    model = elu_net().eval()
    x, base = images(3, 8), 0.1 * images(3, 8)
    # Layer '0' is a convolution: a channel's mean is linear in x, so IG = (x - x') * its gradient.
    z = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model[0](z)[:, 2].mean(dim=(1, 2)).sum(), z)
    result = neuron_integrated_gradients(model, x, "0", 2, baseline=base, rule=gauss_legendre(1))
    assert_close(result.attributions, (x - base) * grad, rtol=1e-10, atol=1e-14)
    # A nonlinear unit: completeness against the unit's own activation from a forward pass.
    unit = (1, 2, 3)
    result = neuron_integrated_gradients(model, x, "3", unit, baseline=base, tolerance=1e-4)
    value = model[:4](x)[:, 1, 2, 3] - model[:4](base)[:, 1, 2, 3]
    assert_close(result.output - result.baseline_output, value.detach())
    assert ((result.attributions.flatten(1).sum(1) - value).abs() < 1e-4 * value.abs()).all()
    assert result.predictions.tolist() == model(x).argmax(-1).tolist()


def test_bad_layers_neurons_and_options_are_refused() -> None:
    model = elu_net()
    x = images(2, 8)
    with pytest.raises(ValueError, match=r"neuron 6 is outside layer '3', whose output per example has shape \(6, 8"):
        neuron_integrated_gradients(model, x, "3", 6)
    with pytest.raises(TypeError, match="neuron must be a channel"):
        neuron_integrated_gradients(model, x, "3", "2")
    with pytest.raises(ValueError, match="tolerance must be a positive number"):
        conductance(model, x, "3", tolerance=0)
    with pytest.raises(ValueError, match="no layer 'features.3'"):
        layer_integrated_gradients(model, x, "features.3")
    relu = nn.ReLU()
    twice = nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 3), relu, nn.Flatten(), nn.LazyLinear(2)).double()
    twice(x)
    with pytest.raises(ValueError, match="layer '1' runs more than once in one forward pass"):
        layer_integrated_gradients(twice, x, "1")
