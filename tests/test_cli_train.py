"""`mindscope train` and `mindscope layers` on bad input: one line on stderr, exit 2, nothing lost."""

from __future__ import annotations

import hashlib
import io
import re
import sqlite3
import tarfile
from pathlib import Path

import pytest
import torch

from mindscope.cli import main
from mindscope.run import SCHEMA, load_run

SMALL = ["--width", "4", "--train-limit", "64", "--test-limit", "16", "--batch-size", "32"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A run trained for its whole single epoch."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", "--epochs", "1", *SMALL, "--out", str(out)]) == 0
    return out


def fails(capsys, argv: list[str], message: str) -> str:
    """Run the CLI; it must print one `mindscope: error:` line matching `message` and return 2."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("mindscope: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert re.search(message, err), err
    return err


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- the data option -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, message",
    [
        ("folder:{tmp}/absent", r"no such file or folder '.*absent' for 'folder:.*'; check the path"),
        ("cifar10:{tmp}/absent.tar.gz", r"no such file or folder .* or pass --download"),
        ("fashion-mnist:{tmp}/absent", r"no such file or folder"),
        (
            "mnist:{tmp}",
            r"unknown data kind 'mnist' .*; use one of: builtin, cifar10:PATH, fashion-mnist:PATH, folder:PATH",
        ),
        ("cifar10:{tmp}/notes.txt", r"notes.txt is not a tar archive; give cifar-10-python.tar.gz"),
        ("cifar10:{tmp}/other.tar.gz", r"other.tar.gz is not the CIFAR-10 python archive: it lacks data_batch_1"),
        ("cifar10:{tmp}", r"is not an extracted CIFAR-10 folder: it lacks data_batch_1"),
    ],
)
def test_bad_data(tmp_path, capsys, spec, message):
    (tmp_path / "notes.txt").write_text("hello")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("photos/readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "other.tar.gz").write_bytes(buffer.getvalue())
    out = tmp_path / "run"
    fails(capsys, ["train", "--data", spec.format(tmp=tmp_path), "--epochs", "1", *SMALL, "--out", out], message)
    assert not out.exists()  # nothing half-made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "other.tar.gz"]


# --- training options ------------------------------------------------------------------------
@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_epochs_below_one(tmp_path, capsys, epochs):
    fails(
        capsys, ["train", "--epochs", epochs, *SMALL, "--out", tmp_path / "run"], rf"epochs must be >= 1, got {epochs}"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tmp_path, capsys, finished):
    before = fingerprint(finished)
    message = r"--device cuda was asked for, but CUDA is not available on this machine; use --device cpu"
    fails(capsys, ["train", "--epochs", "1", *SMALL, "--device", "cuda", "--out", tmp_path / "run"], message)
    assert not (tmp_path / "run").exists()
    fails(capsys, ["train", "--resume", finished, "--epochs", "2", "--device", "cuda"], message)
    assert fingerprint(finished) == before


def test_unknown_device(tmp_path, capsys):
    fails(
        capsys,
        ["train", "--epochs", "1", *SMALL, "--device", "tpu", "--out", tmp_path / "run"],
        r"unknown device 'tpu'; use cpu or cuda",
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "1"], r"give exactly one of --out RUN_DIR \(a new run\) or --resume RUN_DIR"),
        (["train", "--out", "a", "--resume", "b"], r"give exactly one of --out"),
        (["train", "--epochs", "many", "--out", "a"], r"'many' is not a valid integer"),
    ],
)
def test_usage_errors(capsys, argv, message):
    fails(capsys, argv, message)


# --- run directories -------------------------------------------------------------------------
def test_out_onto_an_existing_run_loses_nothing(capsys, finished):
    before, metrics = fingerprint(finished), load_run(finished).metrics
    fails(capsys, ["train", "--epochs", "2", *SMALL, "--out", finished], r"already exists; choose a new --out")
    assert fingerprint(finished) == before and load_run(finished).metrics == metrics


def test_out_onto_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("precious")
    fails(capsys, ["train", "--epochs", "1", *SMALL, "--out", tmp_path], r"already exists")
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_resume_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("precious")
    fails(capsys, ["train", "--resume", tmp_path], r"is not a mindscope run \(no config.json and metrics.sqlite\)")
    fails(capsys, ["layers", tmp_path], r"is not a mindscope run")
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("damage", ["database", "config"])
def test_damaged_run_files(tmp_path, capsys, finished, damage):
    """A folder with the right file names but garbage in them is not a run either."""
    folder = tmp_path / "damaged"
    folder.mkdir()
    (folder / "config.json").write_bytes(b"not json" if damage == "config" else (finished / "config.json").read_bytes())
    (folder / "metrics.sqlite").write_bytes(
        b"garbage, not SQLite" if damage == "database" else (finished / "metrics.sqlite").read_bytes()
    )
    before = fingerprint(folder)
    fails(capsys, ["train", "--resume", folder], re.escape(str(folder)))
    fails(capsys, ["layers", folder], re.escape(str(folder)))
    assert fingerprint(folder) == before


def test_resume_a_run_that_was_never_started(tmp_path, capsys, finished):
    fails(
        capsys,
        ["train", "--resume", tmp_path / "never"],
        r"no run at .*never to resume; start one with "
        r"'mindscope train --out .*never'",
    )
    assert not (tmp_path / "never").exists()
    # Files but no checkpoint: the process died before epoch 0 was saved.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_bytes((finished / "config.json").read_bytes())
    with sqlite3.connect(empty / "metrics.sqlite") as db:
        db.executescript(SCHEMA)
    db.close()
    fails(capsys, ["train", "--resume", empty], r"was never started \(no checkpoint\); start it again with --out")
    fails(capsys, ["layers", empty], r"has no checkpoint yet")


def test_resume_a_finished_run_loses_nothing(capsys, finished):
    before = fingerprint(finished)
    fails(capsys, ["train", "--resume", finished], r"is complete \(1 of 1 epochs\); pass --epochs N with N > 1")
    fails(capsys, ["train", "--resume", finished, "--epochs", "1"], r"is complete \(1 of 1 epochs\)")
    assert fingerprint(finished) == before


def test_resume_with_epochs_below_one(capsys, finished):
    before = fingerprint(finished)
    fails(capsys, ["train", "--resume", finished, "--epochs", "0"], r"epochs must be >= 1, got 0")
    assert fingerprint(finished) == before


def test_layers_of_a_run(capsys, finished):
    assert main(["layers", str(finished)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:3] == ["features", "Sequential", "10"]
    assert out[2].split()[:4] == ["features.0", "1", "Conv2d", "4x32x32"]
    assert out[-1] == f"total parameters: {sum(v.numel() for v in load_run(finished).model.parameters()):,}"
    fails(capsys, ["layers", finished.parent / "absent"], r"no run at .*absent; train one with 'mindscope train --out")
