"""Outside models from torch files and Python code, checked against the torch network they came from."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from mindscope.activations import capture_activations
from mindscope.attribution import integrated_gradients
from mindscope.evaluation.randomisation import randomise_layer
from mindscope.layers import describe_layers
from mindscope.models import LoadedModel, ModelCard, load_model, read_card
from mindscope.quadrature import gauss_legendre
from mindscope.weights import weight_histograms

NAMES = ["conv1", "relu1", "conv2", "relu2", "pool", "flatten", "fc"]


def layer_outputs(net: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference activations: the Sequential's children run one by one."""
    out = {}
    for name, layer in net.named_children():
        x = out[name] = layer(x)
    return out


@pytest.fixture(scope="module")
def files(small_cnn, tmp_path_factory) -> dict[str, Path]:
    """The small CNN saved as a torch.export program, scripted and traced TorchScript, and a state dict."""
    folder = tmp_path_factory.mktemp("torch_models")
    x = torch.randn(2, 3, 8, 8)
    program = torch.export.export(small_cnn, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, folder / "cnn.pt2")
    torch.jit.script(small_cnn).save(str(folder / "scripted.ts"))
    torch.jit.trace(small_cnn, x).save(str(folder / "traced.ts"))
    save_file(small_cnn.state_dict(), str(folder / "cnn.safetensors"))
    torch.save(small_cnn.state_dict(), folder / "cnn_state.pt")
    return {
        "export": folder / "cnn.pt2",
        "scripted": folder / "scripted.ts",
        "traced": folder / "traced.ts",
        "safetensors": folder / "cnn.safetensors",
        "state": folder / "cnn_state.pt",
    }


FACTORY = """
from collections import OrderedDict
from torch import nn

def make():
    return nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 4, 3, padding=1), relu1=nn.ReLU(), conv2=nn.Conv2d(4, 6, 3),
                         relu2=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(6, 3)))

def flat():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))

def not_a_model():
    return 3
"""


@pytest.fixture(scope="module")
def factory_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user_code") / "user_nets.py"
    path.write_text(FACTORY)
    return path


@pytest.fixture(scope="module", params=["export", "scripted", "traced", "safetensors", "state"])
def loaded(request, files, factory_file) -> LoadedModel:
    source = request.param
    if source in ("safetensors", "state"):
        return load_model(f"python:{factory_file}:make", weights=files[source])
    return load_model(f"torch:{files[source]}")


def test_every_torch_source_computes_what_the_network_computes(loaded, small_cnn):
    x = torch.randn(5, 3, 8, 8)
    assert not loaded.model.training
    torch.testing.assert_close(loaded.model(x), small_cnn(x), rtol=1e-5, atol=1e-6)


def test_every_layer_is_captured_by_its_torch_name(loaded, small_cnn):
    x = torch.randn(4, 3, 8, 8)
    captured = capture_activations(loaded.model, x, NAMES)
    with torch.no_grad():
        reference = layer_outputs(small_cnn, x)
    for name in NAMES:
        torch.testing.assert_close(captured[name], reference[name], rtol=1e-5, atol=1e-6)


def test_integrated_gradients_match_the_network(loaded, small_cnn):
    x = torch.randn(2, 3, 8, 8)
    ours = integrated_gradients(loaded.model, x, 1, rule=gauss_legendre(8))
    reference = integrated_gradients(small_cnn, x, 1, rule=gauss_legendre(8))
    torch.testing.assert_close(ours.attributions, reference.attributions, rtol=1e-4, atol=1e-6)


def test_the_layer_listing_names_shapes_and_kinds_as_the_network(loaded, small_cnn):
    ours = [(i.name, i.kind, i.output_shape, i.parameters) for i in describe_layers(loaded.model, (3, 8, 8))]
    reference = [(i.name, i.kind, i.output_shape, i.parameters) for i in describe_layers(small_cnn, (3, 8, 8))]
    assert ours == reference


