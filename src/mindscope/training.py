"""Train a classifier on a `DataSplits`, reporting to a recorder as it goes.

The recorder gets every logged point and every epoch's checkpoint; `RunRecorder`
writes them to a run directory, so a run can be resumed with no gap and no duplicate.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mindscope._util import eval_mode, model_device
from mindscope.data import DataSplits, ImageSet

__all__ = [
    "Recorder",
    "TrainConfig",
    "TrainingDiverged",
    "classification_metrics",
    "initial_state",
    "learning_rate",
    "make_optimizer",
    "resolve_device",
    "train",
]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 7
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # Adam peak learning rate
    warmup_steps: int = 100  # linear warm-up, then cosine decay to lr * final_lr_fraction
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.0
    seed: int = 0  # model init and per-epoch shuffling
    log_every: int = 50  # steps between logged train/test points
    histogram_every: int = 50  # steps between weight histograms (0: only at epoch ends)
    histogram_bins: int = 64
    step_test_images: int = 500  # test images evaluated at each logged step (all at epoch end)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be a finite number > 0 such as 2e-3, got {self.lr}")
        if self.log_every < 1 or self.histogram_every < 0:
            raise ValueError("log_every must be >= 1 and histogram_every >= 0")


class TrainingDiverged(ValueError):
    """The loss, the test loss or a weight became NaN or infinite: the weights are no longer usable.

    `what` names it ("loss", "test loss", or "weights of NAME"); `step` counts steps from 1.
    """

    def __init__(self, epoch: int, step: int, loss: float, lr: float, *, what: str = "loss") -> None:
        super().__init__(
            f"training diverged: the {what} became {loss} at epoch {epoch}, step {step} (learning rate "
            f"{lr:.3g}); the run keeps the checkpoints before it; train a new run with a lower --lr"
        )
        self.epoch, self.step, self.what = epoch, step, what


def _non_finite_weight(model: nn.Module) -> tuple[str, float] | None:
    """The first parameter holding NaN or an infinity and one such value, or None if all are finite."""
    named = list(model.named_parameters())
    if not named or bool(torch.stack([p.detach().isfinite().all() for _, p in named]).all()):
        return None  # one sync a step, as for the loss
    for name, p in named:
        bad = p.detach()[~p.detach().isfinite()]  # (k,) the offending values
        if bad.numel():
            return name, bad[0].item()
    return None


def _check_finite_test(test: dict[str, float], epoch: int, step: int, lr: float) -> None:
    """Raise TrainingDiverged if the test loss is not finite (weights that overflow the logits)."""
    if not math.isfinite(test["loss"]):
        raise TrainingDiverged(epoch, step, test["loss"], lr, what="test loss")


class Recorder(Protocol):
    def log(self, step: int, epoch: float, split: str, values: dict[str, float], *, scope: str) -> None: ...
    def log_weights(self, step: int, epoch: float, model: nn.Module) -> None: ...
    def checkpoint(self, epoch: int, step: int, model: nn.Module, state: dict[str, Any]) -> None: ...


def resolve_device(name: str) -> torch.device:
    """Check a --device choice against what this machine has."""
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; use cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


@torch.no_grad()
def classification_metrics(
    model: nn.Module, data: DataSplits, images: ImageSet, *, batch_size: int = 256, limit: int | None = None
) -> dict[str, float]:
    """Mean cross-entropy and accuracy over (the first `limit` of) an image set."""
    device = model_device(model)
    n = len(images) if limit is None else min(limit, len(images))
    loss, correct = 0.0, 0
    with eval_mode(model):
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n))
            x = data.inputs(images, idx).to(device)
            y = images.labels[idx].to(device)
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    return {"loss": loss / max(n, 1), "accuracy": correct / max(n, 1)}


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    floor = config.final_lr_fraction
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def initial_state(model: nn.Module, config: TrainConfig) -> dict[str, Any]:
    """The resume state before the first step: what epoch 0's checkpoint holds."""
    return {
        "optimizer": make_optimizer(model, config).state_dict(),
        "epoch": 0,
        "step": 0,
        "torch_rng": torch.get_rng_state(),
    }


