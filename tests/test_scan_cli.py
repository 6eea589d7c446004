"""`mindscope scan` on the command line: progress, shards in two processes, and bad input refused whole."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mindscope.cli import main
from mindscope.scan import open_scan

pytest.importorskip("pyarrow")

FAST = ["--methods", "gradient,integrated", "--steps", "4", "--shard-size", "24"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its hash and modification time."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(capsys, args: list[str], match: str) -> None:
    """The command exits with status 2 and one line on stderr that matches `match`."""
    status = main(args)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert err.count("\n") == 0 and err.startswith("mindscope: error: "), err
    assert __import__("re").search(match, err), err


@pytest.fixture(scope="module")
def scanned(tiny_run, tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("scans") / "scan"
    assert main(["scan", str(tiny_run), "--out", str(out), *FAST]) == 0
    return out


def test_a_scan_shows_its_progress_and_prints_its_summary(tiny_run, tmp_path, capsys, one_thread):
    out = tmp_path / "scan"
    assert main(["scan", "--model", f"run:{tiny_run}", "--out", str(out), *FAST, "--layers", "none"]) == 0
    captured = capsys.readouterr()
    assert "64 images in 3 shards; 64 images to compute" in captured.err
    assert "scan: 64/64 images" in captured.err and "s left" in captured.err
    assert "computed 3 shards, 0 already done" in captured.out and f"wrote {out}" in captured.out
    accuracy = open_scan(out).summary["accuracy"]
    assert f"accuracy {accuracy:.1%} on 64 images" in captured.out


def test_one_shard_is_one_shard(tiny_run, tmp_path, capsys, one_thread):
    out = tmp_path / "scan"
    args = ["scan", str(tiny_run), "--out", str(out), "--methods", "gradient", "--limit", "1", "--layers", "none"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "scan: 1 image in 1 shard; 1 image to compute" in captured.err
    assert "computed 1 shard, 0 already done" in captured.out


def test_an_out_that_holds_another_scan_is_refused_and_left_as_it_was(scanned, tiny_run, tmp_path, capsys):
    before = snapshot(scanned)
    args = ["scan", str(tiny_run), "--out", str(scanned), *FAST]
    refused(
        capsys,
        [*args, "--epoch", "0"],
        r"--out .* holds a different scan \(weights \"[0-9a-f]{12}\.\.\.\" there, \"[0-9a-f]{12}\.\.\.\" here",
    )
    refused(capsys, [*args[:4], "--methods", "integrated", *FAST[2:]], r"holds a different scan \(methods")
    images = tmp_path / "images"
    for k, name in enumerate(["circle", "square"]):
        (images / name).mkdir(parents=True)
        for i in range(5):  # 80/20: one test image per class
            Image.fromarray(np.full((32, 32, 3), 60 * k + i, np.uint8)).save(images / name / f"{i}.png")
    refused(capsys, [*args, "--data", f"folder:{images}"], r"holds a different scan \(data null there, \"folder")
    (scanned.parent / "other").mkdir()
    (scanned.parent / "other" / "notes.txt").write_text("mine")
    refused(capsys, [*args[:3], str(scanned.parent / "other"), *FAST], r"holds files but no scan \(scan.json\)")
    assert snapshot(scanned) == before


def test_a_refusal_shows_both_model_specs_in_full(scanned, tiny_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "a_copy_of_the_same_run_under_a_long_name"
    shutil.copytree(tiny_run, copy)
    status = main(["scan", "--model", f"run:{copy}", "--out", str(scanned), *FAST])
    err = capsys.readouterr().err
    assert status == 2
    there, here = f"run:{tiny_run}", f"run:{copy}"
    assert f'(model "{there}" there, "{here}" here' in err, err
    assert err.count('"') % 2 == 0, err


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--shard", "3/2"], r"--shard 3/2: I must be below N \(shards are numbered 0\.\.1\)"),
        (["--shard", "1-2"], r"--shard must look like I/N"),
        (["--methods", "integrated,occlusion"], r"unknown method 'occlusion'; use one or more of: gradient"),
        (["--steps", "8", "--tolerance", "0.01"], r"give --steps N or --tolerance E, not both"),
        (["--workers", "0"], r"workers must be a positive integer, got 0"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(tiny_run, tmp_path, capsys, extra, match):
    out = tmp_path / "scan"
    refused(capsys, ["scan", str(tiny_run), "--out", str(out), *extra], match)
    assert not out.exists()


def test_the_ray_engine_without_ray_is_refused_before_anything_is_written(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    out = tmp_path / "scan"
    message = r"the ray engine needs Ray Data, which is not installed; install it with pip install 'mindscope\[distri"
    refused(capsys, ["scan", str(tiny_run), "--out", str(out), "--engine", "ray"], message)
    assert not out.exists()


def test_merging_an_unfinished_scan_names_the_missing_shards(tiny_run, tmp_path, capsys, one_thread):
    out = tmp_path / "scan"
    assert main(["scan", str(tiny_run), "--out", str(out), *FAST, "--shard", "1/2"]) == 0
    assert "2 of 3 shards still missing" in capsys.readouterr().out
    before = snapshot(out)
    refused(capsys, ["scan", "--merge", "--out", str(out)], r"2 of 3 shards of .* are missing \(0, 2\); run them")
    assert snapshot(out) == before


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mindscope", "scan", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.mark.slow
def test_two_halves_in_two_processes_merge_into_the_whole_scan(tiny_run, scanned, tmp_path):
    out = tmp_path / "halves"
    halves = [_cli(str(tiny_run), "--out", str(out), *FAST, "--shard", f"{i}/2") for i in (0, 1)]
    for process in halves:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    merged = _cli("--merge", "--out", str(out))
    output, _ = merged.communicate(timeout=300)
    assert merged.returncode == 0 and "wrote" in output, output
    a, b = open_scan(scanned), open_scan(out)
    assert a.table().drop(columns="seconds").equals(b.table().drop(columns="seconds"))
    for method in ("gradient", "integrated"):
        assert torch.equal(a.maps(range(64), method), b.maps(range(64), method))
        assert torch.equal(a.class_maps(method).mean, b.class_maps(method).mean)
    for name, stats in a.layer_statistics().items():
        other = b.layer_statistics()[name]
        np.testing.assert_array_equal(stats.mean, other.mean)
        np.testing.assert_array_equal(stats.std, other.std)
    drop = lambda s: {k: v for k, v in s.items() if k != "methods"}  # noqa: E731  (methods hold seconds)
    assert drop(a.summary) == drop(b.summary)
