"""Shared fixtures: seeds, small networks and a tiny recorded run."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

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
def small_cnn() -> nn.Sequential:
    """conv-relu-conv-relu-pool-linear on (3, 8, 8) images, 3 classes, seeded random weights, eval mode.

    Shared by the model-source tests, which export it (torch.export, TorchScript, ONNX) or
    rebuild it in Keras; do not change it in place.
    """
    generator = torch.Generator().manual_seed(1)
    net = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, 6, 3),
            relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(6, 3),
        )
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return net.eval()


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
