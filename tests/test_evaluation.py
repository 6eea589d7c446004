"""Attribution checks against known answers: closed forms, scipy, built-to-purpose networks."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest
import scipy.stats
import torch
from matplotlib.figure import Figure
from torch import nn

from mindscope.attribution import Attribution, gradients, integrated_gradients
from mindscope.cli import main
from mindscope.evaluation import (
    EvaluationTable,
    completeness,
    deletion_insertion,
    evaluate_methods,
    localisation,
    randomisation_check,
    rankdata,
    spearman,
)
from mindscope.quadrature import gauss_legendre
from mindscope.render.evaluation import deletion_figure, localisation_figure, maps_figure, randomisation_figure
from mindscope.report import format_table


class Linear2(nn.Module):
    """logits = [w . x + b, 0]: the target-0 probability is sigmoid(w . x + b)."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(b, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.w).flatten(1).sum(1) + self.b
        return torch.stack([score, torch.zeros_like(score)], dim=1)


class TopLeftNet(nn.Module):
    """A classifier that only reads the top-left quadrant of its input."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.half = size // 2
        self.linear = nn.Linear(channels * self.half * self.half, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[:, :, : self.half, : self.half].flatten(1))


def ig(rule_points: int = 8):
    return lambda m, x, t: integrated_gradients(m, x, t, rule=gauss_legendre(rule_points))


# --- Spearman ------------------------------------------------------------------------------


def test_spearman_matches_scipy_with_ties() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 5, (4, 3, 7), generator=g).double()  # many ties
    b = a + torch.randn(4, 3, 7, generator=g, dtype=torch.float64)
    b[0] = torch.randint(0, 3, (3, 7), generator=g).double()
    ours = spearman(a, b).numpy()
    reference = [scipy.stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic for i in range(4)]
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        rankdata(a.flatten(1)).numpy(), scipy.stats.rankdata(a.flatten(1).numpy(), axis=1), rtol=0, atol=0
    )


def test_spearman_is_nan_for_a_constant_map_and_rejects_shapes() -> None:
    a = torch.ones(2, 5)
    assert torch.isnan(spearman(a, torch.randn(2, 5))).all()
    with pytest.raises(ValueError, match="same shape"):
        spearman(torch.zeros(2, 5), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="at least 2 values"):
        spearman(torch.zeros(3, 1), torch.zeros(3, 1))


# --- localisation --------------------------------------------------------------------------


def test_quadrant_network_localises_in_its_quadrant_only() -> None:
    n, c, size = 6, 3, 8
    model = TopLeftNet(c, size)
    x = torch.rand(n, c, size, size, dtype=torch.float64) + 0.1
    maps = integrated_gradients(model, x, None, rule=gauss_legendre(4)).attributions
    top_left = torch.zeros(n, size, size, dtype=torch.bool)
    top_left[:, :4, :4] = True
    bottom_right = torch.zeros_like(top_left)
    bottom_right[:, 4:, 4:] = True
    inside, outside = localisation(maps, top_left), localisation(maps, bottom_right)
    np.testing.assert_allclose(inside.mass_inside, 1.0)  # nothing outside the quadrant gets mass
    assert inside.pointing.all()
    np.testing.assert_allclose(outside.mass_inside, 0.0)
    assert not outside.pointing.any()
    np.testing.assert_allclose(inside.mask_fraction, 0.25)
    assert 0.1 < inside.random_mass < 0.4  # a random map spreads its mass by area


def test_localisation_rejects_mismatched_shapes_and_empty_masks() -> None:
    maps = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"masks must be a tensor \(N, H, W\)"):
        localisation(maps, torch.ones(2, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 8, 8\) do not fit the masks \(N=2, H=8, W=9\)"):
        localisation(maps, torch.ones(2, 8, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"do not fit the masks \(N=3, H=8, W=8\)"):
        localisation(maps, torch.ones(3, 8, 8, dtype=torch.bool))
    with pytest.raises(TypeError, match="must be bool"):
        localisation(maps, torch.ones(2, 8, 8))
    masks = torch.ones(2, 8, 8, dtype=torch.bool)
    masks[1] = False
    with pytest.raises(ValueError, match="mask of example 1 is empty"):
        localisation(maps, masks)


# --- deletion and insertion ----------------------------------------------------------------


def test_deletion_curves_of_a_linear_model_match_the_closed_form() -> None:
    g = torch.Generator().manual_seed(3)
    n, c, h, w = 5, 2, 4, 4
    weight = torch.randn(c, h, w, generator=g, dtype=torch.float64)
    model = Linear2(weight, 0.3)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    baseline = torch.full((c, h, w), -0.5, dtype=torch.float64)
    oracle = weight * (x - baseline)  # exact IG of a linear model
    result = deletion_insertion(model, x, 0, oracle, baseline=baseline, steps=16, max_batch=7)

    contribution = oracle.sum(1).flatten(1).numpy()  # (N, P)
    order = np.argsort(-contribution, axis=1, kind="stable")
    ranked = np.take_along_axis(contribution, order, axis=1)
    removed = np.concatenate([np.zeros((n, 1)), np.cumsum(ranked, axis=1)], axis=1)  # (N, 17)
    full = (weight * x).flatten(1).sum(1).numpy()[:, None] + 0.3
    empty = float((weight * baseline).sum()) + 0.3
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(result.fractions, np.arange(17) / 16)
    np.testing.assert_allclose(result.deletion, sigmoid(full - removed), rtol=1e-10)
    np.testing.assert_allclose(result.insertion, sigmoid(empty + removed), rtol=1e-10)
    np.testing.assert_allclose(result.random_deletion[:, [0, -1]], result.deletion[:, [0, -1]], rtol=1e-12)
    # the oracle removes the largest contributions first, so no order deletes faster
    assert (result.deletion <= result.random_deletion + 1e-12).all()
    assert (result.insertion >= result.random_insertion - 1e-12).all()
    assert result.deletion_margin > 0.01 and result.insertion_margin > 0.01
    reversed_order = deletion_insertion(model, x, 0, -oracle, baseline=baseline, steps=16)
    assert reversed_order.deletion_margin < 0 < result.deletion_margin


def test_deletion_rejects_mismatched_shapes() -> None:
    model = Linear2(torch.randn(1, 4, 4, dtype=torch.float64), 0.0)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \(2, 1, 4, 4\) do not fit the images \(N=3, H=4, W=4\)"):
        deletion_insertion(model, x, 0, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="do not fit the images"):
        deletion_insertion(model, x, 0, torch.zeros(3, 1, 4, 5))
    with pytest.raises(ValueError, match="does not broadcast"):
        deletion_insertion(model, x, 0, torch.zeros(3, 4, 4), baseline=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"x has shape \(4,\), a single example; add the batch dimension"):
        deletion_insertion(model, x[0, 0, 0], 0, torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="steps must be a positive int"):
        deletion_insertion(model, x, 0, torch.zeros(3, 4, 4), steps=0)


# --- randomisation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def centre_detector() -> tuple[nn.Module, torch.Tensor]:
    """A small convnet trained to tell whether the centre 3x3 of a +-1 image sums positive."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ELU(),
        nn.Conv2d(6, 4, 3, padding=1),
        nn.ELU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 2),
    ).double()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only waits on a shared machine
    try:
        for _ in range(300):
            x = torch.randint(0, 2, (64, 1, 8, 8), generator=g).double() * 2 - 1
            y = (x[:, 0, 3:6, 3:6].sum((1, 2)) > 0).long()
            loss = nn.functional.cross_entropy(model(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    x = torch.randint(0, 2, (256, 1, 8, 8), generator=g).double() * 2 - 1
    accuracy = (model(x).argmax(1) == (x[:, 0, 3:6, 3:6].sum((1, 2)) > 0).long()).double().mean()
    assert accuracy > 0.9, f"the synthetic task did not train (accuracy {accuracy:.2f})"
    return model.eval(), x[:16]


def test_randomising_all_layers_destroys_integrated_gradients_similarity(centre_detector) -> None:
    model, x = centre_detector
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = []
    result = randomisation_check(model, x, None, ig(), progress=steps.append)
    assert result.layers == ("5", "2", "0")  # top (output) layer first
    assert len(steps) == 4
    np.testing.assert_allclose(result.spearman_abs[0], 1.0)
    assert result.final_abs < 0.3 and result.passed
    assert result.curve[-1] < result.curve[0] - 0.6
    for k, v in model.state_dict().items():  # the caller's model is untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_randomisation_of_chosen_layers_is_top_down_and_checked(centre_detector) -> None:
    model, x = centre_detector
    result = randomisation_check(model, x[:4], None, ig(4), layers=[1, 3])
    assert result.layers == ("5", "0") and result.spearman_abs.shape == (3, 4)
    named = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), act=nn.ELU(), flat=nn.Flatten())).double()
    with pytest.raises(ValueError, match="'act' has no parameters to randomise; parameterised layers are: conv"):
        randomisation_check(named, x, 0, ig(4), layers=["act"])
    with pytest.raises(ValueError, match="no layer"):
        randomisation_check(model, x, None, ig(4), layers=["features.9"])
    calls: list[int] = []

    def changes_shape(m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.rand(16, 1, 8, 8) if len(calls) == 1 else torch.rand(16, 8, 8)

    with pytest.raises(ValueError, match=r"maps of shape \(16, 8, 8\) for the randomised model"):
        randomisation_check(model, x, None, changes_shape)
    with pytest.raises(ValueError, match="the method's maps of shape .* do not fit the images"):
        randomisation_check(model, x, None, lambda m, x, t: torch.zeros(15, 1, 8, 8))


def test_randomisation_compares_only_pixels_that_can_carry_attribution() -> None:
    # Fashion-MNIST's failure: most pixels equal the black baseline, so a path method gives
    # them exactly 0 under any weights, and those shared zeros alone keep rank correlation high.
    g = torch.Generator().manual_seed(0)
    n, size = 4, 8
    model = nn.Sequential(Linear2(torch.randn(1, size, size, generator=g, dtype=torch.float64), 0.0))
    x = torch.randn(n, 1, size, size, generator=g, dtype=torch.float64).sign()  # |x| = 1: |map| = |w|
    x[:, :, :, : size * 6 // 10] = 0.0  # 60% of every image equals the baseline
    maps: list[torch.Tensor] = []

    def input_times_weight(m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        maps.append((x * m[0].w).detach().clone())  # a linear model's IG from a zero baseline
        return maps[-1]

    result = randomisation_check(model, x, None, input_times_weight, baseline=torch.zeros_like(x), seed=3)
    original, final = maps[0][:, 0].numpy(), maps[-1][:, 0].numpy()
    carrying = (x[:, 0] != 0).numpy()
    np.testing.assert_allclose(result.compared, carrying.reshape(n, -1).mean(1))
    for e in range(n):
        kept = scipy.stats.spearmanr(np.abs(original[e][carrying[e]]), np.abs(final[e][carrying[e]])).statistic
        every = scipy.stats.spearmanr(np.abs(original[e]).ravel(), np.abs(final[e]).ravel()).statistic
        signed = scipy.stats.spearmanr(original[e][carrying[e]], final[e][carrying[e]]).statistic
        assert result.spearman_abs[-1, e] == pytest.approx(kept, abs=1e-12)
        assert result.spearman_abs_all[-1, e] == pytest.approx(every, abs=1e-12)
        assert result.spearman_signed[-1, e] == pytest.approx(signed, abs=1e-12)
    assert result.final_abs_all > 0.5 > result.final_abs  # the zeros alone would fail it
    assert result.passed == (result.final_abs < result.threshold)
    # without a baseline every pixel is compared, as before
    plain = randomisation_check(model, x, None, input_times_weight, seed=3)
    assert plain.compared is None and plain.final_abs == pytest.approx(result.final_abs_all, abs=1e-12)


# --- completeness and the table ------------------------------------------------------------


def test_the_worst_completeness_error_sets_ill_conditioned_images_aside() -> None:
    n = 4
    relative = torch.tensor([0.002, 19.0, 0.0005, 0.004], dtype=torch.float64)
    result = Attribution(
        attributions=torch.zeros(n, 1, 2, 2),
        targets=torch.zeros(n, dtype=torch.int64),
        predictions=torch.zeros(n, dtype=torch.int64),
        probabilities=torch.ones(n),
        steps=torch.full((n,), 5),
        completeness_error=relative * 1e-3,
        relative_completeness_error=relative,
        converged=torch.tensor([True, True, True, False]),
        ill_conditioned=torch.tensor([False, True, False, False]),
    )
    collected = completeness(result)
    well = ~np.array([False, True, False, False])
    assert collected.worst_relative == pytest.approx(relative.numpy()[well].max())  # 0.004, not 19
    assert collected.set_aside == 1 and collected.not_converged == 1
    unflagged = completeness(replace(result, converged=None, ill_conditioned=None))  # None: nothing flagged
    assert unflagged.worst_relative == pytest.approx(19.0) and unflagged.set_aside == 0
    assert unflagged.not_converged == 0


def test_the_trust_checks_run_the_report_s_integrated_gradients() -> None:
    from mindscope.baselines import black
    from mindscope.data import Normalization
    from mindscope.report import standard_methods

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    targets = torch.tensor([1, 2])
    methods = standard_methods(norm, alpha=0.5, tolerance=0.01, samples=2, seed=0)
    ours = methods["integrated"](model, x, targets)
    section5 = integrated_gradients(model, x, targets, baseline=black(x, norm), tolerance=0.01)
    torch.testing.assert_close(ours.attributions, section5.attributions, rtol=0, atol=0)
    torch.testing.assert_close(ours.steps, section5.steps)
    assert (ours.steps != 16).any() or ours.map_error is not None  # tolerance mode, not a 16-point rule


def test_completeness_is_collected_where_it_exists() -> None:
    model = Linear2(torch.randn(1, 4, 4, dtype=torch.float64), 0.1)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    result = integrated_gradients(model, x, 0, rule=gauss_legendre(16))
    collected = completeness(result)
    np.testing.assert_allclose(collected.error, result.completeness_error.numpy())
    assert completeness(gradients(model, x, 0)) is None
    assert completeness(torch.zeros(3, 1, 4, 4)) is None


def test_evaluate_methods_tabulates_every_method_and_check(tmp_path) -> None:
    n, size = 3, 8
    model = TopLeftNet(3, size)
    x = torch.rand(n, 3, size, size, dtype=torch.float64)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, :4, :4] = True
    methods = {"gradient": lambda m, x, t: gradients(m, x, t), "integrated": ig(4)}
    table = evaluate_methods(model, x, None, masks, methods, steps=8)
    assert isinstance(table, EvaluationTable) and table.methods == ("gradient", "integrated")
    values = table.values()
    assert values.shape == (2, len(table.checks))
    completeness_column = table.checks.index("completeness_error")
    assert np.isnan(values[0, completeness_column]) and values[1, completeness_column] < 1e-6
    assert values[1, table.checks.index("mass_inside")] == pytest.approx(1.0)
    text = format_table(table)
    assert text.splitlines()[1].startswith("gradient") and "integrated" in text
    with pytest.raises(ValueError, match="masks of shape"):
        evaluate_methods(model, x, None, masks[:2], methods)
    with pytest.raises(ValueError, match="non-empty dict"):
        evaluate_methods(model, x, None, masks, {})
    figures = [
        randomisation_figure({r.name: r.randomisation for r in table.rows}),
        deletion_figure({r.name: r.deletion for r in table.rows}),
        localisation_figure({r.name: r.localisation for r in table.rows}),
        maps_figure(x.numpy(), {r.name: r.attributions.numpy() for r in table.rows}, masks.numpy()),
    ]
    for i, figure in enumerate(figures):
        assert isinstance(figure, Figure)
        figure.savefig(tmp_path / f"{i}.png")


# --- CLI ----------------------------------------------------------------------------------


def test_cli_evaluates_a_run(tiny_run, tmp_path, capsys) -> None:
    out = tmp_path / "evaluation"
    assert (
        main(
            [
                "evaluate",
                str(tiny_run),
                "--images",
                "2",
                "--methods",
                "gradient,integrated",
                "--tolerance",
                "0.05",
                "--steps",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "gradient" in printed and "integrated" in printed and "del AUC" in printed
    numbers = json.loads((out / "evaluation.json").read_text())
    assert set(numbers["methods"]) == {"gradient", "integrated"}
    assert len(numbers["methods"]["integrated"]["deletion"]["fractions"]) == 5
    assert len(numbers["methods"]["integrated"]["randomisation"]["layers"]) == 9
    assert numbers["methods"]["gradient"]["summary"]["completeness_error"] is None
    # the same integrated gradients as the report's section 5: tolerance mode, same figure
    from mindscope.baselines import black
    from mindscope.run import load_run

    run = load_run(tiny_run)
    x = run.data.inputs(run.data.test, [0, 1])
    reference = integrated_gradients(run.model, x, baseline=black(x, run.data.normalization), tolerance=0.05)
    relative = reference.relative_completeness_error.numpy()
    ill = np.zeros(2, bool) if reference.ill_conditioned is None else reference.ill_conditioned.numpy()
    worst = relative[~ill].max()
    assert f"integrated: worst relative completeness error {worst:.3%} over {int((~ill).sum())} " in printed
    assert numbers["methods"]["integrated"]["summary"]["completeness_error"] == pytest.approx(worst, rel=1e-12)
    assert "compares the maps on the pixels that can carry attribution, where the image differs" in printed
    for name in ("randomisation.png", "deletion.png", "localisation.png", "maps.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "gradient,lime"], "unknown method 'lime'"),
        (["--images", "0"], "--images must be at least 1"),
        (["--alpha", "1.5"], "--alpha must lie in"),
        (["--tolerance", "2"], "--tolerance must lie in (0, 1)"),
        (["--ig-points", "16"], "--ig-points is no longer used: integrated gradients refine each path to --tolerance"),
    ],
)
def test_cli_rejects_bad_input(tiny_run, tmp_path, capsys, args, message) -> None:
    assert main(["evaluate", str(tiny_run), "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_a_missing_run(tmp_path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "mindscope: error:" in capsys.readouterr().err


# --- the captions say which way is better, from the numbers ----------------------------------


def _row(name: str, deletion: np.ndarray, insertion: np.ndarray, random_del: np.ndarray, random_ins: np.ndarray):
    from mindscope.evaluation import DeletionResult, MethodEvaluation, RandomisationResult

    fractions = np.linspace(0, 1, deletion.shape[1])
    rand = RandomisationResult(("0",), np.ones((2, 1)), np.ones((2, 1)), 0.5)
    dele = DeletionResult(fractions, deletion, insertion, random_del, random_ins, np.zeros(1, dtype=np.int64))
    return MethodEvaluation(name, torch.zeros(1, 1, 2, 2), rand, dele, None, None)


def test_the_chance_caption_says_which_way_is_better_and_who_beat_chance() -> None:
    from mindscope.report.methods import chance_verdicts

    falling, flat = np.array([[1.0, 0.2, 0.0]]), np.array([[1.0, 0.6, 0.2]])  # deletion curves
    rising, slow = np.array([[0.0, 0.9, 1.0]]), np.array([[0.0, 0.3, 0.9]])  # insertion curves
    table = EvaluationTable(
        (
            _row("good", falling, rising, flat, slow),  # deletes faster and inserts faster than random
            _row("bad", flat, slow, falling, rising),  # the demo's case: deletion area above random
        ),
        0.5,
    )
    text = chance_verdicts(table)
    area = lambda c: float(np.trapezoid(c[0], np.linspace(0, 1, 3)))  # noqa: E731
    assert "LOWER area is better" in text and "HIGHER area is better" in text
    assert "negative is good" not in text
    deletion, insertion = text.split("Insertion")
    assert f"good {area(falling):.3f} vs random {area(flat):.3f}: {area(flat) - area(falling):+.3f}, beats chance" in (
        deletion
    )
    assert f"bad {area(flat):.3f} vs random {area(falling):.3f}: {area(falling) - area(flat):+.3f}, worse than" in (
        deletion
    )
    assert f"good {area(rising):.3f} vs random {area(slow):.3f}: {area(rising) - area(slow):+.3f}, beats" in insertion
    assert "bad" in insertion and "worse than chance" in insertion.split("bad")[1]


def test_the_completeness_summary_names_what_was_set_aside() -> None:
    from mindscope.evaluation import CompletenessResult
    from mindscope.report.methods import completeness_summary

    comp = CompletenessResult(
        np.array([1e-5, 3e-5, 2e-5]),
        np.array([0.002, 19.0, 0.004]),
        np.array([False, True, False]),
        np.array([True, True, False]),
    )
    text = completeness_summary(comp, [7, 23, 40])
    assert text.startswith("worst relative completeness error 0.400% over 2 well-conditioned images")
    assert "1 set aside as ill-conditioned" in text
    assert "image 23: nothing to explain: the baseline already scores F(x)" in text
    assert "image 40: not converged" in text and "image 7" not in text
    alone = CompletenessResult(np.array([1e-5]), np.array([19.0]), np.array([True]), np.array([True]))
    assert completeness_summary(alone, [23]).startswith("no well-conditioned image")