def test_weights_are_the_ones_the_model_computes_with_also_in_a_deep_copy(loaded, small_cnn):
    """What the randomisation check does: deep-copy, redraw a layer in place; the copy must compute with it."""
    x = torch.randn(2, 3, 8, 8)
    work = copy.deepcopy(loaded.model)
    randomise_layer(work.get_submodule("conv2"), torch.Generator().manual_seed(3))
    reference = copy.deepcopy(small_cnn)
    reference.load_state_dict({k: v for k, v in work.state_dict().items()})
    assert not torch.equal(reference.conv2.weight, small_cnn.conv2.weight)
    torch.testing.assert_close(work(x), reference(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded.model(x), small_cnn(x), rtol=1e-5, atol=1e-6)  # the original is untouched


def test_the_card_reads_the_input_shape_from_the_program_and_lists_what_was_assumed(files):
    card = load_model(f"torch:{files['export']}").card
    assert card.input_shape == (3, 8, 8)
    assert card.layout == "NCHW" and card.pixel_range == (0.0, 1.0) and card.mean is None
    assert card.assumed == ("layout", "pixel_range", "mean", "std", "classes")
    assert load_model(f"torch:{files['scripted']}").card.input_shape is None  # TorchScript does not say


def test_torchscript_with_control_flow_and_function_calls_is_captured_exactly(tmp_path):
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.conv(x))
            if x.shape[1] == 2:
                y = y + x
            for _ in range(2):
                y = y * 0.5
            return y

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block, self.fc = Block(), nn.Linear(2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.block(x).mean(dim=(2, 3)))

    net = Net().eval()
    torch.jit.script(net).save(str(tmp_path / "net.ts"))
    model = load_model(f"torch:{tmp_path / 'net.ts'}").model
    x = torch.randn(3, 2, 5, 5)
    captured = capture_activations(model, x, ["block.conv", "block"])
    with torch.no_grad():
        torch.testing.assert_close(captured["block.conv"], net.block.conv(x))
        torch.testing.assert_close(captured["block"], net.block(x))
        torch.testing.assert_close(model(x), net(x))


def test_python_factory_takes_a_dotted_module_name(factory_file, files, monkeypatch):
    monkeypatch.syspath_prepend(str(factory_file.parent))
    model = load_model("python:user_nets:make", weights=files["state"]).model
    assert torch.equal(model.fc.weight, load_model(f"torch:{files['export']}").model.fc.weight)


# ---- the card ----


def test_a_card_next_to_the_file_is_read_and_an_explicit_card_wins(files, tmp_path):
    model = tmp_path / "cnn.pt2"
    model.write_bytes(files["export"].read_bytes())
    (tmp_path / "cnn.pt2.card.json").write_text(
        json.dumps(
            {"pixel_range": [0, 255], "mean": [125.3, 123.0, 113.9], "std": [63.0, 62.1, 66.7], "layout": "NCHW"}
        )
    )
    card = load_model(f"torch:{model}", card={"classes": ["a", "b", "c"], "pixel_range": [-1, 1]}).card
    assert card.pixel_range == (-1.0, 1.0)  # the explicit card over the file's card
    assert card.mean == (125.3, 123.0, 113.9) and card.std == (63.0, 62.1, 66.7)  # from the file's card
    assert card.input_shape == (3, 8, 8)  # from the program itself
    assert card.classes == ("a", "b", "c")
    assert card.assumed == ()
    partial = ModelCard("x", None, "NHWC", mean=(0.0,) * 3, std=(2.0,) * 3, assumed=("layout", "pixel_range"))
    again = load_model(f"torch:{model}", card=partial).card  # a ModelCard gives what it did not assume, None aside
    assert (again.layout, again.pixel_range, again.input_shape) == ("NCHW", (0.0, 255.0), (3, 8, 8))
    assert (again.mean, again.std, again.assumed) == ((0.0,) * 3, (2.0,) * 3, ("classes",))


