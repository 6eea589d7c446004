"""One helper per repeated concern: checking a count, finding a model's device, keeping its mode.

Private: the looks and the CLI import these; users never need to.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def positive_int(value: object, name: str, *, maximum: int | None = None, hint: str = "") -> int:
    """Return `value` if it is an int in 1..maximum; otherwise raise one clear ValueError.

    `hint` is appended to the message (e.g. "such as 16"). bool is not an int here.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' ' + hint if hint else ''}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:,}, got {value:,}{'; ' + hint if hint else ''}")
    return value


def model_device(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter or buffer (CPU if it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode; on exit give each module back the mode it was found in."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
