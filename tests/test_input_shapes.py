"""Any batch (N, ...): rows, sequences and images either way round, against closed forms and naive references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from mindscope.activations import activation_statistics, capture_activations, top_activating
from mindscope.attribution import class_logit, gradients, integrated_gradients, interior_gradients, smoothgrad
from mindscope.attribution.alphas import refine_alphas
from mindscope.baselines import black, blurred, dataset_mean, uniform_noise
from mindscope.data import Normalization
from mindscope.evaluation import deletion_insertion, localisation, pixel_map
from mindscope.inputs import batch_layout, unit_map
from mindscope.quadrature import gauss_legendre, midpoint, simpson


def linear_rows(features: int = 6, classes: int = 3, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(features, classes).double()


class SequenceNet(nn.Module):
    """(N, L, D) -> (N, K): a tanh layer per position, a learned weighting of positions, a head."""

    def __init__(self, length: int = 5, dim: int = 3, hidden: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, hidden)
        self.act = nn.Tanh()
        self.head = nn.Linear(length * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.embed(x)).flatten(1))


def sequence_net(seed: int = 0) -> SequenceNet:
    torch.manual_seed(seed)
    return SequenceNet().double()


# --- the closed form on rows ---------------------------------------------------------------


@pytest.mark.parametrize("rule", [gauss_legendre(1), gauss_legendre(7), midpoint(3), simpson(2)])
def test_integrated_gradients_of_a_linear_row_model_is_the_closed_form(rule) -> None:
    # F = w[target] . x + b, so the integrand is w[target] at every alpha and IG = (x - x') * w[target] exactly.
    model = linear_rows()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    baseline = torch.randn(6, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 1])
    result = integrated_gradients(model, x, targets, baseline=baseline, rule=rule, output=class_logit)
    expected = (x - baseline) * model.weight.detach()[targets]
    assert_close(result.attributions, expected, rtol=0, atol=1e-12)
    assert float(result.completeness_error.max()) < 1e-12


def test_tolerance_mode_and_the_other_methods_on_rows_match_the_weights() -> None:
    model = linear_rows()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w = model.weight.detach()
    adaptive = integrated_gradients(model, x, 2, tolerance=1e-6, output=class_logit)
    assert_close(adaptive.attributions, x * w[2], rtol=0, atol=1e-12)
    assert adaptive.converged.all()
    assert_close(gradients(model, x, 1, output=class_logit).attributions, w[1].expand(3, 6), rtol=0, atol=0)
    inner = interior_gradients(model, x, 0, alphas=[0.25, 1.0], output=class_logit)
    assert inner.gradients.shape == (2, 3, 6)
    assert_close(inner.gradients, w[0].expand(2, 3, 6), rtol=0, atol=0)
    smooth = smoothgrad(gradients, model, x, 0, samples=3, output=class_logit)
    assert_close(smooth.attributions, w[0].expand(3, 6), rtol=0, atol=1e-15)


def test_refined_alphas_work_on_rows_like_a_brute_force_grid() -> None:
    model = linear_rows()
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    grid = refine_alphas(model, x, 0, alphas=[0.0, 1.0], max_change=0.05, resolution=1 / 64)
    dense = torch.linspace(0, 1, 65, dtype=torch.float64)
    for a, p in zip(grid.alphas.tolist(), grid.target_probabilities[:, 0].tolist()):
        reference = float(model(a * x[:1]).softmax(-1)[0, 0].detach())
        assert p == pytest.approx(reference, abs=1e-12)
    steps = [float(model(a * x[:1]).softmax(-1)[0, 0].detach()) for a in dense]
    assert max(np.abs(np.diff(grid.target_probabilities[:, 0].numpy()))) <= max(0.05, max(np.abs(np.diff(steps))))


# --- sequences -----------------------------------------------------------------------------


def naive_ig(model: nn.Module, x: torch.Tensor, baseline: torch.Tensor, target: int, nodes: int = 40) -> torch.Tensor:
    """IG by a Gauss-Legendre rule of numpy's, in float64 autograd, one alpha at a time."""
    a, w = np.polynomial.legendre.leggauss(nodes)
    total = torch.zeros_like(x)
    for alpha, weight in zip((a + 1) / 2, w / 2):
        z = (baseline + float(alpha) * (x - baseline)).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(z).softmax(-1)[:, target].sum(), z)
        total += float(weight) * grad
    return (x - baseline) * total


def test_integrated_gradients_on_sequences_are_complete_and_match_a_naive_integral() -> None:
    model = sequence_net()
    x = torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
    result = integrated_gradients(model, x, 1, tolerance=1e-4)
    assert result.attributions.shape == (3, 5, 3)
    assert result.converged.all()
    assert float(result.relative_completeness_error.max()) < 1e-4  # the stated tolerance
    expected = (model(x).softmax(-1)[:, 1] - model(torch.zeros_like(x)).softmax(-1)[:, 1]).detach()
    assert_close(result.attributions.flatten(1).sum(1), expected, rtol=1e-4, atol=1e-12)
    reference = naive_ig(model, x, torch.zeros_like(x), 1)
    assert float((result.attributions - reference).norm() / reference.norm()) < 1e-3


