"""A model trained elsewhere, through every command and the report, checked against the torch network.

The same small CNN is saved as a torch.export program, ONNX, Python code with safetensors
weights and (where keras is installed) a Keras model with the weights copied over. Each
source must give the torch network's predictions and maps through `open_subject`, run every
command, and write a report whose accuracy is the one the torch network scores.
"""

from __future__ import annotations

import json
import re
import warnings
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mindscope.activations import capture_activations
from mindscope.attribution import integrated_gradients
from mindscope.cli import main
from mindscope.layers import explain_layer
from mindscope.subject import open_subject
from test_report import check_in_chromium

CLASSES = ("cat", "ant", "bee")  # not the folders' sorted order: labels must be matched by name
FACTORY = """
from collections import OrderedDict
from torch import nn

def make():
    return nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 4, 3, padding=1), relu1=nn.ReLU(), conv2=nn.Conv2d(4, 6, 3),
                         relu2=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(6, 3)))
"""
# the card every source gets: trained on 0..255 pixels with these statistics
CARD = {"pixel_range": [0, 255], "mean": [120.0, 110.0, 100.0], "std": [60.0, 50.0, 70.0], "classes": list(CLASSES)}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder of 8x8 PNGs in class folders, in an order unlike the model's classes."""
    root = tmp_path_factory.mktemp("own_images")
    rng = np.random.default_rng(3)
    for name in ("cat", "ant", "bee"):
        (root / name).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def card_flags(shape: str) -> list[str]:
    return [
        "--input-size",
        shape,
        "--pixel-range",
        "0,255",
        "--mean",
        "120,110,100",
        "--std",
        "60,50,70",
        "--classes",
        ",".join(CLASSES),
    ]


@pytest.fixture(scope="module")
def sources(small_cnn, tmp_path_factory) -> dict[str, tuple[str, list[str]]]:
    """spec and extra flags per source; the card comes as flags, the same facts each time."""
    folder = tmp_path_factory.mktemp("own_models")
    x = torch.randn(2, 3, 8, 8)
    program = torch.export.export(small_cnn, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, folder / "cnn.pt2")
    (folder / "nets.py").write_text(FACTORY)
    save_file(small_cnn.state_dict(), str(folder / "cnn.safetensors"))
    found = {
        "torch": (f"torch:{folder / 'cnn.pt2'}", card_flags("3x8x8")),
        "python": (
            f"python:{folder / 'nets.py'}:make",
            ["--weights", str(folder / "cnn.safetensors")] + card_flags("3x8x8"),
        ),
    }
    if _importable("onnx"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                small_cnn,
                (x,),
                str(folder / "cnn.onnx"),
                dynamo=False,
                dynamic_axes={"input": {0: "n"}},
                input_names=["input"],
            )
        found["onnx"] = (f"onnx:{folder / 'cnn.onnx'}", card_flags("3x8x8"))
    if _importable("keras"):
        found["keras"] = (f"keras:{_keras_copy(small_cnn, folder)}", card_flags("8x8x3") + ["--layout", "NHWC"])
    return found


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _keras_copy(net, folder: Path) -> Path:
    """The same network in Keras (channels last), with the torch weights copied over."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    inputs = keras.Input((8, 8, 3))
    layers = [
        keras.layers.Conv2D(4, 3, padding="same", name="conv1"),
        keras.layers.ReLU(name="relu1"),
        keras.layers.Conv2D(6, 3, name="conv2"),
        keras.layers.ReLU(name="relu2"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(3, name="fc"),
    ]
    h = inputs
    for layer in layers:
        h = layer(h)
    model = keras.Model(inputs, h)
    for layer in layers:
        if layer.weights:
            torch_layer = getattr(net, layer.name)
            w = torch_layer.weight.detach()
            kernel = w.permute(2, 3, 1, 0) if w.dim() == 4 else w.T
            layer.set_weights([kernel.numpy(), torch_layer.bias.detach().numpy()])
    path = folder / "cnn.keras"
    model.save(path)
    return path


def reference_inputs(images: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image as the torch network was trained to see it, and its label in the model's class order."""
    xs, ys = [], []
    for name in sorted(p.name for p in images.iterdir()):
        for file in sorted((images / name).iterdir()):
            raw = torch.tensor(np.asarray(Image.open(file)), dtype=torch.float64).permute(2, 0, 1)
            mean = torch.tensor(CARD["mean"], dtype=torch.float64).view(3, 1, 1)
            std = torch.tensor(CARD["std"], dtype=torch.float64).view(3, 1, 1)
            xs.append((raw - mean) / std)
            ys.append(CLASSES.index(name))
    return torch.stack(xs).float(), torch.tensor(ys)


