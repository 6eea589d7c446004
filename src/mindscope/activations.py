"""Capture what any layer of any model computes, and summarise it over a dataset.

`capture_activations` records chosen modules' outputs for one batch; `activation_statistics`
streams a dataset through the model and keeps per-channel running statistics; `top_activating`
finds the examples that drive one channel hardest. All three take any `nn.Module`.
Visualising channels as images, and ranking inputs by a unit's activation, follow
Zeiler & Fergus 2014 ("Visualizing and Understanding Convolutional Networks").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mindscope._util import eval_mode, model_device, positive_int
from mindscope.inputs import channels_second, check_batch, layer_channel_axis
from mindscope.layers import resolve_layer, resolve_layers

__all__ = [
    "LayerStatistics",
    "LayerSummary",
    "Saturation",
    "TopActivations",
    "activation_statistics",
    "batches",
    "capture_activations",
    "saturation_rule",
    "top_activating",
]

LayerSpecs = str | int | Sequence[str | int]
Data = Tensor | Iterable[Tensor] | Iterable[Sequence[Tensor]]


@dataclass(frozen=True)
class Saturation:
    """Call an activation saturated when it lies within `tolerance` of `level`.

    The default suits ELU, whose negative side flattens out at -1.
    """

    level: float = -1.0
    tolerance: float = 0.05

    def __call__(self, a: Tensor) -> Tensor:
        return (a - self.level).abs() <= self.tolerance

    def __str__(self) -> str:
        return f"within {self.tolerance:g} of {self.level:g}"


def saturation_rule(module: nn.Module) -> Saturation | None:
    """The rule of a layer whose output flattens out: ELU, CELU at -alpha, SELU at -scale * alpha, a module's
    own `saturation_floor` (the Keras adapter's ELU); else None (a ReLU is 0 rather than saturated)."""
    if (floor := getattr(module, "saturation_floor", None)) is not None:
        return Saturation(float(floor))
    if isinstance(module, (nn.ELU, nn.CELU)):
        return Saturation(-float(module.alpha))
    if isinstance(module, nn.SELU):
        return Saturation(-1.0507009873554805 * 1.6732632423543772)  # torch's SELU constants
    return None


@dataclass(frozen=True)
class LayerSummary:
    """One layer in a few numbers: fractions over all channels, examples and positions."""

    layer: str
    channels: int
    active: float  # fraction of values > 0
    saturated: float  # fraction of values the saturation rule flags (nan: no rule for this layer)
    dead: float  # fraction of channels never > 0 on any example
    mean: float
    std: float


@dataclass(frozen=True)
class LayerStatistics:
    """Per-channel statistics of one layer over a dataset; every array has shape (C,).

    `std` is the population std (ddof=0) over all examples and spatial positions.
    """

    layer: str
    examples: int  # number of inputs seen
    positions: int  # values per channel per example (H * W for a conv map)
    mean: np.ndarray
    std: np.ndarray
    active: np.ndarray  # fraction of values > 0
    saturated: np.ndarray  # fraction of values flagged by the saturation rule (nan: the layer has none)
    maximum: np.ndarray  # largest value seen
    saturation: str | None = None  # the rule applied, e.g. "within 0.05 of -1"; None: none applies

    @property
    def dead(self) -> np.ndarray:
        """Boolean (C,): the channel was never > 0 at any position of any example."""
        return self.maximum <= 0

    @property
    def dead_channels(self) -> np.ndarray:
        """Indices of the dead channels, ascending."""
        return np.flatnonzero(self.dead)

    @property
    def summary(self) -> LayerSummary:
        # Every channel has the same number of values, so layer figures are plain means.
        mean = float(self.mean.mean())
        var = float((self.std**2).mean() + ((self.mean - mean) ** 2).mean())
        return LayerSummary(
            self.layer,
            len(self.mean),
            float(self.active.mean()),
            float(self.saturated.mean()),
            float(self.dead.mean()),
            mean,
            var**0.5,
        )


@dataclass(frozen=True)
class TopActivations:
    """The k examples with the highest mean activation of one channel, best first."""

    layer: str
    channel: int
    indices: np.ndarray  # (k,) positions in the data, in the order it was given
    scores: np.ndarray  # (k,) mean activation of the channel over positions
    maps: np.ndarray  # (k, H, W) the channel's activation map for each example


class _Done(Exception):
    """Raised by the last hook to stop a forward pass whose remaining layers nobody asked for."""


@contextmanager
def _recording(model: nn.Module, layers: Sequence[str], *, stop_early: bool = False) -> Iterator[dict[str, Tensor]]:
    """Hook the named modules; yield a dict that each forward pass fills with their outputs.

    Outputs are detached clones, so later in-place operations (`ReLU(inplace=True)`,
    `out += identity`) cannot change what was recorded. A module that runs more than once
    in a forward pass is recorded at its first call. With `stop_early`, the last hook
    raises `_Done` to cut the pass short (`_forward` catches it). Hooks go when the block
    ends, whatever happened inside it.
    """
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(
            f"no layer {missing[0]!r} in {type(model).__name__}; resolve names with mindscope.resolve_layers"
        )
    record: dict[str, Tensor] = {}
    wanted = set(layers)

    def hook_for(name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, out: object) -> None:
            if name in record:
                return
            if not isinstance(out, Tensor):
                raise TypeError(
                    f"layer {name!r} returned {type(out).__name__}, not a Tensor; capture one of its submodules instead"
                )
            record[name] = out.detach().clone()
            if stop_early and wanted.issubset(record):
                raise _Done

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Run in eval mode without autograd, then put every module's mode back as found."""
    with eval_mode(model), torch.no_grad():
        yield


def _forward(model: nn.Module, x: Tensor, record: dict[str, Tensor], layers: Sequence[str]) -> None:
    record.clear()
    try:
        model(x)
    except _Done:
        pass
    absent = [name for name in layers if name not in record]
    if absent:
        raise ValueError(
            f"layer {absent[0]!r} did not run in the forward pass; "
            f"choose a module that {type(model).__name__}.forward calls"
        )


def _check_input(x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor batch, got {type(x).__name__}")
    return check_batch(x, floating=False)


def capture_activations(model: nn.Module, x: Tensor, layers: LayerSpecs) -> dict[str, Tensor]:
    """Return the outputs of `layers` for the batch `x`, keyed by dotted module name.

    Layers are dotted names ("features.5") or walk-through layer numbers (3, "3,6,9");
    a number means the activation after that layer (`resolve_layers(..., output=True)`;
    `mindscope.layers.explain_layer` says which module that is). x is any batch (N, ...).
    The model runs in eval mode under `torch.no_grad()` on its own device and is left
    in the mode it was found in; only the requested outputs are kept, on that device,
    and the pass stops once the last of them is computed.

    Returns:
        {name: tensor}, each (N, C, H, W) for a conv layer, in the order asked.
    """
    names = resolve_layers(model, layers, output=True)
    x = _check_input(x).to(model_device(model))
    with _inference(model), _recording(model, names, stop_early=True) as record:
        _forward(model, x, record, names)
        return {name: record[name] for name in names}


def batches(data: Data, batch_size: int) -> Iterator[Tensor]:
    """Yield input batches from a tensor (sliced by `batch_size`) or an iterable of batches.

    An iterable may yield tensors or tuples whose first item is the inputs, as a
    `DataLoader` over (x, y) pairs does; its own batch size is kept.
    """
    positive_int(batch_size, "batch_size")
    if isinstance(data, Tensor):
        _check_input(data)
        for start in range(0, len(data), batch_size):
            yield data[start : start + batch_size]
        return
    if not isinstance(data, Iterable):
        raise TypeError(f"data must be a Tensor (N, ...) or an iterable of batches, got {type(data).__name__}")
    for item in data:
        if isinstance(item, (tuple, list)) and item:
            item = item[0]
        yield _check_input(item)


class _Moments:
    """Per-channel running count, mean, M2, active, saturated and max (Chan et al. merge)."""

    def __init__(self, channels: int, device: torch.device) -> None:
        z = lambda: torch.zeros(channels, dtype=torch.float64, device=device)  # noqa: E731
        self.count = 0
        self.mean, self.m2, self.active, self.saturated = z(), z(), z(), z()
        self.maximum = torch.full((channels,), -torch.inf, dtype=torch.float64, device=device)

    def update(self, a: Tensor, saturation: Callable[[Tensor], Tensor] | None) -> None:
        dims = [0, *range(2, a.dim())]  # all but the channel axis
        n = a.numel() // a.shape[1]
        var, mean = torch.var_mean(a, dim=dims, correction=0)  # one pass, no (C, M) copy
        mean, m2 = mean.double(), var.double() * n
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += m2 + delta**2 * (self.count * n / total)
        self.count = total
        self.active += (a > 0).sum(dim=dims)
        if saturation is None:
            self.saturated.fill_(torch.nan)
        else:
            mask = saturation(a)
            if not isinstance(mask, Tensor) or mask.shape != a.shape:
                raise ValueError(
                    f"saturation must return a mask shaped like its input {tuple(a.shape)}, "
                    f"got {getattr(mask, 'shape', type(mask).__name__)}; apply it elementwise"
                )
            self.saturated += mask.sum(dim=dims)
        self.maximum = torch.maximum(self.maximum, a.amax(dim=dims).double())


def activation_statistics(
    model: nn.Module,
    data: Data,
    layers: LayerSpecs,
    *,
    batch_size: int = 256,
    saturation: Callable[[Tensor], Tensor] | None = None,
    channel_axis: int | None = None,
) -> dict[str, LayerStatistics]:
    """Stream `data` through the model and return per-channel statistics for each layer.

    Memory is bounded by one batch of the requested layers plus a few (C,) float64
    accumulators. `saturation` maps activations to a boolean mask of saturated values and
    applies to every layer; by default each layer gets its own `saturation_rule` (ELU:
    within 0.05 of -1), and a layer that has none (the last convolution, a ReLU) reports
    `saturated` as nan rather than a fraction of a rule that does not apply to it.
    `channel_axis` is where each layer's output keeps its channels: 1 for PyTorch's
    (N, C, ...) and a Linear's (N, F); -1 for channels-last models (Keras, (N, H, W, C))
    and sequence layers, (N, L, D), whose channels are the D values of each position; None:
    what the model states (mindscope's Keras adapter: -1), else 1.

    Returns:
        {name: LayerStatistics}; `.summary` of each gives the per-layer fractions.
    """
    channel_axis = layer_channel_axis(model, channel_axis)
    if saturation is not None and not callable(saturation):
        raise TypeError(
            f"saturation must be a callable Tensor -> bool Tensor, e.g. "
            f"Saturation(-1.0, tolerance=0.05), got {saturation!r}"
        )
    names = resolve_layers(model, layers, output=True)
    modules = dict(model.named_modules())
    rules = {name: saturation if saturation is not None else saturation_rule(modules[name]) for name in names}
    device = model_device(model)
    moments: dict[str, _Moments] = {}
    examples = 0
    with _inference(model), _recording(model, names, stop_early=True) as record:
        for x in batches(data, batch_size):
            _forward(model, x.to(device), record, names)
            examples += len(x)
            for name in names:
                a = channels_second(record[name], channel_axis, name=f"layer {name!r} output")
                moments.setdefault(name, _Moments(a.shape[1], a.device)).update(a, rules[name])
            record.clear()
    if examples == 0:
        raise ValueError("data held no examples; pass at least one input")
    result = {}
    for name in names:
        m = moments[name]
        as_np = lambda t: t.cpu().numpy()  # noqa: E731
        result[name] = LayerStatistics(
            name,
            examples,
            m.count // examples,
            as_np(m.mean),
            as_np((m.m2 / m.count).sqrt()),
            as_np(m.active / m.count),
            as_np(m.saturated / m.count),
            as_np(m.maximum),
            _describe(rules[name]),
        )
    return result


def _describe(rule: Callable[[Tensor], Tensor] | None) -> str | None:
    if rule is None:
        return None
    return str(rule) if isinstance(rule, Saturation) else getattr(rule, "__name__", type(rule).__name__)


def top_activating(
    model: nn.Module,
    data: Data,
    layer: str | int,
    channel: int,
    *,
    k: int = 9,
    batch_size: int = 256,
    channel_axis: int | None = None,
) -> TopActivations:
    """Return the k examples of `data` with the highest mean activation of `channel`.

    Ties go to the earlier example. Holds at most k + one batch of maps at a time.
    Fewer than k results come back when the data has fewer than k examples.
    `channel_axis` is where the layer's output keeps its channels, as in `activation_statistics`.
    """
    channel_axis = layer_channel_axis(model, channel_axis)
    positive_int(k, "k")
    if not isinstance(channel, int) or isinstance(channel, bool):
        raise TypeError(f"channel must be an int, got {channel!r}")
    name = resolve_layer(model, layer, output=True)
    device = model_device(model)
    best_idx = np.zeros(0, dtype=np.int64)
    best_scores = np.zeros(0, dtype=np.float64)
    best_maps: np.ndarray | None = None
    seen = 0
    with _inference(model), _recording(model, [name], stop_early=True) as record:
        for x in batches(data, batch_size):
            _forward(model, x.to(device), record, [name])
            a = channels_second(record.pop(name), channel_axis, name=f"layer {name!r} output")
            if not 0 <= channel < a.shape[1]:
                raise ValueError(
                    f"channel {channel} is out of range for layer {name!r} with output "
                    f"shape {tuple(a.shape[1:])}; channels run from 0 to {a.shape[1] - 1}"
                )
            maps = a[:, channel]  # (n, H, W)
            scores = maps.reshape(len(maps), -1).double().mean(dim=1)  # (n,)
            keep = torch.sort(scores, descending=True, stable=True).indices[:k]  # only these can enter
            idx = np.concatenate([best_idx, seen + keep.cpu().numpy()])
            sc = np.concatenate([best_scores, scores[keep].cpu().numpy()])
            mp = maps[keep].float().cpu().numpy()
            mp = mp if best_maps is None else np.concatenate([best_maps, mp])
            order = np.lexsort((idx, -sc))[:k]
            best_idx, best_scores, best_maps = idx[order], sc[order], mp[order]
            seen += len(x)
    if best_maps is None:
        raise ValueError("data held no examples; pass at least one input")
    return TopActivations(name, channel, best_idx, best_scores, best_maps)
