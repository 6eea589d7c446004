"""How far to trust an attribution map: sanity, faithfulness, localisation, completeness.

* Model parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"):
  re-initialise the layers from the output down, cascading, and measure how similar the
  maps stay (Spearman rank correlation, of |map| and of the signed map). A map that does
  not change when the weights are destroyed does not explain the weights.
* Deletion and insertion (Petsiuk, Das & Saenko 2018, "RISE"): remove the most relevant
  pixels first and watch the target probability fall, or insert them into a baseline and
  watch it rise; compared with a random order, so each method's margin over chance is
  one number.
* Localisation on object masks: the share of positive attribution inside the mask and
  the pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation
  Backprop"), both against a uniform random map.
* Completeness, where the method has it (integrated gradients).

Every check takes any `nn.Module`, tensors on the model's device, and a method: a function
`method(model, x, targets)` returning an `Attribution` (or a tensor shaped like x).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mindscope.attribution import (
    Attribution,
    Baseline,
    InteriorGradients,
    check_batch,
    input_gradients_only,
    resolve_baseline,
    resolve_targets,
)
from mindscope.layers import resolve_layers

Method = Callable[[nn.Module, Tensor, Tensor], "Attribution | Tensor"]
Progress = Callable[[str], None]

# A method passes the randomisation check when the mean Spearman correlation of its |map|
# with all layers randomised falls below this (1 = unchanged map, 0 = unrelated ranks).
RANDOMISATION_THRESHOLD = 0.5


# --- helpers ---------------------------------------------------------------------------


def attribution_tensor(result: Attribution | InteriorGradients | Tensor) -> Tensor:
    """Return the map of a method's result, (N, C, H, W) or (N, H, W), detached."""
    if isinstance(result, Attribution):
        return result.attributions.detach()
    if isinstance(result, InteriorGradients):
        if result.alphas.numel() != 1:
            raise ValueError(
                f"interior gradients at {result.alphas.numel()} alphas give several maps; "
                "evaluate one alpha at a time, e.g. interior_gradients(..., alphas=[0.5])"
            )
        return result.gradients[0].detach()
    if isinstance(result, Tensor):
        return result.detach()
    raise TypeError(f"a method must return an Attribution or a tensor, got {type(result).__name__}")


def _check_images(x: Tensor) -> None:
    check_batch(x, 1)


def pixel_map(
    attributions: Tensor, shape: Sequence[int], *, name: str = "attributions", against: str = "images"
) -> Tensor:
    """Sum a map over channels to one value per pixel, (N, H, W); check it fits images of `shape`."""
    n, _, h, w = shape
    if not isinstance(attributions, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(attributions).__name__}")
    if attributions.dim() == 4 and (attributions.shape[0], *attributions.shape[2:]) == (n, h, w):
        return attributions.sum(dim=1)
    if attributions.dim() == 3 and tuple(attributions.shape) == (n, h, w):
        return attributions
    raise ValueError(
        f"{name} of shape {tuple(attributions.shape)} do not fit the {against} (N={n}, H={h}, "
        f"W={w}); give one map per image, (N, C, H, W) or (N, H, W)"
    )


def _targets(model: nn.Module, x: Tensor, target: int | Tensor | None, max_batch: int) -> Tensor:
    with input_gradients_only(model), torch.no_grad():
        logits = torch.cat([model(x[i : i + max_batch]) for i in range(0, x.shape[0], max_batch)])
    return resolve_targets(target, logits.argmax(dim=-1), logits.shape[-1])