KINDS = ["torch", "python", "onnx", "keras"]


def _source(sources, kind):
    if kind not in sources:
        pytest.skip(f"{kind} is not installed")
    return sources[kind]


def _card(flags: list[str]) -> dict:
    pairs = dict(zip(flags[::2], flags[1::2]))
    card = dict(CARD)
    card["input_shape"] = [int(v) for v in pairs["--input-size"].split("x")]
    if "--layout" in pairs:
        card["layout"] = pairs["--layout"]
    return card


@pytest.mark.parametrize("kind", KINDS)
def test_each_source_sees_the_images_as_the_torch_network_does(kind, sources, images, small_cnn):
    spec, flags = _source(sources, kind)
    weights = flags[flags.index("--weights") + 1] if "--weights" in flags else None
    subject = open_subject(model=spec, weights=weights, card=_card(flags), data=f"folder:{images}")
    assert subject.classes == CLASSES and not {"pixel_range", "mean", "std"} & set(subject.assumed)
    test = subject.data.test
    x = subject.inputs(test.pixels())
    expected_x, expected_y = reference_inputs(images)
    # the same images, normalised as the card says, labelled in the model's class order
    assert torch.equal(test.labels, expected_y)
    torch.testing.assert_close(x, expected_x, atol=1e-5, rtol=0)
    torch.testing.assert_close(subject.model(x), small_cnn(x), rtol=1e-4, atol=1e-5)
    mine = integrated_gradients(subject.model, x[:2], 0, tolerance=0.01)
    ref = integrated_gradients(small_cnn, x[:2], 0, tolerance=0.01)
    torch.testing.assert_close(mine.attributions, ref.attributions, rtol=1e-3, atol=1e-5)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_every_command_runs_on_each_source(kind, sources, images, tmp_path, capsys, small_cnn):
    spec, flags = _source(sources, kind)
    given = ["--model", spec, *flags]
    data = ["--data", f"folder:{images}"]
    status, out, err = run(["layers", *given], capsys)
    assert status == 0, err
    assert "conv1" in out and f"total parameters: {sum(p.numel() for p in small_cnn.parameters()):,}" in out
    status, out, err = run(["weights", *given, "--out", str(tmp_path / "w")], capsys)
    assert status == 0, err
    assert "no training history" in out and (tmp_path / "w" / "weights_1.png").is_file()
    layer = "relu1" if kind != "onnx" else "relu1_Relu"
    status, out, err = run(
        ["activations", *given, *data, "--image", "0", "--layers", layer, "--out", str(tmp_path / "a")], capsys
    )
    assert status == 0, err
    assert "pixels scaled to 0..255" in out and (tmp_path / "a" / "layers.gif").is_file()
    png = images / "bee" / "0.png"
    status, out, err = run(["attribute", *given, "--image", str(png), "--out", str(tmp_path / "ig")], capsys)
    assert status == 0, err
    x, _ = reference_inputs(images)
    probabilities = small_cnn(x[4:5]).softmax(1)[0]  # bee/0.png: the 5th image in name order
    predicted = int(probabilities.argmax())
    assert f"{png.name}: predicted {CLASSES[predicted]} ({float(probabilities[predicted]):.3f})" in out
    status, out, err = run(["evaluate", *given, *data, "--images", "2", "--out", str(tmp_path / "e")], capsys)
    assert status == 0, err
    assert (tmp_path / "e" / "evaluation.json").is_file()
    conv = "conv1" if kind != "onnx" else "conv1_Conv"
    status, out, err = run(["visualise", *given, "--layer", conv, "--channels", "0-1", "--steps", "8",
                            "--out", str(tmp_path / "v")], capsys)  # fmt: skip
    assert status == 0, err
    assert (tmp_path / "v" / f"{conv}_grid.png").is_file()
    if _importable("pyarrow"):
        status, out, err = run(["scan", *given, *data, "--methods", "gradient", "--out", str(tmp_path / "s")], capsys)
        assert status == 0, err
        from mindscope.scan import open_scan

        table = open_scan(tmp_path / "s").table()
        x, y = reference_inputs(images)
        assert len(table) == 12 and table["label"].tolist() == y.tolist()
        assert table["prediction"].tolist() == small_cnn(x).argmax(1).tolist()


