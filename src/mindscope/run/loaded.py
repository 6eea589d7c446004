"""A run read back: its config, metrics, weight snapshots, and the model and data to look at."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mindscope.data import DataSplits, Normalization, load_data
from mindscope.model import AllConvNet
from mindscope.run.store import DATABASE, Run, read_metrics, require


def build_model(config: Mapping[str, Any]) -> nn.Module:
    m = config["model"]
    return AllConvNet(width=m["width"], num_classes=m["num_classes"], in_channels=m["in_channels"])


def data_from_config(config: Mapping[str, Any]) -> DataSplits:
    d = config["data"]
    norm = Normalization(tuple(d["normalization"]["mean"]), tuple(d["normalization"]["std"]))
    return load_data(
        d["spec"],
        seed=config["train"]["seed"],
        train_limit=d.get("train_limit"),
        test_limit=d.get("test_limit"),
        normalization=norm,
    )


@dataclass
class LoadedRun:
    """A run read back: its config, metrics, snapshots, and model and data to look at."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    epochs: list[int]
    model: nn.Module
    epoch: int

    @property
    def data(self) -> DataSplits:
        require(self.config, self.path, "data", "train")
        if not hasattr(self, "_data"):
            self._data = data_from_config(self.config)
        return self._data

    @property
    def classes(self) -> tuple[str, ...]:
        require(self.config, self.path, "data")
        return tuple(self.config["data"]["classes"])

    def state_dict_at(self, epoch: int) -> dict[str, torch.Tensor]:
        if epoch not in self.epochs:
            raise ValueError(
                f"run {self.path} has no snapshot for epoch {epoch}; snapshots: {', '.join(map(str, self.epochs))}"
            )
        try:
            tensors = load_file(self.path / "snapshots" / f"epoch_{epoch:04d}.safetensors")
        except (SafetensorError, OSError) as exc:
            raise ValueError(
                f"snapshot of epoch {epoch} in {self.path} is missing or damaged "
                f"({str(exc).splitlines()[0]}); load another --epoch or train again"
            ) from exc
        # safetensors sorts names; give them back in the model's own (layer) order
        order = list(build_model(self.config).state_dict())
        return {name: tensors[name] for name in order if name in tensors}

    def model_at(self, epoch: int) -> nn.Module:
        """The model with the weights of `epoch`, in eval mode; refuses damaged or non-finite weights."""
        model = build_model(self.config)
        weights = self.state_dict_at(epoch)
        expected = model.state_dict()
        for name, tensor in weights.items():  # load_state_dict would cast silently
            if name in expected and tensor.dtype != expected[name].dtype:
                raise ValueError(
                    f"snapshot of epoch {epoch} in {self.path} stores {name} as {str(tensor.dtype)[6:]}, "
                    f"the model holds {str(expected[name].dtype)[6:]}: the file was altered; "
                    "load another --epoch or train again"
                )
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            raise ValueError(
                f"snapshot of epoch {epoch} in {self.path} does not fit the run's model "
                f"({str(exc).splitlines()[0]}); load another --epoch or train again"
            ) from exc
        bad = [name for name, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise ValueError(
                f"snapshot of epoch {epoch} in {self.path} holds NaN or Inf in {bad[0]}; "
                f"load an earlier --epoch (snapshots: {', '.join(map(str, self.epochs))})"
            )
        # As in training: channels_last convolutions take about a quarter less CPU time per
        # gradient step (the demo run, 16 images, Gauss-Legendre 32); the values are unchanged.
        return model.to(memory_format=torch.channels_last).eval()

    def histograms(self) -> list[dict[str, Any]]:
        with closing(sqlite3.connect(self.path / DATABASE)) as db:
            rows = db.execute(
                "SELECT step, epoch, tensor, edges, counts, stats FROM histograms ORDER BY step, tensor"
            ).fetchall()
        return [
            {
                "step": s,
                "epoch": e,
                "tensor": t,
                "edges": np.frombuffer(ed, np.float64),
                "counts": np.frombuffer(c, np.int64),
                "stats": json.loads(st),
            }
            for s, e, t, ed, c, st in rows
        ]


def load_run(path: Path | str, *, epoch: int | None = None) -> LoadedRun:
    """Open a run directory: the model at `epoch` (default: the last snapshot), data, metrics."""
    run = Run.open(Path(path))
    try:
        epochs = [int(r[0]) for r in run.db.execute("SELECT epoch FROM checkpoints ORDER BY epoch")]
        metrics = read_metrics(run.db)
        last = run.last_checkpoint()
    finally:
        run.close()
    if last is None:
        raise ValueError(
            f"run {path} has no checkpoint yet (it was stopped before epoch 0 was saved); "
            "start it again with 'mindscope train'"
        )
    chosen = epochs[-1] if epoch is None else epoch
    loaded = LoadedRun(Path(path), run.config, metrics, epochs, nn.Identity(), chosen)
    loaded.model = loaded.model_at(chosen)
    return loaded
