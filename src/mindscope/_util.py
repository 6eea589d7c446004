"""One helper per repeated concern: checking a count, finding a model's device, keeping its mode.

Private: the looks and the CLI import these; users never need to.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


def count(n: int, noun: str) -> str:
    """ "1 epoch", "4 epochs": the noun agrees with the number."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


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


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Stop gradients to every parameter for the block; give each its own requires_grad back after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


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


Substitute = Callable[[torch.Tensor], torch.Tensor]


class _Stop(Exception):
    """Raised by a tap with `stop=True` once its layer has run: the rest of the pass is not needed."""


class LayerTap:
    """One named module's output on each forward pass, optionally replaced; see `tap_layer`."""

    def __init__(self, model: nn.Module, name: str, substitute: Substitute | None, leaf: bool, stop: bool) -> None:
        self.model, self.name = model, name
        self.substitute, self.leaf, self.stop = substitute, leaf, stop
        self.output: torch.Tensor | None = None  # the layer's output (after substitute) in the last pass
        self._calls = 0

    def hook(self, _module: nn.Module, _inputs: tuple, out: object) -> torch.Tensor | None:
        self._calls += 1
        if self._calls > 1:
            raise ValueError(
                f"layer {self.name!r} runs more than once in one forward pass; pick a module that runs once"
            )
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"layer {self.name!r} returns {type(out).__name__}, not a tensor; pick one of its modules")
        out = self.substitute(out) if self.substitute is not None else out
        if self.leaf:  # gradients stop here: a fresh leaf, handed on as a clone so in-place ops cannot touch it
            self.output = out.detach().requires_grad_(True)
            out = self.output.clone()
        else:
            self.output = out
        if self.stop:
            raise _Stop
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """Run the model on x; return its output (None when the pass stopped at the layer)."""
        self._calls, self.output = 0, None
        try:
            result = self.model(x)
        except _Stop:
            result = None
        if self.output is None:
            raise ValueError(f"layer {self.name!r} did not run in the forward pass; pick a module the model uses")
        return result


@contextmanager
def tap_layer(
    model: nn.Module, name: str, *, substitute: Substitute | None = None, leaf: bool = False, stop: bool = False
) -> Iterator[LayerTap]:
    """Hook module `name` for the block: record its output, `substitute(output)` where given.

    With `leaf`, the output goes on as a fresh leaf that requires grad (`tap.output`), so a
    backward pass reaches it and stops there. With `stop`, a pass ends once the layer has run.
    """
    tap = LayerTap(model, name, substitute, leaf, stop)
    handle = model.get_submodule(name).register_forward_hook(tap.hook)
    try:
        yield tap
    finally:
        handle.remove()