@pytest.mark.parametrize("kind", ["python", "onnx"])
def test_a_scan_takes_the_card_as_flags_or_as_a_file_and_they_are_one_scan(kind, sources, images, tmp_path, capsys,
                                                                             small_cnn):  # fmt: skip
    pytest.importorskip("pyarrow")
    from mindscope.scan import open_scan

    spec, flags = _source(sources, kind)
    weights = flags[flags.index("--weights") : flags.index("--weights") + 2] if "--weights" in flags else []
    card = tmp_path / "card.json"
    card.write_text(json.dumps(_card(flags)))
    common = ["scan", "--model", spec, *weights, "--data", f"folder:{images}", "--methods", "gradient,integrated",
              "--steps", "8", "--layers", "none", "--shard-size", "8"]  # fmt: skip
    by_flags = [*common, *[f for f in flags if f not in weights]]
    by_file = [*common, "--card", str(card)]
    for argv, out in ((by_flags, "flags"), (by_file, "file")):
        status, _, err = run([*argv, "--out", str(tmp_path / out)], capsys)
        assert status == 0, err
    a, b = open_scan(tmp_path / "flags"), open_scan(tmp_path / "file")
    assert a.table().drop(columns="seconds").equals(b.table().drop(columns="seconds"))
    assert torch.equal(a.maps(range(12), "integrated"), b.maps(range(12), "integrated"))
    x, y = reference_inputs(images)  # the card's normalisation, done here: the model saw these inputs
    table = a.table()[lambda t: t["method"] == "gradient"]
    assert table["label"].tolist() == y.tolist() and table["prediction"].tolist() == small_cnn(x).argmax(1).tolist()
    manifest = json.loads((tmp_path / "flags" / "scan.json").read_text())
    assert manifest["source"]["card"] == _card(flags)  # what every worker opens the model with
    assert manifest["card"] == {**_card(flags), "layout": "NCHW"}  # the card as used: part of the identity
    # the same card by the other route is the same scan: a rerun finds every shard done
    status, out, err = run([*by_file, "--out", str(tmp_path / "flags")], capsys)
    assert status == 0 and "computed 0 shards, 2 already done" in out, err
    # another card is another scan: refused, nothing written
    other = [*by_flags[: by_flags.index("--mean")], "--mean", "0,0,0", *by_flags[by_flags.index("--mean") + 2 :]]
    status, out, err = run([*other, "--out", str(tmp_path / "flags")], capsys)
    assert status == 2 and re.search(r"holds a different scan \(card .* there, .* here\)", err), err


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_the_report_of_an_outside_model_states_its_card_and_the_accuracy_it_scores(
    kind, sources, images, tmp_path, capsys, small_cnn
):
    spec, flags = _source(sources, kind)
    page = tmp_path / "page.html"
    status, out, err = run(
        [
            "report",
            "--model",
            spec,
            *flags,
            "--data",
            f"folder:{images}",
            "--images",
            "2",
            "--evaluation-images",
            "2",
            "--out",
            str(page),
        ],
        capsys,
    )
    assert status == 0, err
    html = page.read_text()
    x, y = reference_inputs(images)
    accuracy = float((small_cnn(x).argmax(1) == y).double().mean())
    shown = re.search(r"([0-9.]+)% on 12 images", html)
    assert shown is not None and abs(float(shown.group(1)) - 100 * accuracy) < 0.051
    # the grey candidate is the images' own mean pixel, fed as the card says: not the card's mean
    pixels = torch.stack(
        [torch.tensor(np.asarray(Image.open(f)), dtype=torch.float64) for f in sorted(images.glob("*/*.png"))]
    )
    grey = pixels.mean(dim=(0, 1, 2))  # (3,) in 0..255
    mean, std = torch.tensor(CARD["mean"]), torch.tensor(CARD["std"])
    grey_input = ((grey.float() - mean) / std).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    p_grey = small_cnn(grey_input).softmax(1)[0]
    k = int(p_grey.argmax())
    assert f"dataset-mean grey image → '{CLASSES[k]}' (p = {float(p_grey[k]):.3f})" in unescape(html)
    assert "1. The model" in html and "Weights as loaded" in html
    assert "before/after comparison" in html and "2. Weights before and after training" not in html
    check_in_chromium(page, f"report_{kind}.png")


def test_a_model_card_flag_on_a_run_is_refused(tiny_run, capsys):
    status, _, err = run(["layers", str(tiny_run), "--pixel-range", "0,255"], capsys)
    assert status == 2 and "describes an outside model's input" in err


def test_an_outside_model_without_data_says_how_to_give_it(sources, capsys, tmp_path):
    spec, flags = sources["torch"]
    status, _, err = run(["evaluate", "--model", spec, *flags, "--out", str(tmp_path)], capsys)
    assert status == 2 and "give --data folder:PATH" in err