def rankdata(values: Tensor) -> Tensor:
    """Rank each row (last dimension) from 1, tied values sharing their average rank; float64."""
    v = values.detach().to(torch.float64)
    flat = v.reshape(-1, v.shape[-1])  # (R, n)
    rows, n = flat.shape
    ordered, order = flat.sort(dim=1, stable=True)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # each row starts a new group too
    group = starts.flatten().cumsum(0) - 1  # (R * n,) tie group of each slot
    position = torch.arange(1, n + 1, dtype=torch.float64, device=v.device).repeat(rows)
    total = torch.zeros(int(group[-1]) + 1, dtype=torch.float64, device=v.device).index_add_(0, group, position)
    average = (total / torch.bincount(group).to(torch.float64))[group].view(rows, n)
    return torch.empty_like(average).scatter_(1, order, average).view(v.shape)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each example of a with the same example of b, (N,) float64.

    Each example (everything after dim 0) is one ranked sample; ties get average ranks, as
    scipy.stats.spearmanr does. A constant example has no ranking: its correlation is nan.
    """
    if a.shape != b.shape:
        raise ValueError(f"spearman needs maps of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2 or a[0].numel() < 2:
        raise ValueError(
            f"spearman needs a batch (N, ...) of at least 2 values per example, got shape {tuple(a.shape)}"
        )
    ra, rb = rankdata(a.flatten(1)), rankdata(b.flatten(1))  # (N, D)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / ((ra * ra).sum(1) * (rb * rb).sum(1)).sqrt()


# --- model parameter randomisation --------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RandomisationResult:
    """Similarity of each step's maps to the original maps; row 0 is the model untouched."""

    layers: tuple[str, ...]  # (L,) randomised in this order, from the output down, cascading
    spearman_abs: np.ndarray  # (L + 1, N) rank correlation of |map| with the original
    spearman_signed: np.ndarray  # (L + 1, N) the same for the signed map
    threshold: float  # pass: mean spearman_abs with all layers randomised below this

    @property
    def curve(self) -> np.ndarray:
        """(L + 1,) mean rank correlation of |map| after 0, 1, ... L layers randomised."""
        return np.nanmean(self.spearman_abs, axis=1)

    @property
    def final_abs(self) -> float:
        return float(np.nanmean(self.spearman_abs[-1]))

    @property
    def final_signed(self) -> float:
        return float(np.nanmean(self.spearman_signed[-1]))

    @property
    def passed(self) -> bool:
        return self.final_abs < self.threshold


def parameterised_layers(model: nn.Module) -> list[str]:
    """Return the dotted names of the modules that own parameters, in registration order."""
    return [name for name, m in model.named_modules() if name and next(m.parameters(recurse=False), None) is not None]


def randomise_layer(module: nn.Module, generator: torch.Generator) -> None:
    """Redraw each of the module's own parameters from a normal with the mean and std of its values.

    Matching the first two moments keeps every layer's scale, so the signal neither dies nor
    explodes through the randomised layers: what changes is the structure the training put in.
    """
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            values = p.detach().to(torch.float64)
            std = float(values.std()) if values.numel() > 1 else 0.0
            draw = torch.randn(p.shape, generator=generator, dtype=torch.float64) * std + float(values.mean())
            p.copy_(draw.to(p))


def _layers_top_down(model: nn.Module, layers: Sequence[str | int] | str | None) -> list[str]:
    owners = parameterised_layers(model)
    if not owners:
        raise ValueError("the model has no parameterised layers to randomise")
    chosen = owners if layers is None else resolve_layers(model, layers)
    missing = [name for name in chosen if name not in owners]
    if missing:
        raise ValueError(
            f"layer {missing[0]!r} has no parameters to randomise; parameterised layers are: {', '.join(owners)}"
        )
    rank = {name: i for i, name in enumerate(owners)}
    return sorted(chosen, key=rank.__getitem__, reverse=True)