# --- what the user gave is what the errors say --------------------------------------------


def test_errors_describe_the_input_given() -> None:
    model = linear_rows()
    single = torch.randn(6, dtype=torch.float64)
    message = r"x has shape \(6,\), a single example; add the batch dimension with x\.unsqueeze\(0\)"
    with pytest.raises(ValueError, match=message):
        integrated_gradients(model, single)
    with pytest.raises(ValueError, match=message):
        deletion_insertion(model, single, 0, single)
    with pytest.raises(ValueError, match=r"x has shape \(0, 6\), no examples; give at least one"):
        gradients(model, torch.zeros(0, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"a single example; add the batch dimension"):
        capture_activations(nn.Sequential(nn.Linear(6, 2)), torch.zeros(6), ["0"])
    with pytest.raises(
        ValueError, match=r"scores of shape \(2, 5, 3\) for x of shape \(2, 5, 6\); it must return one row"
    ):
        integrated_gradients(model, torch.zeros(2, 5, 6, dtype=torch.float64))  # Linear maps each position
    with pytest.raises(TypeError, match="floating-point tensor, got torch.int64; convert it with .float()"):
        integrated_gradients(model, torch.zeros(2, 6, dtype=torch.int64))


def test_the_layout_rule_refuses_only_what_reads_both_ways() -> None:
    assert batch_layout((5, 10)) == "NF"
    assert batch_layout((5, 7, 3)) == "NLD"
    assert batch_layout((5, 3, 32, 32)) == "NCHW"
    assert batch_layout((5, 2, 4, 4)) == "NCHW"  # two channels: not colour, still channels first
    assert batch_layout((5, 1, 4, 4)) == "NCHW"  # 4 is not smaller than the 1 before it
    assert batch_layout((5, 32, 32, 3), "NHWC") == "NHWC"
    assert batch_layout((5, 32, 32, 3), "NCHW") == "NCHW"
    for shape in [(5, 32, 32, 3), (5, 28, 28, 1), (5, 16, 8, 4)]:
        with pytest.raises(
            ValueError, match=r"channels last \(N, H, W, C\) or \d+ channels first\? Pass layout='NHWC'"
        ):
            batch_layout(shape)
    with pytest.raises(ValueError, match=r"layout 'NHWC' is for 4-dim batches, but x has shape \(5, 10\)"):
        batch_layout((5, 10), "NHWC")
    with pytest.raises(ValueError, match="layout must be one of NCHW, NHWC, NF, NLD, got 'CHW'"):
        batch_layout((5, 3, 4, 4), "CHW")
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 4, 4, 4\); per-pixel"):
        batch_layout((2, 3, 4, 4, 4))
    with pytest.raises(ValueError, match=r"do not fit the rows \(N=2, F=6\); give one value per feature, \(N, F\)"):
        unit_map(torch.zeros(2, 5), 2, (6,), "NF")
    with pytest.raises(ValueError, match=r"do not fit the sequences \(N=2, L=5\); give \(N, L, D\) or one value"):
        unit_map(torch.zeros(2, 4, 3), 2, (5,), "NLD")


# --- baselines ------------------------------------------------------------------------------


def test_baselines_follow_the_channel_axis_of_every_layout() -> None:
    norm = Normalization((0.2, 0.4, 0.6), (0.5, 0.25, 0.125))
    g = torch.Generator().manual_seed(5)
    nchw = torch.rand(2, 3, 6, 7, generator=g, dtype=torch.float64)
    nhwc = nchw.permute(0, 2, 3, 1)
    mean = torch.tensor(norm.mean, dtype=torch.float64)
    std = torch.tensor(norm.std, dtype=torch.float64)
    assert_close(black(nchw, norm), ((0 - mean) / std).view(1, 3, 1, 1).expand(2, 3, 6, 7))
    assert_close(black(nhwc, norm, layout="NHWC"), black(nchw, norm).permute(0, 2, 3, 1), rtol=0, atol=0)
    assert_close(dataset_mean(nhwc, norm, layout="NHWC"), dataset_mean(nchw, norm).permute(0, 2, 3, 1))
    assert_close(dataset_mean(nchw, norm), torch.zeros_like(nchw), rtol=0, atol=1e-15)  # the mean pixel is 0 after
    noise = uniform_noise(nhwc, norm, layout="NHWC")
    assert_close(noise * std + mean, uniform_noise(nhwc))  # pixels in [0, 1], normalised per last axis
    assert_close(blurred(nhwc, sigma=1.0, layout="NHWC"), blurred(nchw, sigma=1.0).permute(0, 2, 3, 1))
    rows = torch.rand(4, 3, generator=g, dtype=torch.float64)  # three features, normalised per feature
    assert_close(black(rows, norm), ((0 - mean) / std).expand(4, 3))
    sequences = torch.rand(2, 5, 3, generator=g, dtype=torch.float64)
    assert_close(dataset_mean(sequences, norm), torch.zeros_like(sequences), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"channels last \(N, H, W, C\) or 6 channels first"):
        black(torch.zeros(1, 6, 7, 3), norm)
    with pytest.raises(ValueError, match=r"mean has 3 values but x of shape \(4, 5\) has 5 channels \(NF\)"):
        black(torch.zeros(4, 5), norm)
    with pytest.raises(ValueError, match=r"blurred needs images .* got shape \(4, 3\); a blur has no meaning for rows"):
        blurred(rows)


# --- activations ---------------------------------------------------------------------------


def test_activations_of_rows_and_sequences_per_feature() -> None:
    model = sequence_net()
    x = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    got = capture_activations(model, x, ["act", "L2"])
    assert_close(got["act"], torch.tanh(model.embed(x)).detach())
    assert_close(got["head"], model(x).detach())
    stats = activation_statistics(model, x, ["act"], batch_size=4, channel_axis=-1)["act"]
    a = torch.tanh(model.embed(x)).detach().numpy().reshape(-1, 4)  # (N * L, D): channels are D
    np.testing.assert_allclose(stats.mean, a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, a.std(0), rtol=1e-12)
    np.testing.assert_allclose(stats.active, (a > 0).mean(0))
    assert stats.examples == 6 and stats.positions == 5
    top = top_activating(model, x, "act", 2, k=3, channel_axis=-1)
    scores = torch.tanh(model.embed(x)).detach()[..., 2].mean(1).numpy()
    np.testing.assert_array_equal(top.indices, np.argsort(-scores, kind="stable")[:3])
    with pytest.raises(ValueError, match=r"channel_axis 0 is not a channel axis of layer 'act' output"):
        activation_statistics(model, x, ["act"], channel_axis=0)


# --- evaluation on rows and sequences: closed forms -----------------------------------------


class LogisticRows(nn.Module):
    """Two classes with logits (0, w . x + b): softmax p(1) = sigmoid(w . x + b)."""

    def __init__(self, weight: torch.Tensor, bias: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x * self.weight).flatten(1).sum(1) + self.bias
        return torch.stack([torch.zeros_like(z), z], dim=1)


def deletion_reference(contribution: np.ndarray, full: np.ndarray, empty: np.ndarray, steps: int):
    """Deletion and insertion curves of a logistic model for units removed in attribution order."""
    n, p = contribution.shape
    order = np.argsort(-contribution, axis=1, kind="stable")
    ranked = np.take_along_axis(contribution, order, axis=1)
    cumulative = np.concatenate([np.zeros((n, 1)), np.cumsum(ranked, axis=1)], axis=1)  # (N, P + 1)
    counts = np.round(np.linspace(0, p, steps + 1)).astype(int)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    return sigmoid(full[:, None] - cumulative[:, counts]), sigmoid(empty[:, None] + cumulative[:, counts])


@pytest.mark.parametrize("shape", [(4, 7), (4, 6, 3)])
def test_deletion_on_rows_and_sequences_matches_the_closed_form(shape) -> None:
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(shape[1:], generator=g, dtype=torch.float64)
    model = LogisticRows(weight, 0.2)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    baseline = torch.full(shape[1:], -0.3, dtype=torch.float64)
    oracle = weight * (x - baseline)  # the exact IG of F = logit 1, shaped like x
    result = deletion_insertion(model, x, 1, oracle, baseline=baseline, steps=4)
    assert result.unit == ("features" if len(shape) == 2 else "positions")
    per_unit = oracle if len(shape) == 2 else oracle.sum(2)  # a position's D values go together
    full = (weight * x).flatten(1).sum(1).detach().numpy() + 0.2
    empty = np.full(shape[0], float((weight * baseline).sum()) + 0.2)
    deletion, insertion = deletion_reference(per_unit.detach().numpy(), full, empty, 4)
    np.testing.assert_allclose(result.deletion, deletion, rtol=1e-10)
    np.testing.assert_allclose(result.insertion, insertion, rtol=1e-10)
    assert result.deletion_margin > 0 and result.insertion_margin > 0


def test_localisation_on_rows_and_sequences_scores_the_marked_units() -> None:
    rows = torch.tensor([[3.0, -1.0, 1.0, 0.0], [0.0, 2.0, 2.0, 4.0]])
    masks = torch.tensor([[True, False, False, False], [False, True, False, False]])
    result = localisation(rows, masks)
    np.testing.assert_allclose(result.mass_inside, [3 / 4, 2 / 8])
    np.testing.assert_array_equal(result.pointing, [True, False])
    sequences = torch.stack([rows, rows.flip(1)], dim=2)  # (2, 4, 2): each position sums to rows + flipped
    summed = sequences.sum(2)
    expected = localisation(summed, masks)
    got = localisation(sequences, masks)
    np.testing.assert_allclose(got.mass_inside, expected.mass_inside)
    np.testing.assert_array_equal(got.pointing, expected.pointing)
    with pytest.raises(ValueError, match=r"\(2, 4, 2\) do not fit the masks \(N=2, L=5\); give \(N, L, D\) or one"):
        localisation(sequences, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"masks must be a tensor \(N, F\), got shape \(2, 4, 1\)"):
        localisation(rows, masks[..., None])
    assert_close(pixel_map(sequences, sequences.shape), summed)
