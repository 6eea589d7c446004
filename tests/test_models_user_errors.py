"""An outside model that cannot be looked at is refused with one line: broken weights, broken user code.

The counts in the messages are computed here from the tensors the test wrote; the original
exception of the user's code stays chained for debugging.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mindscope.cli.source import card_overrides
from mindscope.models import load_model

FACTORY = """
import torch
from torch import nn

def make():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))

def broken():
    return 1 / 0
"""


def make() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


@pytest.fixture
def code(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(FACTORY)
    return path


@pytest.mark.parametrize(
    "tensor, index, value, kind, what",
    [
        ("0.weight", (1, 0, 2, 2), math.nan, "parameter", "NaN"),
        ("5.bias", (2,), math.inf, "parameter", "Inf"),
        ("1.running_var", (3,), math.nan, "buffer", "NaN"),
    ],
)
def test_a_state_dict_holding_nan_or_inf_is_refused_by_its_first_bad_tensor(code, tmp_path, tensor, index, value,
                                                                             kind, what):  # fmt: skip
    torch.manual_seed(0)
    state = make().state_dict()
    state[tensor][index] = value
    state[tensor].view(-1)[0] = value  # a second bad value: the count is of all of them
    expected = int((~torch.isfinite(state[tensor])).sum())
    assert expected == 2
    weights = tmp_path / "bad.pt"
    torch.save(state, weights)
    message = rf"holds {what} in {kind} '{tensor}' \(2 of {state[tensor].numel()} values\).*saved before it diverged"
    with pytest.raises(ValueError, match=message):
        load_model(f"python:{code}:make", weights=weights, card={"input_shape": [1, 8, 8]})


def test_a_torchscript_file_holding_nan_is_refused_without_an_input_size(tmp_path):
    torch.manual_seed(0)
    net = make().eval()
    with torch.no_grad():
        net[5].weight[0, 0] = math.nan
    torch.jit.script(net).save(str(tmp_path / "net.ts"))
    with pytest.raises(ValueError, match=r"torch:.*net\.ts holds NaN in parameter '5\.weight' \(1 of 12 values\)"):
        load_model(f"torch:{tmp_path / 'net.ts'}")


def test_an_infinite_buffer_such_as_a_mask_is_a_weight_not_a_divergence(code, tmp_path):
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make()
            self.register_buffer("mask", torch.tensor([0.0, -math.inf, 0.0]))

        def forward(self, x):
            return self.net(x) + self.mask

    torch.manual_seed(0)
    net = Masked().eval()
    torch.jit.script(net).save(str(tmp_path / "masked.ts"))
    loaded = load_model(f"torch:{tmp_path / 'masked.ts'}", card={"input_shape": [1, 8, 8]})
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(loaded.model(x), net(x))
    assert loaded.outputs == 3


@pytest.mark.parametrize(
    "content, message",
    [
        ("import torch\ndef f(:\n  pass\n", r"importing .*user\.py failed: SyntaxError: .* \(line 2\); fix the file"),
        (bytes(range(256)), r"importing .*user\.py failed: SyntaxError: .*; fix the file"),
        ("raise RuntimeError('no GPU here')\n", r"importing .*user\.py failed: RuntimeError: no GPU here; fix"),
        ("import no_such_package_xyz\n", r"failed: ModuleNotFoundError: No module named 'no_such_package_xyz'"),
    ],
)
def test_a_python_file_that_fails_to_import_is_one_line_with_the_cause_chained(tmp_path, content, message):
    path = tmp_path / "user.py"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    torch.save(make().state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=message) as caught:
        load_model(f"python:{path}:make", weights=tmp_path / "w.pt")
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value.__cause__, Exception) and not isinstance(caught.value.__cause__, ValueError)


def test_a_factory_that_raises_is_one_line_with_the_cause_chained(code, tmp_path):
    torch.save(make().state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"nets\.py:broken\(\) failed: ZeroDivisionError: division by zero") as caught:
        load_model(f"python:{code}:broken", weights=tmp_path / "w.pt")
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_a_dotted_module_that_fails_to_import_says_so_not_that_it_is_missing(tmp_path, monkeypatch):
    (tmp_path / "raising_mod_xyz.py").write_text("raise KeyError('x')\n")
    (tmp_path / "needy_mod_xyz.py").write_text("import absent_dep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(make().state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"importing module 'raising_mod_xyz' failed: KeyError: 'x'"):
        load_model("python:raising_mod_xyz:make", weights=tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"'needy_mod_xyz' failed: .*No module named 'absent_dep_xyz'; install"):
        load_model("python:needy_mod_xyz:make", weights=tmp_path / "w.pt")


@pytest.mark.parametrize("text", ["abc", "3xa", "x"])
def test_a_bad_input_size_names_the_format_the_help_gives(text):
    source = dict.fromkeys(["input_size", "layout", "pixel_range", "mean", "std", "class_names"])
    source["input_size"] = text
    with pytest.raises(ValueError, match=r"--input-size must be numbers like 3x32x32"):
        card_overrides(source)


@pytest.mark.parametrize("text", ["nan", "inf", "0x3", "1.5x2x2"])
def test_an_input_size_that_is_not_whole_positive_numbers_is_one_line(text):
    source = dict.fromkeys(["input_size", "layout", "pixel_range", "mean", "std", "class_names"])
    source["input_size"] = text
    with pytest.raises(ValueError, match=r"--input-size must be positive whole numbers like 3x32x32"):
        card_overrides(source)


def test_an_input_size_too_big_to_hold_is_refused_before_anything_is_allocated(tmp_path, capsys) -> None:
    from mindscope.cli import main
    from mindscope.models.card import MAX_EXAMPLE_VALUES, ModelCard

    with pytest.raises(ValueError, match=r"100000x100000 is 10,000,000,000 values per example \(37 GiB"):
        ModelCard("x", input_shape=(100000, 100000), layout="NLD")
    assert ModelCard("x", input_shape=(MAX_EXAMPLE_VALUES,), layout="NF").input_shape == (MAX_EXAMPLE_VALUES,)
    with pytest.raises(ValueError, match="values per example"):
        ModelCard("x", input_shape=(MAX_EXAMPLE_VALUES + 1,), layout="NF")
    module = tmp_path / "net.py"
    module.write_text("from torch import nn\n\ndef net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))\n")
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).state_dict(), tmp_path / "w.pt")
    status = main(["layers", "--model", f"python:{module}:net", "--weights", str(tmp_path / "w.pt")]
                  + ["--input-size", "3x100000x100000"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "3x100000x100000 is 30,000,000,000 values per example" in err[0]
