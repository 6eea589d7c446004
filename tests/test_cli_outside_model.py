"""Every command refuses an outside model that cannot be looked at with one line and exit status 2.

Broken weights, broken user code, data that does not fit the model: what the user can fix is
one line that says how, and nothing is written.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mindscope.cli import main
from test_subject_data_fit import FACTORY, grey  # the same user code: a grey net and a rows net


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """The user trial's material: models, a NaN state dict, broken code, grey image folders of 3 and 4 classes."""
    root = tmp_path_factory.mktemp("trial")
    torch.manual_seed(0)
    (root / "nets.py").write_text(FACTORY)
    net = grey()
    torch.save(net.state_dict(), root / "grey.pt")
    state = net.state_dict()
    state["0.weight"][0, 0, 0, 0] = math.nan
    torch.save(state, root / "nan.pt")
    torch.save(nn.Sequential(nn.Linear(6, 3)).state_dict(), root / "rows.pt")
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    torch.jit.script(rgb).save(str(root / "rgb.ts"))
    (root / "syn.py").write_text("import torch\ndef f(:\n  pass\n")
    rng = np.random.default_rng(0)
    for folder, classes in (("g3", "abc"), ("g4", "abcd")):
        for name in classes:
            (root / folder / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(root / folder / name / f"{i}.png")
    return root


def run(argv, capsys):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def refused(argv, words, capsys, out=None):
    status, _, err = run(argv, capsys)
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("mindscope: error: ") and words in err, err
    assert out is None or not out.exists()


def grey_model(trial, weights="grey.pt"):
    return ["--model", f"python:{trial / 'nets.py'}:grey", "--weights", trial / weights]


def test_nan_weights_are_refused_by_every_command(trial, tmp_path, capsys):
    out = tmp_path / "out"
    given = [*grey_model(trial, "nan.pt"), "--input-size", "1x12x10"]
    words = "holds NaN in parameter '0.weight' (1 of 36 values)"
    refused(["attribute", *given, "--data", f"folder:{trial / 'g3'}", "--image", "0", "--out", out], words, capsys, out)
    refused(["weights", *given, "--out", out], words, capsys, out)
    refused(["layers", *grey_model(trial, "nan.pt")], words, capsys)  # no input size: refused all the same


def test_without_an_input_size_the_layers_are_listed_at_the_folders_size(trial, capsys):
    status, out, err = run(["layers", *grey_model(trial), "--data", f"folder:{trial / 'g3'}"], capsys)
    assert status == 0, err
    conv = grey()[0](torch.zeros(1, 1, 12, 10))  # the reference: the layer's own output at the folder's size
    assert "x".join(map(str, conv.shape[1:])) == "4x12x10" and "4x12x10" in out
    assert "input_shape 1x12x10 (from the first image" in out


def test_a_model_that_fails_on_the_assumed_size_is_one_line(trial, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["activations", "--model", f"torch:{trial / 'rgb.ts'}", "--data", f"folder:{trial / 'g3'}"]
    refused([*argv, "--image", "0", "--out", out], "fails on a zero batch of shape (2, 1, 12, 10)", capsys, out)


def test_images_for_a_row_model_are_one_line(trial, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["attribute", "--model", f"python:{trial / 'nets.py'}:rows", "--weights", trial / "rows.pt"]
    argv += ["--layout", "NF", "--input-size", "6", "--data", f"folder:{trial / 'g3'}", "--image", "0", "--out", out]
    refused(argv, "holds images, (N, C, H, W), but the model takes NF input 6", capsys, out)


def test_more_classes_in_the_folder_than_outputs_is_one_line(trial, tmp_path, capsys):
    out = tmp_path / "out"
    given = [*grey_model(trial), "--input-size", "1x12x10", "--data", f"folder:{trial / 'g4'}"]
    refused(["report", *given, "--out", out], "has 4 classes (a, b, c, d) but the model returns 3 scores", capsys, out)
    words = "--classes (or card= in Python) names 2 classes (a, b) but the model returns 3 scores"
    refused(["report", *given, "--classes", "a,b", "--out", out], words, capsys, out)


def test_a_python_file_with_a_syntax_error_is_one_line(trial, capsys):
    words = f"importing {trial / 'syn.py'} failed: SyntaxError: invalid syntax (line 2)"
    refused(["layers", "--model", f"python:{trial / 'syn.py'}:f", "--weights", trial / "grey.pt"], words, capsys)


def test_an_input_size_that_is_not_numbers_shows_the_format(trial, capsys):
    refused(["layers", *grey_model(trial), "--input-size", "abc"], "--input-size must be numbers like 3x32x32", capsys)


def test_the_dataset_mean_baseline_of_an_outside_model_is_its_datas_mean_pixel(trial, tmp_path, capsys):
    from mindscope.attribution import integrated_gradients
    from mindscope.baselines import named
    from mindscope.report.baseline import data_pixel_mean
    from mindscope.subject import open_subject

    folder = trial / "g3"
    model = ["--model", f"python:{trial / 'nets.py'}:grey", "--weights", str(trial / "grey.pt")]
    subject = open_subject(model=model[1], weights=model[3], data=f"folder:{folder}")
    pngs = sorted(folder.glob("*/*.png"))
    pixel_mean = np.mean([np.asarray(Image.open(p), dtype=np.float64) / 255 for p in pngs])  # numpy, all images
    assert data_pixel_mean(subject) == pytest.approx((pixel_mean,), abs=1e-7)  # pixels are float32
    x = subject.inputs(subject.data.test.pixels([0]))
    grey = named("mean", subject.normalization, pixel_mean=data_pixel_mean(subject))(x)
    torch.testing.assert_close(grey, torch.full_like(x, pixel_mean), rtol=0, atol=1e-6)  # no mean/std: as pixels
    expected = integrated_gradients(subject.model, x, baseline=grey, tolerance=0.01)
    for baseline in ("black", "mean"):
        args = ["attribute", *model, "--data", f"folder:{folder}", "--image", "0", "--method", "integrated"]
        assert main([*args, "--baseline", baseline, "--tolerance", "0.01", "--out", str(tmp_path / baseline)]) == 0
    black, mean = [line for line in capsys.readouterr().out.splitlines() if "completeness error" in line]
    assert black != mean  # the mean baseline was black before: the card has no mean
    assert f"(abs {float(expected.completeness_error[0]):.3g}); steps {int(expected.steps[0])}" in mean


def test_the_dashboard_takes_the_same_mean_pixel_and_without_data_the_mean_baseline_is_refused(trial):
    from mindscope.report.baseline import data_pixel_mean
    from mindscope.serve.attribution_views import BASELINES
    from mindscope.serve.catalog import Entry
    from mindscope.subject import open_subject

    folder = trial / "g3"
    spec, weights = f"python:{trial / 'nets.py'}:grey", trial / "grey.pt"
    subject = open_subject(model=spec, weights=weights, data=f"folder:{folder}")
    entry = Entry("grey", subject)
    assert entry.pixel_mean() == data_pixel_mean(subject)
    x = subject.inputs(subject.data.test.pixels([0]))
    grey = BASELINES["mean"][1](x, subject.normalization, entry.pixel_mean())
    torch.testing.assert_close(grey, torch.full_like(x, data_pixel_mean(subject)[0]), rtol=0, atol=1e-6)
    without_data = open_subject(model=spec, weights=weights, card={"input_shape": (1, 12, 10)})
    with pytest.raises(ValueError, match="the dataset-mean baseline is the mean pixel of the data, and no data"):
        data_pixel_mean(without_data)
    with_mean = open_subject(model=spec, weights=weights, card={"input_shape": (1, 12, 10), "mean": [0.3], "std": [1]})
    assert data_pixel_mean(with_mean) is None  # the card's mean is the model's own data's mean pixel