def test_read_card_returns_the_fields_as_tuples(tmp_path):
    path = tmp_path / "card.json"
    path.write_text('{"input_shape": [32, 32, 3], "layout": "nhwc", "mean": 0.5, "std": [0.25]}')
    assert read_card(path) == {"input_shape": (32, 32, 3), "layout": "NHWC", "mean": (0.5,), "std": (0.25,)}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"layout": "CHW"}, "layout must be one of NCHW, NHWC, NF, NLD, got 'CHW'"),
        ({"input_shape": (3, 32), "layout": "NCHW"}, r"input_shape \(3, 32\) has 2 dimensions but layout NCHW needs 3"),
        ({"pixel_range": (255.0, 0.0)}, r"pixel_range must be \[low, high\] with finite low < high"),
        ({"mean": (0.5,)}, "mean and std come together"),
        ({"mean": (0.5, 0.5), "std": (0.2,)}, "mean has 2 values but std has 1"),
        ({"mean": (0.5,), "std": (0.0,)}, "std must be positive"),
        (
            {"input_shape": (3, 8, 8), "layout": "NCHW", "mean": (0.5, 0.5), "std": (1.0, 1.0)},
            "mean and std have 2 values but input_shape .* has 3 channels",
        ),
        ({"classes": ("cat", "cat")}, "classes must be distinct names"),
    ],
)
def test_a_bad_card_is_refused_with_what_is_wrong(fields, message):
    values = {"input_shape": None, "layout": "NCHW", **fields}
    with pytest.raises(ValueError, match=message):
        ModelCard("torch:x.pt2", **values)


def test_a_card_file_with_an_unknown_field_or_bad_json_is_refused(tmp_path):
    path = tmp_path / "card.json"
    path.write_text('{"pixel_rang": [0, 255]}')
    with pytest.raises(ValueError, match="unknown field 'pixel_rang' in .*card.json; a model card may give"):
        read_card(path)
    path.write_text("{pixel_range: [0, 255]}")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_card(path)


# ---- bad input: one clear line each ----


def test_an_unknown_or_missing_kind_is_refused():
    with pytest.raises(ValueError, match="unknown model source 'tf:model.pb'; use torch:FILE, onnx:FILE"):
        load_model("tf:model.pb")
    with pytest.raises(ValueError, match="for this file write onnx:model.onnx"):
        load_model("model.onnx")
    with pytest.raises(FileNotFoundError, match="no model file"):
        load_model("torch:does/not/exist.pt2")


NOT_MODELS = {
    "torch": ("model.pt2", "is not a torch.export program .* or a TorchScript file"),
    "onnx": ("model.onnx", "is not a valid ONNX model"),
    "keras": ("model.keras", "does not load as a Keras model"),
}


@pytest.mark.parametrize("kind", NOT_MODELS)
@pytest.mark.parametrize("content", [os.urandom(256), b"\x89PNG\r\n\x1a\n" + os.urandom(64)], ids=["bytes", "png"])
def test_a_file_that_is_not_a_model_is_refused(tmp_path, kind, content):
    if kind != "torch" and importlib.util.find_spec(kind) is None:
        pytest.skip(f"{kind} is not installed")
    name, message = NOT_MODELS[kind]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_model(f"{kind}:{tmp_path / name}")


def test_a_pickled_whole_model_is_refused_and_never_unpickled(tmp_path, small_cnn):
    path = tmp_path / "whole.pt"
    torch.save(small_cnn, path)
    with pytest.raises(ValueError, match="pickled model .* would run arbitrary code .* torch.export"):
        load_model(f"torch:{path}")


def test_a_state_dict_given_as_a_model_points_to_python_factory(files):
    with pytest.raises(ValueError, match="not a model; give the code .* as python:MODULE:FACTORY"):
        load_model(f"torch:{files['state']}")


def test_a_model_that_does_not_return_one_row_per_example_is_refused(tmp_path, small_cnn):
    features = small_cnn[:4]  # stops at relu2: (N, 6, 6, 6), not (N, classes)
    program = torch.export.export(features, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim("n")},))
    torch.export.save(program, tmp_path / "features.pt2")
    with pytest.raises(ValueError, match=r"returns shape \(2, 6, 6, 6\) .* one row of scores per example"):
        load_model(f"torch:{tmp_path / 'features.pt2'}")


