"""Recorded runs: what `mindscope train` writes, `load_run` reads, reruns, resumes and SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file as load_numpy

from mindscope.cli import main
from mindscope.model import AllConvNet
from mindscope.run import RunRecorder, load_run, train_run
from mindscope.training import TrainConfig

EPOCHS, STEPS_PER_EPOCH = 2, 4  # 128 images in batches of 32
COMMON = [
    "--width",
    "8",
    "--train-limit",
    "128",
    "--test-limit",
    "32",
    "--batch-size",
    "32",
    "--log-every",
    "1",
    "--histogram-every",
    "2",
]


def train(out: Path, *extra: str, epochs: int = EPOCHS) -> None:
    assert main(["train", "--epochs", str(epochs), *COMMON, *extra, "--out", str(out)]) == 0


def rows(metrics) -> list[tuple]:
    return [(m["step"], m["epoch"], m["split"], m["name"], m["scope"], m["value"]) for m in metrics]


def check_complete(metrics, epochs: int, steps_per_epoch: int = STEPS_PER_EPOCH) -> None:
    """No duplicate (step, split, name, scope), every step logged, every epoch closed once."""
    keys = Counter((m["step"], m["split"], m["name"], m["scope"]) for m in metrics)
    assert max(keys.values()) == 1
    expected = {
        (s, split, name, "step")
        for s in range(1, epochs * steps_per_epoch + 1)
        for split in ("train", "test")
        for name in ("loss", "accuracy")
    }
    expected |= {
        (e * steps_per_epoch, split, name, "epoch")
        for e in range(1, epochs + 1)
        for split in ("train", "test")
        for name in ("loss", "accuracy")
    }
    assert set(keys) == expected
    assert sorted({m["epoch"] for m in metrics if m["scope"] == "epoch"}) == list(range(1, epochs + 1))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(out)
    return out


# --- what a run holds ------------------------------------------------------------------------
def test_load_run_contents(reference):
    run = load_run(reference)
    assert run.path == reference and run.epochs == [0, 1, 2] and run.epoch == 2
    assert run.config["train"]["epochs"] == 2 and run.config["model"]["width"] == 8
    assert run.config["versions"]["torch"] == torch.__version__ and "mindscope" in run.config["versions"]
    assert run.data.classes == run.classes and len(run.classes) == 10
    assert len(run.data.train) == 128 and len(run.data.test) == 32
    assert tuple(run.data.normalization.mean) == tuple(run.config["data"]["normalization"]["mean"])
    assert not run.model.training
    check_complete(run.metrics, EPOCHS)
    with pytest.raises(ValueError, match=r"has no snapshot for epoch 3; snapshots: 0, 1, 2"):
        run.state_dict_at(3)


def test_snapshots_are_the_weights(reference):
    run = load_run(reference)
    torch.manual_seed(0)  # --seed 0: the network before training
    fresh = AllConvNet(width=8)
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(run.state_dict_at(0)[name], value, rtol=0, atol=0)
    for epoch in run.epochs:
        on_disk = load_numpy(reference / "snapshots" / f"epoch_{epoch:04d}.safetensors")
        for name, value in run.model_at(epoch).state_dict().items():
            np.testing.assert_array_equal(value.numpy(), on_disk[name])
    assert not torch.equal(run.state_dict_at(1)["features.0.weight"], run.state_dict_at(2)["features.0.weight"])
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, run.state_dict_at(2)[name])


def test_epoch_metrics_match_the_snapshots(reference):
    run = load_run(reference)
    data = run.data
    pixels = data.test.images.double() / 255  # (32, 3, 32, 32)
    mean = torch.tensor(data.normalization.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(data.normalization.std, dtype=torch.float64).view(1, 3, 1, 1)
    x = (pixels - mean) / std
    logged = {
        (m["epoch"], m["name"]): m["value"] for m in run.metrics if m["scope"] == "epoch" and m["split"] == "test"
    }
    for epoch in (1, 2):
        model = run.model_at(epoch).double()
        with torch.no_grad():
            logits = model(x)
        loss = F.cross_entropy(logits, data.test.labels).item()
        accuracy = (logits.argmax(1) == data.test.labels).double().mean().item()
        assert logged[(epoch, "loss")] == pytest.approx(loss, rel=1e-5)
        assert logged[(epoch, "accuracy")] == pytest.approx(accuracy, abs=1 / 32 + 1e-9)


def test_histograms_match_the_snapshots(reference):
    run = load_run(reference)
    histograms = run.histograms()
    assert sorted({h["step"] for h in histograms}) == [0, 2, 4, 6, 8]
    snapshot_of_step = {0: 0, 4: 1, 8: 2}
    tensors = list(run.state_dict_at(0))
    for h in histograms:
        assert h["edges"].dtype == np.float64 and h["counts"].dtype == np.int64
        assert len(h["edges"]) == len(h["counts"]) + 1
        assert h["tensor"] in tensors
        if h["step"] not in snapshot_of_step:
            continue
        values = run.state_dict_at(snapshot_of_step[h["step"]])[h["tensor"]].double().numpy().ravel()
        assert h["counts"].sum() == values.size == h["stats"]["count"]
        if values.min() < values.max():
            reference_counts, _ = np.histogram(values, bins=h["edges"])
            assert np.abs(reference_counts - h["counts"]).sum() <= 2  # float32 edges vs float64 bins
        assert h["stats"]["mean"] == pytest.approx(values.mean(), abs=1e-6)
    assert {h["tensor"] for h in histograms if h["step"] == 8} == set(tensors)


def test_epoch_train_metrics_are_the_mean_of_its_steps(reference):
    # With --log-every 1 each step-scope train point is one batch of 32; the epoch's is their mean.
    metrics = load_run(reference).metrics
    for epoch in (1, 2):
        for name in ("loss", "accuracy"):
            steps = [
                m["value"]
                for m in metrics
                if m["scope"] == "step"
                and m["split"] == "train"
                and m["name"] == name
                and epoch - 1 < m["epoch"] <= epoch
            ]
            closing = [
                m["value"]
                for m in metrics
                if m["scope"] == "epoch" and m["split"] == "train" and m["name"] == name and m["epoch"] == epoch
            ]
            assert len(steps) == STEPS_PER_EPOCH
            assert closing == [pytest.approx(np.mean(steps), rel=1e-9)]


# --- reproducibility and resuming ------------------------------------------------------------
def test_fixed_seed_reruns_identically(reference, tmp_path):
    train(tmp_path / "again")
    assert rows(load_run(tmp_path / "again").metrics) == rows(load_run(reference).metrics)
    train(tmp_path / "other", "--seed", "1", epochs=1)
    first = [r for r in rows(load_run(reference).metrics) if r[0] <= STEPS_PER_EPOCH]
    assert rows(load_run(tmp_path / "other").metrics) != first


def _same_weights(a: Path, b: Path, epoch: int) -> None:
    x, y = load_run(a).state_dict_at(epoch), load_run(b).state_dict_at(epoch)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_resume_after_one_epoch_matches_uninterrupted(reference, tmp_path):
    out = tmp_path / "r"
    train(out, epochs=1)
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    resumed = load_run(out)
    assert resumed.epochs == [0, 1, 2]
    check_complete(resumed.metrics, EPOCHS)
    assert rows(resumed.metrics) == rows(load_run(reference).metrics)
    _same_weights(out, reference, 2)
    assert [(h["step"], h["tensor"]) for h in resumed.histograms()] == [
        (h["step"], h["tensor"]) for h in load_run(reference).histograms()
    ]


def test_resume_records_the_new_total(tmp_path):
    # The config is the run's record of its settings: after extending it says how far it goes,
    # and a later plain --resume neither trains past that nor forgets it.
    out = tmp_path / "r"
    train(out, epochs=1)
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert load_run(out).config["train"]["epochs"] == 2
    assert main(["train", "--resume", str(out)]) == 2  # already trained 2 of 2


class Crash(Exception):
    pass


@pytest.mark.parametrize("when", ["after checkpoint 1", "mid epoch 2"])
def test_resume_after_a_crash(reference, tmp_path, monkeypatch, when):
    """A run that dies partway (rows past its last checkpoint included) resumes to the same record."""
    original_log, original_checkpoint = RunRecorder.log, RunRecorder.checkpoint

    def log(self, step, epoch, split, values, *, scope):
        original_log(self, step, epoch, split, values, scope=scope)
        if when == "mid epoch 2" and step == STEPS_PER_EPOCH + 2 and split == "train":
            raise Crash

    def checkpoint(self, epoch, step, model, state):
        original_checkpoint(self, epoch, step, model, state)
        if when == "after checkpoint 1" and epoch == 1:
            raise Crash

    monkeypatch.setattr(RunRecorder, "log", log)
    monkeypatch.setattr(RunRecorder, "checkpoint", checkpoint)
    out = tmp_path / "r"
    with pytest.raises(Crash):
        train(out)
    monkeypatch.undo()
    crashed = load_run(out)
    assert crashed.epochs == [0, 1]
    if when == "mid epoch 2":  # rows past the checkpoint are there until resuming
        assert max(m["step"] for m in crashed.metrics) == STEPS_PER_EPOCH + 2
    assert main(["train", "--resume", str(out)]) == 0
    check_complete(load_run(out).metrics, EPOCHS)
    assert rows(load_run(out).metrics) == rows(load_run(reference).metrics)
    _same_weights(out, reference, 2)


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path):
    """Kill `python -m mindscope train` with SIGKILL at seeded random moments; the run stays readable
    and `--resume` completes it to the same record as an uninterrupted run."""
    epochs = 3
    args = ["--epochs", str(epochs), *COMMON]
    train(tmp_path / "uninterrupted", epochs=epochs)
    expected = rows(load_run(tmp_path / "uninterrupted").metrics)
    rng = random.Random(1234)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for trial in range(3):
        out = tmp_path / f"killed{trial}"
        process = subprocess.Popen(
            [sys.executable, "-m", "mindscope", "train", *args, "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            if trial > 0:  # wait for the run to exist, then kill during training
                deadline = time.monotonic() + 30
                while not out.exists() and process.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 1.5))
            else:  # anywhere, start-up included
                time.sleep(rng.uniform(0.0, 5.0))
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(timeout=30)
        if not out.exists():  # killed before epoch 0 was saved: no run at all
            assert main(["train", *args, "--out", str(out)]) == 0
        else:
            run = load_run(out)  # a killed run is readable
            assert run.epochs[0] == 0 and run.model is not None
            if run.epochs[-1] < epochs:
                assert main(["train", "--resume", str(out)]) == 0
        final = load_run(out)
        assert final.epochs == list(range(epochs + 1))
        check_complete(final.metrics, epochs)
        assert rows(final.metrics) == expected


def test_one_epoch_is_said_in_the_singular(tmp_path, one_thread):
    said = []
    config = TrainConfig(epochs=1, batch_size=32)
    train_run(tmp_path / "one", config, width=4, train_limit=32, test_limit=16, say=said.append, progress=False)
    assert any(line.endswith(f"16 test images, 1 epoch, run in {tmp_path / 'one'}") for line in said), said
