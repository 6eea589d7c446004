"""Bad input never loses what was written: damaged runs, NaN weights, failed retrains and resumes."""

from __future__ import annotations

import shutil

import torch
from safetensors.torch import load_file, save_file

from mindscope.cli import main


def copy_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def one_error_line(capsys, *phrases):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mindscope: error:"), err
    assert all(p in err[0] for p in phrases), err[0]


def test_nan_weights_in_a_snapshot_are_refused(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    snapshot = run / "snapshots" / "epoch_0001.safetensors"
    weights = load_file(snapshot)
    weights["features.4.weight"][0, 0, 0, 0] = float("nan")
    save_file(weights, snapshot)
    for command in (
        ["attribute", str(run), "--image", "0", "--steps", "4"],
        ["activations", str(run), "--image", "0"],
        ["layers", str(run)],
    ):
        assert main(command) == 2
        one_error_line(capsys, "NaN or Inf in features.4.weight")


def test_damaged_snapshot_fails_resume_without_touching_the_run(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    (run / "snapshots" / "epoch_0001.safetensors").write_bytes(b"not a safetensors file")
    config, database = (run / "config.json").read_bytes(), (run / "metrics.sqlite").read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    one_error_line(capsys, "snapshot of epoch 1", "damaged")
    assert (run / "config.json").read_bytes() == config
    assert (run / "metrics.sqlite").read_bytes() == database


def test_failed_retrain_keeps_the_old_run(tiny_run, tmp_path, capsys):
    demo = tmp_path / "demo"
    shutil.copytree(tiny_run, demo / "run")
    before = load_file(demo / "run" / "snapshots" / "epoch_0001.safetensors")
    assert main(["demo", "--out", str(demo), "--retrain", "--data", f"cifar10:{tmp_path / 'missing'}"]) == 2
    one_error_line(capsys, "no such file or folder")
    after = load_file(demo / "run" / "snapshots" / "epoch_0001.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_report_onto_a_folder_leaves_nothing_behind(tiny_run, tmp_path, capsys):
    target = tmp_path / "out"
    target.mkdir()
    assert main(["report", str(tiny_run), "--out", str(target), "--evaluation-images", "0", "--images", "1"]) == 2
    one_error_line(capsys, "is a folder")
    assert list(tmp_path.iterdir()) == [target] and list(target.iterdir()) == []
    assert main(["report", str(tiny_run), "--evaluation-images", "-1"]) == 2
    one_error_line(capsys, "--evaluation-images must be >= 0")


def test_bare_command_shows_help(capsys):
    assert main([]) == 0
    assert "Usage: mindscope" in capsys.readouterr().out


def test_oversized_counts_and_mapless_layers_are_refused(tiny_run, tmp_path, capsys):
    assert main(["attribute", str(tiny_run), "--image", "0", "--steps", "100000"]) == 2
    one_error_line(capsys, "--steps must be at most 4096")
    assert main(["evaluate", str(tiny_run), "--ig-points", "100000"]) == 2
    one_error_line(capsys, "--ig-points must be at most 1024")
    assert (
        main(["activations", str(tiny_run), "--image", "0", "--layers", "features.20", "--out", str(tmp_path / "a")])
        == 2
    )
    one_error_line(capsys, "outputs shape (1, 10), no channel maps")
