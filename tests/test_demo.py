"""`mindscope demo`: trains, reports, reuses a finished run, and runs on a CIFAR-10 archive."""

from __future__ import annotations

import re

import pytest

from mindscope.cli import main
from mindscope.run import load_run
from test_archives import CLASSES, official_files, write_archive

pytestmark = pytest.mark.slow  # trains a run and writes whole reports

TINY = [
    "--epochs",
    "1",
    "--width",
    "8",
    "--train-limit",
    "96",
    "--test-limit",
    "32",
    "--images",
    "2",
    "--evaluation-images",
    "2",
]


def test_demo_writes_a_report_and_reuses_the_run(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    report = out / "report.html"
    assert report.is_file() and load_run(out / "run").epochs == [0, 1]
    snapshot = out / "run" / "snapshots" / "epoch_0001.safetensors"
    written = snapshot.stat().st_mtime_ns
    first = capsys.readouterr().out
    assert "training AllConvNet(width=8)" in first and f"report: {report.resolve()}" in first

    assert main(["demo", "--out", str(out), *TINY]) == 0
    again = capsys.readouterr().out
    assert "reusing the trained run" in again and "training AllConvNet" not in again
    assert snapshot.stat().st_mtime_ns == written


def test_demo_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "demo" / "run").mkdir(parents=True)
    (tmp_path / "demo" / "run" / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path / "demo"), *TINY]) == 2
    assert "is not a mindscope run" in capsys.readouterr().err
    assert (tmp_path / "demo" / "run" / "notes.txt").read_text() == "mine"


def test_demo_on_a_cifar10_archive(tmp_path):
    archive = write_archive(tmp_path / "cifar", official_files(seed=1))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--data", f"cifar10:{archive}", *TINY]) == 0
    run = load_run(out / "run")
    assert run.classes == tuple(CLASSES) and run.config["data"]["name"] == "cifar10"
    html = (out / "report.html").read_text()
    assert re.findall(r'<section id="([\w-]+)"', html) == [
        "experiment",
        "weights",
        "activations",
        "channels",
        "interior",
        "integrated",
        "trust",
    ]
    assert all(name in html for name in CLASSES)