def _similarities(reference: Tensor, current: Tensor, shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    if current.shape != reference.shape:
        raise ValueError(
            f"the method returned maps of shape {tuple(current.shape)} for the randomised model "
            f"but {tuple(reference.shape)} for the original; it must return one shape"
        )
    signed_ref, signed = pixel_map(reference, shape), pixel_map(current, shape)  # (N, H, W)
    abs_ref = reference.abs().sum(1) if reference.dim() == 4 else reference.abs()
    abs_now = current.abs().sum(1) if current.dim() == 4 else current.abs()
    return spearman(abs_ref, abs_now), spearman(signed_ref, signed)


def randomisation_check(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None,
    method: Method,
    *,
    layers: Sequence[str | int] | str | None = None,
    seed: int = 0,
    threshold: float = RANDOMISATION_THRESHOLD,
    reference: Tensor | None = None,
    max_batch: int = 128,
    progress: Progress | None = None,
) -> RandomisationResult:
    """Randomise the layers from the output down, cascading; compare each step's maps with the original.

    `layers` (names or numbers; default every parameterised layer) are always taken top-down.
    Targets are fixed from the untouched model (its predictions when `target` is None), so
    every step explains the same class. The caller's model is never changed: a deep copy is
    randomised. `reference` may pass the method's maps on the untouched model if already
    computed. `progress(label)` is called after each attribution.
    """
    _check_images(x)
    if not callable(method):
        raise TypeError(f"method must be a function (model, x, targets) -> Attribution, got {type(method).__name__}")
    names = _layers_top_down(model, layers)
    targets = _targets(model, x, target, max_batch)
    x = x.detach()
    work = copy.deepcopy(model)
    if reference is None:
        reference = attribution_tensor(method(work, x, targets))
        if progress is not None:
            progress("original model")
    pixel_map(reference, x.shape, name="the method's maps")
    generator = torch.Generator().manual_seed(seed)
    rows = [_similarities(reference, reference, x.shape)]
    for name in names:
        randomise_layer(work.get_submodule(name), generator)
        rows.append(_similarities(reference, attribution_tensor(method(work, x, targets)), x.shape))
        if progress is not None:
            progress(f"randomised {name}")
    return RandomisationResult(
        tuple(names),
        torch.stack([r[0] for r in rows]).cpu().numpy(),
        torch.stack([r[1] for r in rows]).cpu().numpy(),
        float(threshold),
    )


# --- deletion and insertion ---------------------------------------------------------------


def area_under(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Trapezoid area under each row of `curves` (N, S + 1) over `fractions` (S + 1,) in [0, 1]."""
    return ((curves[:, 1:] + curves[:, :-1]) / 2 * np.diff(fractions)).sum(axis=1)


@dataclass(frozen=True, eq=False)
class DeletionResult:
    """Target probability as pixels are removed from x (deletion) or put into the baseline (insertion)."""

    fractions: np.ndarray  # (S + 1,) share of pixels removed / inserted at each step
    deletion: np.ndarray  # (N, S + 1) most relevant pixels removed first
    insertion: np.ndarray  # (N, S + 1) most relevant pixels inserted first
    random_deletion: np.ndarray  # (N, S + 1) a random order (one per example, seeded)
    random_insertion: np.ndarray  # (N, S + 1)
    targets: np.ndarray  # (N,) int64 class whose probability is recorded

    def auc(self, curves: np.ndarray) -> np.ndarray:
        return area_under(curves, self.fractions)

    @property
    def deletion_auc(self) -> float:
        """Mean area under the deletion curve: lower is more faithful."""
        return float(self.auc(self.deletion).mean())

    @property
    def insertion_auc(self) -> float:
        """Mean area under the insertion curve: higher is more faithful."""
        return float(self.auc(self.insertion).mean())

    @property
    def deletion_margin(self) -> float:
        """Random order's deletion area minus the method's: > 0 beats chance."""
        return float((self.auc(self.random_deletion) - self.auc(self.deletion)).mean())

    @property
    def insertion_margin(self) -> float:
        """The method's insertion area minus the random order's: > 0 beats chance."""
        return float((self.auc(self.insertion) - self.auc(self.random_insertion)).mean())


def deletion_insertion(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None,
    attributions: Tensor,
    *,
    baseline: Baseline = None,
    steps: int = 16,
    seed: int = 0,
    max_batch: int = 128,
) -> DeletionResult:
    """Remove (insert) pixels in order of attribution and record the target's softmax probability.

    Pixels are ranked by their attribution summed over channels, highest first (ties by
    position). A removed pixel takes the baseline's value at that pixel; insertion starts
    from the baseline and puts back x's pixels. `baseline` lives in x's space: zeros unless
    given (pass `black(x, normalization)` for black pixels). Step s switches
    round(s / steps * H * W) pixels. The same runs with a random order (seeded, one per
    example). All (4 x N x (steps + 1)) images are scored in batches of `max_batch`.
    """
    _check_images(x)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int such as 16, got {steps!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    n, _, h, w = x.shape
    x = x.detach()
    scores = pixel_map(attributions, x.shape).flatten(1).to(x.device)  # (N, P)
    base = resolve_baseline(baseline, x)
    targets = _targets(model, x, target, max_batch)
    pixels = h * w
    generator = torch.Generator().manual_seed(seed)
    ranked = scores.argsort(dim=1, descending=True, stable=True)  # (N, P) most relevant first
    shuffled = torch.stack([torch.randperm(pixels, generator=generator) for _ in range(n)]).to(x.device)
    orders = torch.stack([ranked, ranked, shuffled, shuffled])  # (4, N, P)
    # position[k, e, p]: at which place of order k pixel p of example e is switched
    position = torch.empty_like(orders).scatter_(2, orders, torch.arange(pixels, device=x.device).expand_as(orders))
    counts = torch.round(torch.linspace(0, pixels, steps + 1, dtype=torch.float64)).long().to(x.device)
    deleting = torch.tensor([True, False, True, False], device=x.device)
    k, e, s = (
        t.flatten()
        for t in torch.meshgrid(
            torch.arange(4, device=x.device),
            torch.arange(n, device=x.device),
            torch.arange(steps + 1, device=x.device),
            indexing="ij",
        )
    )
    probabilities = []
    with input_gradients_only(model), torch.no_grad():
        for start in range(0, k.numel(), max_batch):
            kb, eb, sb = k[start : start + max_batch], e[start : start + max_batch], s[start : start + max_batch]
            switched = (position[kb, eb] < counts[sb][:, None]).view(-1, 1, h, w)  # (B, 1, H, W)
            deleted = deleting[kb].view(-1, 1, 1, 1)
            before, after = torch.where(deleted, x[eb], base[eb]), torch.where(deleted, base[eb], x[eb])
            z = torch.where(switched, after, before)  # (B, C, H, W)
            probabilities.append(model(z).softmax(dim=-1).gather(1, targets[eb][:, None]).squeeze(1))
    curves = torch.cat(probabilities).view(4, n, steps + 1).to(torch.float64).cpu().numpy()
    fractions = (counts.to(torch.float64) / pixels).cpu().numpy()
    return DeletionResult(fractions, curves[0], curves[1], curves[2], curves[3], targets.cpu().numpy())


# --- localisation ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LocalisationResult:
    """Per example: how much of the map falls on the object, and where its peak is."""

    mass_inside: np.ndarray  # (N,) share of positive attribution inside the mask (nan: none positive)
    pointing: np.ndarray  # (N,) bool, the top pixel lies inside the mask
    random_mass_inside: np.ndarray  # (N,) the same for a uniform random map
    random_pointing: np.ndarray  # (N,) bool
    mask_fraction: np.ndarray  # (N,) mask area / image area: a random map's expected score on both

    @property
    def mass(self) -> float:
        return float(np.nanmean(self.mass_inside)) if np.isfinite(self.mass_inside).any() else float("nan")

    @property
    def pointing_rate(self) -> float:
        return float(self.pointing.mean())

    @property
    def random_mass(self) -> float:
        return float(self.random_mass_inside.mean())

    @property
    def random_pointing_rate(self) -> float:
        return float(self.random_pointing.mean())


def _mass_and_pointing(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    flat, inside = maps.flatten(1), masks.flatten(1)  # (N, P)
    positive = flat.clamp_min(0)
    mass = (positive * inside).sum(1) / positive.sum(1)  # 0 / 0 = nan: no positive mass
    hits = inside.gather(1, flat.argmax(dim=1, keepdim=True)).squeeze(1)
    return mass, hits


def localisation(attributions: Tensor, masks: Tensor, *, seed: int = 0) -> LocalisationResult:
    """Score maps (N, C, H, W) or (N, H, W) against object masks (N, H, W), and a random map likewise.

    The map is summed over channels; its positive part is the mass. The pointing game's
    top pixel is the map's largest value (the first, on a tie). The random map is uniform
    noise (seeded); `mask_fraction` is its expected score.
    """
    if not isinstance(masks, Tensor) or masks.dim() != 3:
        raise ValueError(
            f"masks must be a tensor (N, H, W), got shape {tuple(getattr(masks, 'shape', ()))}; "
            "use ImageSet.masks, True on the object"
        )
    if masks.dtype != torch.bool and masks.is_floating_point():
        raise TypeError(f"masks must be bool (True on the object), got {masks.dtype}; threshold them first")
    if not isinstance(attributions, Tensor) or attributions.dim() not in (3, 4):
        raise ValueError(
            f"attributions must be maps (N, C, H, W) or (N, H, W), got shape "
            f"{tuple(getattr(attributions, 'shape', ()))}"
        )
    n, h, w = masks.shape
    maps = pixel_map(attributions.detach(), (n, 1, h, w), against="masks")  # (N, H, W)
    masks = masks.to(device=maps.device, dtype=torch.bool)
    empty = (~masks.flatten(1).any(1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"the mask of example {int(empty[0])} is empty; localisation needs an object "
            "in every image, so leave such images out"
        )
    mass, hits = _mass_and_pointing(maps.to(torch.float64), masks)
    noise = torch.rand((n, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    random_mass, random_hits = _mass_and_pointing(noise.to(maps.device), masks)
    as_numpy = (t.cpu().numpy() for t in (mass, hits, random_mass, random_hits, masks.flatten(1).double().mean(1)))
    return LocalisationResult(*as_numpy)


# --- completeness ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CompletenessResult:
    """How far the maps' sums miss F(x) - F(baseline)."""

    error: np.ndarray  # (N,) |sum(map) - (F(x) - F(baseline))|
    relative_error: np.ndarray  # (N,) error / |F(x) - F(baseline)|

    @property
    def mean_relative(self) -> float:
        return float(np.nanmean(self.relative_error))


def completeness(result: Attribution | Tensor) -> CompletenessResult | None:
    """Collect the completeness error of a result; None where the method has none (gradient, SmoothGrad)."""
    if not isinstance(result, Attribution) or result.completeness_error is None:
        return None
    relative = result.relative_completeness_error
    error = result.completeness_error.detach().double().cpu().numpy()
    return CompletenessResult(
        error, np.full_like(error, np.nan) if relative is None else relative.detach().double().cpu().numpy()
    )
