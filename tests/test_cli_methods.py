"""`mindscope attribute --method gradcam|layer-integrated|occlusion`, `visualise`, `evaluate --methods`."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from mindscope.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_gradcam_names_its_default_layer_and_prints_the_maps_it_draws(tiny_run, tmp_path, capsys) -> None:
    from mindscope.attribution import grad_cam
    from mindscope.run import load_run

    status, out, _ = run_cli(["attribute", str(tiny_run), "--image", "0", "--image", "2", "--method", "gradcam"]
                             + ["--out", str(tmp_path)], capsys)  # fmt: skip
    assert status == 0 and (tmp_path / "gradcam_features.18_0_2.png").is_file()
    assert "Grad-CAM of layer features.18 (the last with a spatial output)" in out
    status, _, _ = run_cli(["attribute", str(tiny_run), "--image", "0", "--image", "2", "--method", "gradcam"]
                           + ["--layer", "features.12", "--out", str(tmp_path)], capsys)  # fmt: skip
    assert status == 0  # another layer's figure does not overwrite the first
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["gradcam_features.12_0_2.png", "gradcam_features.18_0_2.png"]
    run = load_run(tiny_run)
    expected = grad_cam(run.model, run.data.inputs(run.data.test, [0, 2]))
    printed = [float(m) for m in re.findall(r"map max (\S+)", out)]
    assert printed == pytest.approx(expected.maps.flatten(1).amax(1).tolist(), rel=2e-3)


def test_layer_integrated_resolves_a_layer_number_and_writes_one_figure_per_image(tiny_run, tmp_path, capsys) -> None:
    args = ["attribute", str(tiny_run), "--image", "0", "--image", "1", "--method", "layer-integrated"]
    status, out, _ = run_cli(args + ["--layer", "L6", "--tolerance", "0.05", "--out", str(tmp_path)], capsys)
    assert status == 0
    assert "layer L6 -> features.12" in out  # the ELU after convolution 6
    errors = [float(e) for e in re.findall(r"completeness error (\S+)%", out)]
    assert len(errors) == 2 and all(e < 5 for e in errors)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["layer-integrated_features.12_0.png", "layer-integrated_features.12_1.png"]


def test_occlusion_counts_its_windows(tiny_run, tmp_path, capsys) -> None:
    args = ["attribute", str(tiny_run), "--image", "0", "--method", "occlusion", "--window", "8", "--stride", "8"]
    status, out, _ = run_cli(args + ["--out", str(tmp_path)], capsys)
    assert status == 0 and (tmp_path / "occlusion_0.png").is_file()
    assert "steps 17" in out  # 4 x 4 windows of 8 pixels on a 32x32 image, and x itself


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "gradcam", "--layer", "L99"], "no layer L99; layer numbers run from 1 to 9"),
        (["--method", "layer-integrated"], "--method layer-integrated needs --layer"),
        (["--method", "gradcam", "--layer", "features.20"], "layer 'features.20' gives output of shape"),
        (["--method", "integrated", "--layer", "L3"], "--layer applies to --method gradcam or layer-integrated"),
        (["--method", "occlusion", "--window", "0"], "--window must be a positive integer, got 0"),
    ],
)
def test_bad_layers_and_windows_are_one_line_and_exit_2(tiny_run, tmp_path, capsys, extra, message) -> None:
    status, _, err = run_cli(["attribute", str(tiny_run), "--image", "0", "--out", str(tmp_path), *extra], capsys)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("mindscope: error: ") and message in err


def test_visualise_writes_a_grid_and_one_png_per_channel(tiny_run, tmp_path, capsys) -> None:
    from mindscope.run import load_run
    from mindscope.visualisation import feature_visualisation

    args = ["visualise", str(tiny_run), "--layer", "L3", "--channels", "0-1,3", "--steps", "4", "--out", str(tmp_path)]
    status, out, _ = run_cli(args, capsys)
    assert status == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"features_5_channel_{c}.png" for c in (0, 1, 3)] + ["features_5_grid.png"]
    with Image.open(tmp_path / "features_5_channel_3.png") as png:
        assert png.size == (128, 128)  # 32x32 pixels, 4x each
    run = load_run(tiny_run)
    same = feature_visualisation(run.model, "features.5", [0, 1, 3], steps=4, normalise=run.data.normalization.apply)
    printed = [float(v) for v in re.findall(r"mean activation reached (\S+)", out)]
    assert printed == pytest.approx(same.activations.tolist(), rel=1e-3)
    with Image.open(tmp_path / "features_5_channel_0.png") as png:
        pixels = torch.tensor(list(png.getdata()), dtype=torch.float64).view(128, 128, 3)[::4, ::4] / 255
    torch.testing.assert_close(pixels.permute(2, 0, 1), same.images[0].double(), atol=0.5 / 255 + 1e-6, rtol=0)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "L3", "--channels", "0-8"], "channel 8 is not in layer 'features.5', which has channels 0..7"),
        (["--layer", "L3", "--channels", "3-1"], "--channels range 3-1 runs backwards"),
        (["--layer", "nope"], "no layer 'nope'"),
    ],
)
def test_visualise_refuses_bad_input_in_one_line(tiny_run, tmp_path, capsys, extra, message) -> None:
    status, _, err = run_cli(["visualise", str(tiny_run), "--steps", "1", "--out", str(tmp_path), *extra], capsys)
    assert status == 2 and err.count("\n") == 1 and message in err


@pytest.mark.slow
def test_evaluate_runs_the_trust_checks_on_gradcam_and_occlusion(tiny_run, tmp_path, capsys) -> None:
    args = ["evaluate", str(tiny_run), "--methods", "gradient,gradcam,occlusion", "--images", "2"]
    status, out, _ = run_cli(args + ["--out", str(tmp_path)], capsys)
    assert status == 0
    rows = [line.split()[0] for line in out.splitlines() if line.split()[:1] in (["gradcam"], ["occlusion"])]
    assert rows == ["gradcam", "occlusion"]
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert list(saved["methods"]) == ["gradient", "gradcam", "occlusion"]
    assert saved["methods"]["gradcam"]["completeness"] is None  # Grad-CAM makes no completeness claim
    status, _, err = run_cli(["evaluate", str(tiny_run), "--methods", "gradcam,lime"], capsys)
    assert status == 2 and "unknown method 'lime' in --methods" in err


def test_figures_of_other_images_do_not_overwrite_each_other(tiny_run, tmp_path, capsys) -> None:
    from mindscope.cli.attribute_layers import figure_path

    for image in ("3", "5"):
        args = ["attribute", str(tiny_run), "--image", image, "--method", "gradient", "--out", str(tmp_path)]
        assert run_cli(args, capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["gradient_3.png", "gradient_5.png"]
    many = [str(i) for i in range(6)]
    other = many[:2] + ["9"] + many[3:]
    assert figure_path(tmp_path, "integrated", many) != figure_path(tmp_path, "integrated", other)
    assert figure_path(tmp_path, "integrated", many).name.startswith("integrated_0-5_6-images-")
