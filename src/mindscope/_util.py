"""One helper per repeated concern: checking a count, finding a model's device, keeping its mode.

Private: the looks and the CLI import these; users never need to.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def positive_int(value: object, name: str, *, maximum: int | None = None, hint: str = "") -> int:
    """Return `value` if it is an int in 1..maximum; otherwise raise one clear ValueError.

    `hint` is appended to the message (e.g. "a larger value costs ..."). bool is not an int here.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}{'; ' + hint if hint else ''}")
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


def memory_bytes() -> int:
    """Physical memory of this machine in bytes (a generous 64 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 64 << 30


def check_fits(needed: float, what: str, hint: str) -> None:
    """Refuse, before allocating, anything that needs more than half of this machine's memory."""
    limit = memory_bytes() // 2
    if needed > limit:
        raise ValueError(
            f"{what} needs about {_size(needed)}, more than half of this machine's {_size(memory_bytes())}; {hint}"
        )


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover
