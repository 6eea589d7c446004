"""The data must fit an outside model: its input size is the data's when none was given, its classes fit.

The references are the PNG files as Pillow and numpy read them and networks built here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mindscope.subject import open_subject

FACTORY = """
from torch import nn

def grey():  # one channel in, any size: the size comes from wherever it is given
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))

def rows():
    return nn.Sequential(nn.Linear(6, 3))
"""


def grey() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


class ChannelsLast(nn.Module):
    """A grey network that takes (N, H, W, 1), as a Keras model does."""

    def __init__(self) -> None:
        super().__init__()
        self.net = grey()

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


def image_folder(root, classes, shape, seed=0):
    """Class folders of PNGs; shape (H, W) is grey, (H, W, 3) is RGB."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def models(tmp_path):
    torch.manual_seed(0)
    (tmp_path / "nets.py").write_text(FACTORY)
    torch.save(grey().state_dict(), tmp_path / "grey.pt")
    torch.save(nn.Sequential(nn.Linear(6, 3)).state_dict(), tmp_path / "rows.pt")
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    torch.jit.script(rgb).save(str(tmp_path / "rgb.ts"))
    torch.jit.script(ChannelsLast()).save(str(tmp_path / "nhwc.ts"))
    return {
        "grey": dict(model=f"python:{tmp_path / 'nets.py'}:grey", weights=tmp_path / "grey.pt"),
        "rows": dict(model=f"python:{tmp_path / 'nets.py'}:rows", weights=tmp_path / "rows.pt"),
        "rgb": dict(model=f"torch:{tmp_path / 'rgb.ts'}"),
        "nhwc": dict(model=f"torch:{tmp_path / 'nhwc.ts'}"),
    }


def test_without_an_input_size_a_grey_model_is_fed_the_folders_own_size(models, tmp_path):
    folder = image_folder(tmp_path / "g", "abc", (12, 10))
    subject = open_subject(**models["grey"], data=f"folder:{folder}")
    assert subject.image_shape == (1, 12, 10) and subject.card.input_shape == (1, 12, 10)
    first = np.asarray(Image.open(folder / "a" / "0.png"))  # (H, W) grey, as Pillow reads it
    assert subject.data.test.images.shape == (6, 1, 12, 10)
    np.testing.assert_array_equal(subject.data.test.images[0, 0].numpy(), first)
    (line,) = [line for line in subject.describe() if line.startswith("assumed")]
    assert f"input_shape 1x12x10 (from the first image, {folder / 'a' / '0.png'})" in line


def test_a_channels_last_model_without_an_input_size_gets_the_data_size_in_its_own_layout(models, tmp_path):
    folder = image_folder(tmp_path / "g", "abc", (12, 10))
    subject = open_subject(**models["nhwc"], card={"layout": "NHWC"}, data=f"folder:{folder}")
    assert subject.card.input_shape == (12, 10, 1) and subject.image_shape == (1, 12, 10)
    x = subject.data.inputs(subject.data.test)  # (N, C, H, W): the hook permutes it for the model
    reference = torch.jit.load(models["nhwc"]["model"].partition(":")[2])
    torch.testing.assert_close(subject.model(x), reference(x.permute(0, 2, 3, 1)))


def test_a_model_that_fails_on_the_data_size_says_the_assumed_shape_and_the_flag(models, tmp_path):
    folder = image_folder(tmp_path / "g", "abc", (12, 10))
    message = (
        r"fails on a zero batch of shape \(2, 1, 12, 10\) \(NCHW 1x12x10, assumed from the first image, .*0\.png\): "
        r"RuntimeError: .*channels.*; give the input size the model expects \(--input-size"
    )
    with pytest.raises(ValueError, match=message):
        open_subject(**models["rgb"], data=f"folder:{folder}")
    rgb = image_folder(tmp_path / "rgb", "abc", (12, 10, 3))
    assert open_subject(**models["rgb"], data=f"folder:{rgb}").image_shape == (3, 12, 10)


def test_a_photo_sized_first_image_is_not_taken_for_the_input_size(models, tmp_path):
    folder = image_folder(tmp_path / "big", "ab", (1100, 1000))
    with pytest.raises(ValueError, match=r"the first image, .* is 1100x1000 pixels: .*give --input-size"):
        open_subject(**models["grey"], data=f"folder:{folder}")
    given = open_subject(**models["grey"], card={"input_shape": [1, 16, 16]}, data=f"folder:{folder}")
    assert given.image_shape == (1, 16, 16)


def test_images_cannot_feed_a_model_that_takes_rows(models, tmp_path):
    folder = image_folder(tmp_path / "g", "abc", (12, 10))
    card = {"layout": "NF", "input_shape": [6]}
    with pytest.raises(ValueError, match=r"holds images, \(N, C, H, W\), but the model takes NF input 6 \(rows"):
        open_subject(**models["rows"], card=card, data=f"folder:{folder}")
    assert open_subject(**models["rows"], card=card).image_shape is None  # without data it opens


def test_a_folder_with_more_classes_than_outputs_is_refused(models, tmp_path):
    four = image_folder(tmp_path / "four", "abcd", (12, 10))
    with pytest.raises(ValueError, match=r"has 4 classes \(a, b, c, d\) but the model returns 3 scores per example"):
        open_subject(**models["grey"], data=f"folder:{four}")
    with pytest.raises(ValueError, match=r"has 4 classes .* returns 3 scores"):  # the size given: same check
        open_subject(**models["grey"], card={"input_shape": [1, 12, 10]}, data=f"folder:{four}")
    named = open_subject(**models["grey"], card={"classes": ["d", "b", "a"]}, data=f"folder:{tmp_path / 'four'}")
    with pytest.raises(ValueError, match="the data's class 'c' is not one of the model's classes"):
        named.data.test  # noqa: B018 - matched by name, c has no output
    three = image_folder(tmp_path / "three", "abc", (12, 10))
    assert open_subject(**models["grey"], data=f"folder:{three}").classes == ("a", "b", "c")
