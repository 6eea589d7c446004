"""A run or an outside model opens as one Subject; the card's range and mean/std fold into one map."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mindscope.subject import normalization_from_card, open_subject


def test_a_run_opens_with_its_own_model_data_and_normalisation(tiny_run):
    subject = open_subject(tiny_run)
    assert subject.is_run and subject.source == f"run:{tiny_run}"
    assert subject.image_shape == (3, 32, 32)
    assert subject.normalization == subject.run.data.normalization
    same = open_subject(model=f"run:{tiny_run}")
    assert same.classes == subject.classes and same.run.epoch == subject.run.epoch
    assert subject.describe() == [f"model: run {tiny_run} at epoch {subject.run.epoch}"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "give a run directory, or --model SPEC"),
        ({"run_dir": "a", "model": "torch:b.pt2"}, "not both"),
    ],
)
def test_the_source_is_one_run_or_one_model(kwargs, message):
    with pytest.raises(ValueError, match=message):
        open_subject(**kwargs)


def test_an_outside_model_has_no_epochs(tiny_run):
    with pytest.raises(ValueError, match="--weights and --card are for outside models"):
        open_subject(tiny_run, weights="w.safetensors")


@pytest.mark.parametrize(
    "pixel_range, mean, std",
    [
        ((0.0, 255.0), (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
        ((0.0, 1.0), None, None),
        ((-1.0, 1.0), (0.0,), (1.0,)),
    ],
)
def test_the_card_folds_into_the_input_the_model_was_trained_on(pixel_range, mean, std):
    card = SimpleNamespace(pixel_range=pixel_range, mean=mean, std=std)
    pixels = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    lo, hi = pixel_range
    raw = lo + (hi - lo) * pixels  # what the model saw in training, before its mean/std
    m = torch.tensor(mean or (0.0,) * 3, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std or (1.0,) * 3, dtype=torch.float64).view(1, -1, 1, 1)
    expected = (raw - m) / s
    torch.testing.assert_close(normalization_from_card(card, 3).apply(pixels), expected)
