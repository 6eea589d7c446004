"""Nothing lost, no traceback: one writer per run, kills mended by the next writer, one line for bad input."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from mindscope.cli import main
from mindscope.model import AllConvNet
from mindscope.run import Run, create_run, load_run
from mindscope.run.lock import RunBusyError
from mindscope.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["--width", "4", "--train-limit", "64", "--test-limit", "16", "--batch-size", "32", "--log-every", "1"]


def one_error_line(capsys, *phrases: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mindscope: error:"), err
    assert all(p in err[0] for p in phrases), err[0]
    return err[0]


def copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def histogram_steps(run: Path) -> list[int]:
    with sqlite3.connect(run / "metrics.sqlite") as db:
        return [r[0] for r in db.execute("SELECT DISTINCT step FROM histograms ORDER BY step")]


# --- one writer ------------------------------------------------------------------------------


def test_a_second_writer_is_refused_while_the_first_holds_the_run(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    writer = Run.open(run, write=True)
    try:
        with pytest.raises(RunBusyError, match=f"pid {os.getpid()}"):
            Run.open(run, write=True)
        assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
        one_error_line(capsys, "is being written by another mindscope command")
        assert load_run(run).epochs == [0, 1]  # untouched
    finally:
        writer.close()
    Run.open(run, write=True).close()  # free again once the first writer is gone


def test_a_killed_writer_does_not_block_the_next(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from mindscope.run import Run; r = Run.open({str(run)!r}, write=True); "
         "print('held', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusyError):
            Run.open(run, write=True)
        holder.kill()
    finally:
        holder.wait(timeout=30)
    Run.open(run, write=True).close()


def test_two_creations_of_one_run_leave_one_run_and_one_clean_refusal(tmp_path):
    out = tmp_path / "same"
    command = [sys.executable, "-m", "mindscope", "train", *SMALL, "--epochs", "1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _pair in range(2):
        shutil.rmtree(out, ignore_errors=True)
        a, b = (subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
                for _ in range(2))  # fmt: skip
        results = [(p.wait(timeout=300), p.stderr.read()) for p in (a, b)]
        assert sorted(status for status, _ in results) == [0, 2], results
        loser = next(err for status, err in results if status == 2)
        assert "Traceback" not in loser and loser.count("\n") == 1 and loser.startswith("mindscope: error:"), loser
        assert load_run(out).epochs == [0, 1]
        assert list(tmp_path.glob(".same.*.partial")) == []


# --- kills mended by the next writer -------------------------------------------------------------


def test_step_zero_histograms_are_written_with_the_run(tmp_path):
    """A kill between creation and the first training step no longer loses the step-0 histograms."""
    out = tmp_path / "r"
    run, _model, _data = create_run(out, TrainConfig(epochs=1, batch_size=32), data="builtin", width=4,
                                    train_limit=64, test_limit=16)  # fmt: skip
    run.close()  # as if killed right here
    assert histogram_steps(out) == [0]
    assert main(["train", "--resume", str(out)]) == 0
    assert histogram_steps(out)[0] == 0


def test_resume_fills_in_step_zero_lost_by_an_older_version(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    expected = load_run(run).histograms()
    with sqlite3.connect(run / "metrics.sqlite") as db:
        db.execute("DELETE FROM histograms WHERE step = 0")
    assert main(["train", "--resume", str(run)]) == 0  # complete, but step 0 was missing: filled in
    restored = [h for h in load_run(run).histograms() if h["step"] == 0]
    original = [h for h in expected if h["step"] == 0]
    assert [h["tensor"] for h in restored] == [h["tensor"] for h in original]
    assert all((a["counts"] == b["counts"]).all() for a, b in zip(restored, original))


def test_a_kill_after_the_final_checkpoint_is_mended_by_resume(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    (run / "curves.png").unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "filled in what a kill had left out: curves.png" in capsys.readouterr().out
    assert main(["train", "--resume", str(run)]) == 2  # now complete: nothing to do
    one_error_line(capsys, "is complete (1 of 1 epochs)")


def test_the_next_writer_removes_what_killed_writers_left(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    stale_tmp = [run / "snapshots" / ".epoch_0002.safetensors.abc.tmp", run / "state" / ".epoch_0002.pt.x.tmp"]
    for path in stale_tmp:
        path.write_bytes(b"half")
    stale = tmp_path / ".run.k1.partial"
    stale.mkdir()
    (stale / ".writer.lock").write_text("123")
    fresh = tmp_path / ".run.k2.partial"  # young, no lock, not empty: not ours to judge yet
    fresh.mkdir()
    (fresh / "config.json").write_text("{}")
    empty = tmp_path / ".run.k3.partial"  # a creation killed right after making its folder
    empty.mkdir()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert not any(p.exists() for p in stale_tmp) and not stale.exists() and not empty.exists()
    assert fresh.exists()


def test_a_failed_resume_leaves_no_lock_file_in_a_damaged_run(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    (run / "metrics.sqlite").write_bytes(b"not a database")
    (run / ".writer.lock").unlink(missing_ok=True)
    before = sorted(p.name for p in run.iterdir())
    assert main(["train", "--resume", str(run)]) == 2
    one_error_line(capsys, "is damaged")
    assert sorted(p.name for p in run.iterdir()) == before


# --- one line, not a traceback ---------------------------------------------------------------


def test_a_width_too_big_to_hold_is_refused_before_allocating(tmp_path, capsys):
    assert main(["train", "--width", "1000000", "--epochs", "1", "--out", str(tmp_path / "w")]) == 2
    one_error_line(capsys, "training AllConvNet(width=1000000)", "TiB", "choose a smaller --width")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "config, phrase",
    [([1, 2, 3], "holds a list, not an object of settings"), ("drop data", "lacks 'data'")],
)
def test_a_malformed_config_is_one_line(tiny_run, tmp_path, capsys, config, phrase):
    run = copy_run(tiny_run, tmp_path)
    if config == "drop data":
        config = json.loads((run / "config.json").read_text())
        del config["data"]
    (run / "config.json").write_text(json.dumps(config))
    for command in (["layers", str(run)], ["activations", str(run)], ["train", "--resume", str(run)]):
        assert main(command) == 2
        one_error_line(capsys, phrase)


def test_a_diverged_run_says_where_and_keeps_its_curves(tmp_path, capsys):
    out = tmp_path / "nan"
    assert main(["train", *SMALL, "--epochs", "1", "--lr", "1e20", "--out", str(out)]) == 2
    # lr 1e20: the test loss overflows after step 1, before the training loss of step 2 does
    line = one_error_line(capsys, "training diverged: the test loss became nan at epoch 1, step", "lower --lr")
    step = int(line.split("step ")[1].split(" ")[0])
    assert step >= 1
    assert (out / "curves.png").is_file()
    assert load_run(out).epochs == [0]


@pytest.mark.parametrize("lr", ["inf", "nan", "-1"])
def test_a_non_finite_learning_rate_is_refused_up_front(tmp_path, capsys, lr):
    assert main(["train", *SMALL, "--lr", lr, "--out", str(tmp_path / "x")]) == 2
    one_error_line(capsys, "learning rate must be a finite number > 0")
    assert not (tmp_path / "x").exists()


def test_an_internal_error_keeps_its_traceback(monkeypatch, tmp_path):
    """A TypeError thrown by Python inside mindscope is a bug, not bad input: no exit 2."""
    import mindscope.cli.train

    monkeypatch.setattr(mindscope.cli.train, "train_run", lambda *a, **k: AllConvNet.parameter_count(None))
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["train", "--out", str(tmp_path / "bug")])


def test_a_snapshot_whose_dtype_was_changed_is_refused(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    path = run / "snapshots" / "epoch_0001.safetensors"
    weights = load_file(path)
    weights["features.0.bias"] = weights["features.0.bias"].view(dtype=__import__("torch").int32)
    save_file(weights, path)
    assert main(["layers", str(run)]) == 2
    one_error_line(capsys, "features.0.bias", "int32", "float32")


def test_out_in_a_place_that_cannot_hold_a_run_names_the_run(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", *SMALL, "--out", str(blocker / "run")]) == 2
    line = one_error_line(capsys, str(blocker / "run"))
    assert "partial" not in line and "Errno" not in line


def test_a_full_disk_is_one_line_and_resume_completes_after_space_is_freed(tmp_path, capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        out = mount / "run"
        status = main(["train", *SMALL, "--epochs", "2", "--histogram-every", "1", "--out", str(out)])
        assert status == 2
        one_error_line(capsys, "disk full while writing")
        assert out.exists()  # the run holds whole checkpoints only; it resumes once space is freed
        moved = tmp_path / "moved"
        shutil.copytree(out, moved)
        assert main(["train", "--resume", str(moved)]) == 0
        reference = tmp_path / "reference"
        assert main(["train", *SMALL, "--epochs", "2", "--histogram-every", "1", "--out", str(reference)]) == 0
        rows = [[(m["step"], m["split"], m["name"], m["scope"], m["value"]) for m in load_run(r).metrics]
                for r in (moved, reference)]  # fmt: skip
        assert rows[0] == rows[1]
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


def test_sizes_a_user_types_are_capped_before_any_allocation(tiny_run, capsys):
    assert main(["weights", str(tiny_run), "--bins", "1000000000"]) == 2
    one_error_line(capsys, "--bins must be at most 100,000")
    assert main(["report", str(tiny_run), "--images", "100000"]) == 2
    one_error_line(capsys, "--images must be at most 48")
    assert main(["report", str(tiny_run), "--evaluation-images", "100000"]) == 2
    one_error_line(capsys, "--evaluation-images must be at most 256")


def test_report_checks_out_before_any_work(tiny_run, tmp_path, capsys, monkeypatch):
    import mindscope.cli.report

    def never(*args, **kwargs):
        raise AssertionError("write_report ran although --out was unusable")

    monkeypatch.setattr(mindscope.cli.report, "write_report", never)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["report", str(tiny_run), "--out", str(blocker / "page.html")]) == 2
    one_error_line(capsys, "which is a file")
    assert main(["report", str(tiny_run), "--out", str(tmp_path)]) == 2
    one_error_line(capsys, "is a folder")


def test_attribute_caps_what_it_is_asked_to_repeat(tiny_run, tmp_path, capsys):
    out = tmp_path / "never"
    command = ["attribute", str(tiny_run), "--image", "0", "--out", str(out)]
    assert main([*command, "--method", "smoothgrad", "--samples", "100000000"]) == 2
    one_error_line(capsys, "--samples must be at most 1,024")
    assert main([*command, "--tolerance", "0.01", "--max-steps", "0"]) == 2
    one_error_line(capsys, "--max-steps must be a positive integer, got 0")
    assert not out.exists()  # nothing created before the options were checked