def test_an_input_size_that_does_not_fit_says_what_was_tried(factory_file, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "flat.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).state_dict(), weights)
    spec = f"python:{factory_file}:flat"
    assert load_model(spec, weights=weights, card={"input_shape": [3, 8, 8]}).card.input_shape == (3, 8, 8)
    with pytest.raises(ValueError, match=r"fails on a zero batch of shape \(2, 3, 16, 16\) .*--input-size"):
        load_model(spec, weights=weights, card={"input_shape": [3, 16, 16]})


def test_class_names_must_match_the_outputs_and_the_message_says_who_named_them(files, tmp_path):
    given = r"--classes \(or card= in Python\) names 2 classes \(cat, dog\) but the model returns 3 scores"
    with pytest.raises(ValueError, match=given):
        load_model(f"torch:{files['export']}", card={"classes": ["cat", "dog"]})
    card = tmp_path / "mine.json"
    card.write_text(json.dumps({"classes": ["cat", "dog"]}))
    with pytest.raises(ValueError, match=f"the card {card} names 2 classes"):
        load_model(f"torch:{files['export']}", card=card)
    model = tmp_path / "cnn.pt2"
    model.write_bytes(files["export"].read_bytes())
    model.with_name("cnn.pt2.card.json").write_text(json.dumps({"classes": ["cat", "dog"]}))
    with pytest.raises(ValueError, match=r"the card .*cnn\.pt2\.card\.json names 2 classes"):
        load_model(f"torch:{model}")


def test_python_factory_refuses_missing_surplus_and_reshaped_weights(factory_file, small_cnn, tmp_path):
    spec = f"python:{factory_file}:make"
    state = small_cnn.state_dict()
    cases = [
        ({k: v for k, v in state.items() if k != "fc.bias"}, "lacks 1 of the model's tensors, first 'fc.bias'"),
        ({**state, "fc2.weight": torch.zeros(2)}, "holds 1 tensors the model does not have, first 'fc2.weight'"),
        ({**state, "fc.weight": torch.zeros(3, 7)}, r"'fc.weight' has shape \(3, 7\) in .* but \(3, 6\) in the model"),
    ]
    for i, (weights, message) in enumerate(cases):
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / f"w{i}.safetensors"))
        with pytest.raises(ValueError, match=message):
            load_model(spec, weights=tmp_path / f"w{i}.safetensors")
    with pytest.raises(ValueError, match="needs weights=FILE"):
        load_model(spec)
    with pytest.raises(ValueError, match="weights= is only for python:MODULE:FACTORY"):
        load_model("torch:x.pt2", weights=tmp_path / "w0.safetensors")


def test_python_factory_refuses_bad_code_references(factory_file, files, tmp_path):
    weights = files["state"]
    with pytest.raises(ValueError, match="has no callable 'nothing'; it has: .*make"):
        load_model(f"python:{factory_file}:nothing", weights=weights)
    with pytest.raises(TypeError, match=r"not_a_model\(\) returned int, not a torch nn.Module"):
        load_model(f"python:{factory_file}:not_a_model", weights=weights)
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_model("python:no_such_module_xyz:make", weights=weights)
    with pytest.raises(ValueError, match="must name a module and a factory"):
        load_model("python:make", weights=weights)


def test_python_factory_refuses_weights_that_would_run_code(factory_file, small_cnn, tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": small_cnn}, path)  # a pickled module inside: loading it would run code
    with pytest.raises(ValueError, match="not a state dict that loads without running code"):
        load_model(f"python:{factory_file}:make", weights=path)
    torch.save({"epoch": torch.tensor(3), "model": small_cnn.state_dict()}, path)
    with pytest.raises(ValueError, match="holds .*'epoch', 'model'.*, not a state dict of tensors"):
        load_model(f"python:{factory_file}:make", weights=path)


def test_weight_histograms_of_a_loaded_program_count_the_network_weights(loaded, small_cnn):
    counts = {name: h.stats.count for name, h in weight_histograms(loaded.model).items()}
    assert counts == {name: p.numel() for name, p in small_cnn.named_parameters()}
