"""`mindscope attribute`: its warnings (nothing to explain, tolerance not reached) and file names."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image


def test_cli_flags_a_tolerance_not_reached_and_exits_0(tiny_run, tmp_path, capsys) -> None:
    from mindscope.cli import main

    status = main(
        ["attribute", str(tiny_run), "--image", "1", "--tolerance", "0.0001", "--max-steps", "16"]
        + ["--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    # Not a user error: the map is computed and shown, with the warning on its line.
    assert status == 0
    line = next(line for line in out.splitlines() if line.startswith("test image 1 "))
    steps = int(re.search(r"steps (\d+)", line).group(1))
    assert steps <= 16
    assert f"NOT CONVERGED: tolerance 0.01% not reached in {steps} steps (--max-steps 16); raise --max-steps" in line


def black_png(folder) -> str:
    path = folder / "black.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_cli_says_there_is_nothing_to_explain_when_the_image_is_the_baseline(tiny_run, tmp_path, capsys) -> None:
    from mindscope.cli import main
    from mindscope.run import load_run

    run = load_run(tiny_run)
    black = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        p = run.model(run.data.normalization.apply(black)).softmax(1)[0]
    name = run.classes[int(p.argmax())]
    status = main(["attribute", str(tiny_run), "--image", black_png(tmp_path), "--tolerance", "0.01"])
    assert status == 0
    out = capsys.readouterr().out
    assert f"nothing to explain: the baseline already scores p={float(p.max()):.3f} for '{name}'" in out
    assert "NOT CONVERGED" not in out


def test_cli_names_interior_files_and_legends_by_image_not_list_position(
    tiny_run, tmp_path, capsys, monkeypatch
) -> None:
    import mindscope.cli.attribute as command
    from mindscope.cli import main

    figures = []
    drawn = command.saturation_curve
    monkeypatch.setattr(command, "saturation_curve", lambda *a, **k: figures.append(drawn(*a, **k)) or figures[-1])
    png = black_png(tmp_path)
    out = tmp_path / "out"
    args = ["attribute", str(tiny_run), "--image", "3", "--image", png, "--method", "interior", "--out", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in out.glob("*.gif")) == ["interior_3.gif", "interior_black.gif"]
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert [t.split(":")[0] for t in legend] == ["image 3", "image black"]
    capsys.readouterr()


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_cli_fixed_rule_prints_the_flag_too(tiny_run, tmp_path, capsys, score) -> None:
    from mindscope.cli import main

    status = main(["attribute", str(tiny_run), "--image", black_png(tmp_path), "--steps", "4", "--score", score])
    assert status == 0
    out = capsys.readouterr().out
    assert "nothing to explain: the baseline already scores" in out and "NOT CONVERGED" not in out