def _bad_models(folder: Path, small_cnn) -> dict[str, tuple[list[str], str]]:
    """argv for each kind of bad model input, and the words its one line must hold."""
    (folder / "noise.onnx").write_bytes(np.random.default_rng(0).bytes(256))
    (folder / "image.pt2").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    torch.save(small_cnn, folder / "whole.pt")
    (folder / "nets.py").write_text(FACTORY + "\ndef rows():\n    return nn.Sequential(make(), nn.Flatten(0))\n")
    save_file(small_cnn.state_dict(), str(folder / "w.safetensors"))
    save_file({f"0.{k}": v for k, v in small_cnn.state_dict().items()}, str(folder / "rows.safetensors"))
    cases = {
        "not a model": (["--model", f"onnx:{folder / 'noise.onnx'}"], "is not a valid ONNX model"),
        "an image": (["--model", f"torch:{folder / 'image.pt2'}"], "is not a torch.export program"),
        "pickled": (["--model", f"torch:{folder / 'whole.pt'}"], "pickled"),
        "wrong size": (
            ["--model", f"python:{folder / 'nets.py'}:make", "--weights", str(folder / "w.safetensors"),
             "--input-size", "3x1x1"],
            "zero batch of shape (2, 3, 1, 1)",
        ),
        "not one row per example": (
            ["--model", f"python:{folder / 'nets.py'}:rows", "--weights", str(folder / "rows.safetensors"),
             "--input-size", "3x8x8"],
            "one row of scores per example",
        ),
    }  # fmt: skip
    return cases


@pytest.mark.parametrize("case", ["not a model", "an image", "pickled", "wrong size", "not one row per example"])
def test_a_bad_model_gets_one_line_exit_2_and_writes_nothing(case, tmp_path, small_cnn, capsys):
    argv, words = _bad_models(tmp_path, small_cnn)[case]
    out = tmp_path / "out"
    status, _, err = run(["weights", *argv, "--out", str(out)], capsys)
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("mindscope: error: ") and words in err, err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "keras"])
def test_the_dashboard_serves_an_outside_model(kind, sources, images, small_cnn):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from mindscope.baselines import black
    from mindscope.serve import create_app
    from serving import TOKEN, figure, login, numbers

    spec, flags = _source(sources, kind)
    subject = open_subject(model=spec, card=_card(flags), data=f"folder:{images}")
    app = create_app(subject=subject, token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        login(client)
        assert "no training history: an outside model" in client.get("/", params={"view": "training"}).text
        layer = "conv1" if kind == "keras" else "conv1_Conv"
        assert figure(client.get("/part/activations", params={"layer": layer}).text, "channel-grid")
        page = client.get("/part/attribution", params={"method": "integrated", "tolerance": 0.01, "image": 3}).text
    shown = numbers(page)
    x, _ = reference_inputs(images)  # the torch network, fed as the card says
    x = x[3:4]
    reference = integrated_gradients(small_cnn, x, baseline=black(x, subject.normalization), tolerance=0.01)
    assert shown["steps used"] == str(int(reference.steps[0]))
    assert shown["relative completeness error"] == f"{float(reference.relative_completeness_error[0]):.3%}"


def test_a_layer_number_names_the_activation_after_it_in_an_exported_graph(sources):
    subject = open_subject(model=sources["torch"][0], card=_card(sources["torch"][1]))
    choice = explain_layer(subject.model, "L2", output=True)
    assert (choice.name, choice.layer) == ("relu2", "conv2")
    captured = capture_activations(subject.model, torch.randn(2, 3, 8, 8), [choice.name])[choice.name]
    assert float(captured.min()) >= 0  # after the ReLU


def test_a_keras_layer_with_its_own_activation_says_so(tmp_path):
    pytest.importorskip("keras")
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inputs)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    keras.Model(inputs, keras.layers.Dense(3, name="fc")(h)).save(tmp_path / "m.keras")
    model = open_subject(model=f"keras:{tmp_path / 'm.keras'}").model
    choice = explain_layer(model, "L1", output=True)
    assert choice.name == "c1" and "with its own activation relu" in str(choice)
    captured = capture_activations(model, torch.randn(2, 3, 8, 8), ["c1"])["c1"]
    assert float(captured.min()) >= 0


def test_a_flag_that_contradicts_the_model_file_is_pointed_out(sources, capsys):
    spec, _ = sources["torch"]  # exported at 3x8x8
    status, out, err = run(["layers", "--model", spec, "--input-size", "3x16x16"], capsys)
    assert status == 0, err
    assert "contradicts the model file: input_shape: given 3x16x16, the model file says 3x8x8" in out


def test_a_layer_number_names_the_relu_layer_after_it_in_a_keras_graph(sources):
    spec, flags = _source(sources, "keras")
    model = open_subject(model=spec, card=_card(flags)).model
    choice = explain_layer(model, "L2", output=True)
    assert (choice.name, choice.layer) == ("relu2", "conv2") and "ReLU after layer 2" in str(choice)