def train(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    recorder: Recorder | None = None,
    *,
    resume: dict[str, Any] | None = None,
    progress: bool | None = None,
    on_epoch=None,
) -> list[dict[str, float]]:
    """Train `model` on `data.train`; return one dict of metrics per epoch trained.

    `resume` is a state saved by an earlier checkpoint: training continues after its epoch.
    """
    device = resolve_device(config.device)
    # channels_last doubles CPU convolution speed here; the weights' values are unchanged.
    model.to(device=device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    start_epoch, step = 0, 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        start_epoch, step = int(resume["epoch"]), int(resume["step"])
        torch.set_rng_state(resume["torch_rng"])
    train_set = data.train
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    first_step, session_began = step, time.perf_counter()  # for the whole run's time left
    history = []
    if recorder is not None and resume is None and config.histogram_every:
        recorder.log_weights(0, 0.0, model)  # the weights before training
    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        model.train()
        window_loss, window_correct, window_n = 0.0, 0, 0
        epoch_loss, epoch_correct = 0.0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=None if progress is None else not progress,
            leave=False,
            ncols=shutil.get_terminal_size((100, 24)).columns or 100,  # a terminal that reports 0 columns
        )
        for i in bar:
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            x = data.inputs(train_set, idx).to(device, memory_format=torch.channels_last)  # (B, C, H, W)
            y = train_set.labels[idx].to(device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, total_steps)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss_value = loss.item()  # one sync a step, needed for the metrics anyway
            if not math.isfinite(loss_value):
                raise TrainingDiverged(epoch + 1, step + 1, loss_value, optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bad = _non_finite_weight(model)
            if bad is not None:  # the next loss would show it, but not after an epoch's last step
                lr = optimizer.param_groups[0]["lr"]
                raise TrainingDiverged(epoch + 1, step, bad[1], lr, what=f"weights of {bad[0]}")
            if not bar.disable and step % 5 == 0:
                rate = (time.perf_counter() - session_began) / (step - first_step)  # seconds a step
                left = rate * (total_steps - step)  # ignores evaluation; close enough to plan by
                bar.set_postfix_str(f"loss {loss_value:.3f}, run ends in ~{left / 60:.1f} min", refresh=False)
            batch_loss = loss_value * len(idx)
            batch_correct = (logits.argmax(1) == y).sum().item()
            window_loss, window_correct, window_n = (
                window_loss + batch_loss,
                window_correct + batch_correct,
                window_n + len(idx),
            )
            epoch_loss, epoch_correct = epoch_loss + batch_loss, epoch_correct + batch_correct
            position = epoch + (i + 1) / steps_per_epoch
            if recorder is not None and step % config.log_every == 0:
                recorder.log(
                    step,
                    position,
                    "train",
                    {"loss": window_loss / window_n, "accuracy": window_correct / window_n},
                    scope="step",
                )
                test = classification_metrics(model, data, data.test, limit=config.step_test_images)
                _check_finite_test(test, epoch + 1, step, optimizer.param_groups[0]["lr"])
                recorder.log(step, position, "test", test, scope="step")
                model.train()
                window_loss, window_correct, window_n = 0.0, 0, 0
            if recorder is not None and config.histogram_every and step % config.histogram_every == 0:
                recorder.log_weights(step, position, model)
        bar.close()
        # Checked before anything of this epoch is recorded: the run keeps the checkpoints before it.
        test = classification_metrics(model, data, data.test)
        _check_finite_test(test, epoch + 1, step, optimizer.param_groups[0]["lr"])
        result = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": epoch_loss / len(train_set),
            "train_accuracy": epoch_correct / len(train_set),
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "seconds": time.perf_counter() - began,
        }
        history.append(result)
        if recorder is not None:
            recorder.log(
                step,
                epoch + 1,
                "train",
                {"loss": result["train_loss"], "accuracy": result["train_accuracy"]},
                scope="epoch",
            )
            recorder.log(step, epoch + 1, "test", test, scope="epoch")
            if not config.histogram_every or step % config.histogram_every:
                recorder.log_weights(step, epoch + 1, model)
            state = {
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "step": step,
                "torch_rng": torch.get_rng_state(),
            }
            recorder.checkpoint(epoch + 1, step, model, state)
        if on_epoch is not None:
            on_epoch(result)
    return history


def config_dict(config: TrainConfig) -> dict[str, Any]:
    return asdict(config)
