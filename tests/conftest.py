"""Shared fixtures: seeds, small networks and a tiny recorded run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mindscope.cli import main


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: the same arithmetic in subprocesses, no oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory: AllConvNet(width=8), 1 epoch on 256 built-in images, 64 test images."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    status = main(
        [
            "train",
            "--epochs",
            "1",
            "--width",
            "8",
            "--train-limit",
            "256",
            "--test-limit",
            "64",
            "--batch-size",
            "32",
            "--log-every",
            "4",
            "--histogram-every",
            "4",
            "--out",
            str(out),
        ]
    )
    assert status == 0, "training the tiny run failed"
    return out
