"""The built-in dataset "shapes10": ten shape classes on cluttered, textured backgrounds.

32x32 RGB images, made from a seed with no files. The object's colour, size, position
and a small rotation are random and the background is a coloured texture with clutter,
so neither one colour nor one pixel gives the class away: a classifier has to see shape.
Each image keeps its object mask (True on the object) for localisation checks.
"""

from __future__ import annotations

import numpy as np

CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "plus",
    "cross",
    "ring",
    "crescent",
    "star",
    "frame",
)
SIZE = 32
_SUPER = 2  # render at 2x and average 2x2 blocks: anti-aliased edges
_CHUNK = 256  # images per RNG stream, so the first N images do not depend on the total
_MAX_ROTATION = 0.21  # radians (12 degrees): plus and cross stay 45 degrees apart


def _inside(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Point-in-shape test in object coordinates (radius 1, v pointing down)."""
    r = np.hypot(u, v)
    name = CLASSES[label]
    if name == "circle":
        return r <= 1.0
    if name == "square":
        return np.maximum(abs(u), abs(v)) <= 0.8
    if name == "triangle":
        return (v <= 0.75) & (abs(u) <= (v + 0.95) * 0.62)
    if name == "diamond":
        return abs(u) + abs(v) <= 1.0
    if name == "plus":
        return ((abs(u) <= 0.3) & (abs(v) <= 0.95)) | ((abs(v) <= 0.3) & (abs(u) <= 0.95))
    if name == "cross":
        a, b = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
        return ((abs(a) <= 0.27) & (abs(b) <= 1.0)) | ((abs(b) <= 0.27) & (abs(a) <= 1.0))
    if name == "ring":
        return (r <= 1.0) & (r >= 0.58)
    if name == "crescent":
        return (r <= 1.0) & (np.hypot(u - 0.45, v + 0.25) >= 0.8)
    if name == "star":
        theta = np.arctan2(v, u) + np.pi / 2
        return r <= 0.42 + 0.58 * ((np.cos(5 * theta) + 1) / 2) ** 2
    if name == "frame":
        m = np.maximum(abs(u), abs(v))
        return (m <= 0.85) & (m >= 0.5)
    raise ValueError(f"no shape class {label}")


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A coloured gradient plus stripes, noise and small clutter; (S, S, 3) in [0, 1]."""
    s = yy.shape[0]
    c0, c1 = rng.uniform(0.15, 0.85, 3), rng.uniform(0.15, 0.85, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = ((np.cos(angle) * xx + np.sin(angle) * yy) / s + 1) / 2  # (S, S) in [0, 1]
    img = c0 + (c1 - c0) * t[..., None]
    freq, phase, ori = rng.uniform(0.15, 0.6), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    stripes = np.sin(freq * (np.cos(ori) * xx + np.sin(ori) * yy) + phase)
    img = img + rng.uniform(0.02, 0.08) * stripes[..., None] * rng.choice([-1, 1], 3)
    for _ in range(rng.integers(1, 4)):  # clutter: dots and strokes
        cy, cx = rng.uniform(0, s, 2)
        colour = rng.uniform(0, 1, 3)
        if rng.random() < 0.5:
            blob = np.hypot(yy - cy, xx - cx) <= rng.uniform(1.5, 3.5) * _SUPER
        else:
            a = rng.uniform(0, np.pi)
            along = np.cos(a) * (xx - cx) + np.sin(a) * (yy - cy)
            across = -np.sin(a) * (xx - cx) + np.cos(a) * (yy - cy)
            blob = (abs(along) <= rng.uniform(3, 7) * _SUPER) & (abs(across) <= 0.6 * _SUPER)
        img[blob] = colour
    return img


def _render(rng: np.random.Generator, label: int, yy: np.ndarray, xx: np.ndarray):
    img = _background(rng, yy, xx)
    radius = rng.uniform(8.0, 13.0) * _SUPER
    s = yy.shape[0]
    cy, cx = rng.uniform(radius, s - radius, 2)
    rot = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)
    dx, dy = (xx - cx) / radius, (yy - cy) / radius
    u = np.cos(rot) * dx + np.sin(rot) * dy
    v = -np.sin(rot) * dx + np.cos(rot) * dy
    inside = _inside(label, u, v)
    # A colour that stands out from the local background by at least 0.45 in luminance.
    backdrop = img[inside].mean(axis=0) if inside.any() else img.mean(axis=(0, 1))
    colour = rng.uniform(0, 1, 3)
    lum = lambda c: float(c @ np.array([0.299, 0.587, 0.114]))  # noqa: E731
    shift = 0.45 - abs(lum(colour) - lum(backdrop))
    if shift > 0:
        colour = np.clip(colour + np.sign(lum(colour) - lum(backdrop) or 1) * shift, 0, 1)
    shade = 1 + 0.25 * (u * rng.uniform(-1, 1) + v * rng.uniform(-1, 1))  # a little 3-D lighting
    img[inside] = np.clip(colour * shade[inside][:, None], 0, 1)
    img = img + rng.normal(0, 0.03, img.shape)  # sensor noise
    return np.clip(img, 0, 1), inside


def generate(n: int, *, seed: int = 0, split: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make n images; returns uint8 images (n, 3, 32, 32), int64 labels (n,), bool masks (n, 32, 32).

    Image i depends only on (seed, split, i // 256), so a smaller n gives a prefix.
    """
    if n < 0:
        raise ValueError(f"number of images must be >= 0, got {n}")
    s = SIZE * _SUPER
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    images = np.empty((n, 3, SIZE, SIZE), np.uint8)
    labels = np.empty(n, np.int64)
    masks = np.empty((n, SIZE, SIZE), bool)
    for start in range(0, n, _CHUNK):
        rng = np.random.default_rng([seed, split, start // _CHUNK])
        count = min(_CHUNK, n - start)
        chunk_labels = rng.permutation(np.arange(_CHUNK) % len(CLASSES))[:count]
        for j, label in enumerate(chunk_labels):
            img, inside = _render(rng, int(label), yy, xx)
            small = img.reshape(SIZE, _SUPER, SIZE, _SUPER, 3).mean(axis=(1, 3))  # (32, 32, 3)
            images[start + j] = np.round(small * 255).astype(np.uint8).transpose(2, 0, 1)
            masks[start + j] = inside.reshape(SIZE, _SUPER, SIZE, _SUPER).mean(axis=(1, 3)) >= 0.5
            labels[start + j] = label
    return images, labels, masks
