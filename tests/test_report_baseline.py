"""The report starts its paths from a baseline the model does not already classify, and says what each scored."""

from __future__ import annotations

import torch
from torch import nn

from mindscope.data import Normalization
from mindscope.report.baseline import CONFIDENT, choose_baseline

NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
CLASSES = ("square", "circle", "star", "ring")


class DarkIsSquare(nn.Module):
    """Logit of 'square' grows as the image gets darker: black (-2 after normalising) is a sure square."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(gain))

    def forward(self, x):
        darkness = -x.mean(dim=(1, 2, 3))  # 2 for black, 0 for the mean grey
        zero = torch.zeros_like(darkness)
        return torch.stack([self.gain * darkness, zero, zero, zero], dim=1)


def expected_probability(gain: float, darkness: float) -> float:
    e = float(torch.tensor(gain * darkness).exp())  # softmax of (g d, 0, 0, 0)
    return e / (e + 3)


def test_black_stays_while_the_model_is_not_sure_of_it():
    chosen = choose_baseline(DarkIsSquare(0.1), NORM, (3, 4, 4), CLASSES)
    assert chosen.name == "black image"
    assert chosen.scores["black image"][1] == __import__("pytest").approx(expected_probability(0.1, 2.0))
    assert chosen.scores["black image"][1] <= CONFIDENT
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(chosen.make(x), torch.full_like(x, -2.0))


def test_a_baseline_the_model_already_classifies_is_replaced_and_the_page_says_why():
    chosen = choose_baseline(DarkIsSquare(5.0), NORM, (3, 4, 4), CLASSES)
    p_black = expected_probability(5.0, 2.0)  # 0.9999: black is a square to this model
    assert chosen.scores["black image"] == ("square", __import__("pytest").approx(p_black))
    assert chosen.name == "dataset-mean grey image"  # darkness 0: p = 0.25 for every class
    text = chosen.describe()
    assert f"black image → 'square' (p = {p_black:.3f})" in text
    assert text.startswith("Baseline: the dataset-mean grey image")
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(chosen.make(x), torch.zeros_like(x))  # (0.5 - 0.5) / 0.25
