"""What the Scan view computes: a finished scan's figures and numbers, drawn as the scan's report draws them.

Each function takes a `Scan` (`mindscope.scan.open_scan`) and plain parameters, draws with
the report's renderers (`render.scan`, `render.attribution.attribution_panels`) and returns a
`Picture` with the numbers shown beside it. Nothing here recomputes an attribution: the maps
and numbers are the scan's own, read from its shards and its table. They run in the
dashboard's worker threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mindscope._util import count
from mindscope.render.attribution import attribution_panels
from mindscope.render.scan import SIGNS, class_maps_figure, completeness_figure
from mindscope.report.scan_page import (
    LISTING,
    PixelSource,
    completeness_caption,
    converged_text,
    error_text,
    listing_rows,
    set_aside_text,
)
from mindscope.scan import Scan
from mindscope.serve.pictures import Picture, Rendered, image_src

LIST_ROWS = 6  # images per page of the worst and wrong lists, each drawn with its map
RANKINGS = {"worst": "worst-converged", "wrong": "most confidently wrong"}


@dataclass(frozen=True)
class ClassesView:
    picture: Picture
    caption: str
    numbers: dict[str, str]  # one class chosen: its figures; every class: empty


def classes_view(scan: Scan, method: str, chosen: int | None) -> ClassesView:
    """Every class's mean map on one colour scale, or the `chosen` class's alone on its own scale."""
    maps, classes = scan.class_maps(method), scan.plan.classes
    counts = maps.counts.tolist()
    ks = range(len(classes)) if chosen is None else [chosen]
    mean = maps.mean[list(ks)].numpy()
    title = f"{method}: mean map per class" if chosen is None else f"{method}: mean map of {classes[chosen]}"
    fig = class_maps_figure(mean, [classes[k] for k in ks], [counts[k] for k in ks], title=title)
    if chosen is not None:
        fig.set_size_inches(5.0, 4.6)  # one class alone: drawn large enough to read its pixels
    rendered = Rendered(fig)
    spots = []
    for ax, k in zip(fig.axes, ks):  # the panels come first; the colour bar's axes last
        drawn = np.asarray(ax.images[0].get_array(), dtype=np.float64)  # what the panel shows
        label = f"{classes[k]}: no images"
        if counts[k]:
            label = f"{classes[k]}: {count(counts[k], 'image')}; summed map from {drawn.min():.4g} to {drawn.max():.4g}"
        spots.append(rendered.panel_spot(ax, label))
    limit = fig.axes[0].images[0].norm.vmax
    n = sum(counts[k] for k in ks)
    if chosen is None:
        caption = (
            f"{method}: the mean map of each class over {count(n, 'image')}, summed over colour channels, every "
            f"panel on one shared colour scale, ±{limit:.3g} ({SIGNS})."
        )
        empty = [classes[k] for k in ks if counts[k] == 0]
        if empty:
            caption += f" No image was attributed to {', '.join(empty)}: those panels are blank."
        return ClassesView(rendered.picture(spots), caption, {})
    if n == 0:  # nothing to average: no mean map, and no scale to give one
        return ClassesView(
            rendered.picture(spots),
            f"{method}: no image was attributed to {classes[chosen]}, so it has no mean map.",
            {"class": f"{chosen}: {classes[chosen]}", "images": "0"},
        )
    summed = mean[0].sum(axis=0)  # (H, W)
    abs_mean = maps.mean_abs[chosen].numpy()
    caption = (
        f"{method}: the mean map of the {count(n, 'image')} attributed to {classes[chosen]}, summed over colour "
        f"channels, on its own colour scale, ±{limit:.3g} ({SIGNS})."
    )
    numbers = {
        "class": f"{chosen}: {classes[chosen]}",
        "images": str(n),
        "sum of the mean map": f"{float(mean[0].sum()):.6g}",
        "smallest pixel": f"{float(summed.min()):.6g}",
        "largest pixel": f"{float(summed.max()):.6g}",
        "sum of the mean |map|": f"{float(abs_mean.sum()):.6g}",
    }
    return ClassesView(rendered.picture(spots), caption, numbers)


def class_values(scan: Scan, method: str, chosen: int) -> dict:
    """The chosen class's mean map and mean |map| as nested lists (C, H, W), for the page's JSON link."""
    maps = scan.class_maps(method)
    return {
        "method": method,
        "class": chosen,
        "name": scan.plan.classes[chosen],
        "images": int(maps.counts[chosen]),
        # a class no image was attributed to has no mean: null, not zeros
        "mean": maps.mean[chosen].tolist() if maps.counts[chosen] else None,
        "mean_abs": maps.mean_abs[chosen].tolist() if maps.counts[chosen] else None,
    }


@dataclass(frozen=True)
class CompletenessView:
    picture: Picture | None  # None: the method has no completeness error
    caption: str


def completeness_view(scan: Scan, method: str) -> CompletenessView:
    """The histogram of relative completeness errors (ill-conditioned images left out), a hover box per bar."""
    columns = scan.columns(method)
    errors, ill = columns["relative_completeness_error"], columns["ill_conditioned"]
    if np.isnan(errors).all():
        return CompletenessView(None, f"{method} has no completeness error (only integrated gradients do).")
    kept = errors[~ill]
    tolerance = scan.plan.options.tolerance if method == "integrated" else None
    rendered = Rendered(completeness_figure(kept, tolerance, title=method))
    spots = rendered.bar_spots(rendered.fig.axes[0], x_name="relative completeness error")
    return CompletenessView(rendered.picture(spots), completeness_caption(scan, method, kept, int(ill.sum())))


@dataclass(frozen=True)
class RankingView:
    which: str
    total: int  # images in the whole ranking
    page: int
    pages: int
    headers: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]  # LISTING's columns; the first is the image index
    thumbs: tuple[str, ...]  # data URIs, one per row
    picture: Picture | None
    caption: str


def ranking_view(scan: Scan, pixels: PixelSource, ranking: list[dict], which: str, method: str,
                 page: int) -> RankingView:  # fmt: skip
    """One page of LIST_ROWS images of a ranking (`Scan.ranking`), with their maps drawn one row each."""
    pages = max(1, math.ceil(len(ranking) / LIST_ROWS))
    if page >= pages:
        raise ValueError(f"page {page} is out of range; the {RANKINGS[which]} list has {pages} page(s), 0..{pages - 1}")
    shown = ranking[page * LIST_ROWS : (page + 1) * LIST_ROWS]
    aside = ""  # the worst list: how many ill-conditioned images it leaves out
    if which == "worst":
        columns = scan.columns(method)
        if not np.isnan(columns["relative_completeness_error"]).all():
            aside = " " + set_aside_text(int(columns["ill_conditioned"].sum()), len(columns["index"]))
    if not shown:
        if which == "wrong":
            note = f"The model classifies all {scan.plan.images} scanned images correctly."
        elif aside:
            note = f"{method}: no image to rank.{aside}"
        else:
            note = f"{method} has no completeness error to rank images by (only integrated gradients do)."
        return RankingView(which, 0, 0, 1, tuple(LISTING), (), (), None, note)
    indices = [item["index"] for item in shown]
    x, note = pixels(indices)
    fig = attribution_panels(x, scan.attribution(indices, method), scan.plan.classes,
                             title=f"{method}: {RANKINGS[which]}, page {page + 1}")  # fmt: skip
    converged = scan.plan.options.tolerance is not None and method == "integrated"
    rows = tuple(tuple(r) for r in listing_rows(shown, scan.plan.classes, converged))
    order = (
        "least accurate map first, by the larger of the relative completeness error and the map's estimated error"
        if which == "worst"
        else "wrong predictions only, most confident first"
    )
    caption = (
        f"{method}: images {page * LIST_ROWS + 1}-{page * LIST_ROWS + len(shown)} of the {len(ranking)} "
        f"{RANKINGS[which]} ({order}); each row of the figure has its own colour scale, given in its titles."
        f"{aside}{note}"
    )
    thumbs = tuple(image_src(x[i], scale=2) for i in range(len(shown)))
    return RankingView(which, len(ranking), page, pages, tuple(LISTING), rows, thumbs, Rendered(fig).picture(),
                       caption)  # fmt: skip


@dataclass(frozen=True)
class ImageView:
    picture: Picture
    numbers: dict[str, str]


def image_view(scan: Scan, pixels: PixelSource, method: str, index: int) -> ImageView:
    """One scanned image with its map and every number the table holds for it."""
    columns = scan.columns(method)
    row = int(np.searchsorted(columns["index"], index))
    if row >= len(columns["index"]) or columns["index"][row] != index:
        raise ValueError(f"image {index} is not in this scan; it holds images 0..{scan.plan.images - 1}")
    x, note = pixels([index])
    fig = attribution_panels(x, scan.attribution([index], method), scan.plan.classes,
                             title=f"{method}: image {index}")  # fmt: skip
    classes = scan.plan.classes

    def value(name: str, digits: int = 6) -> str:
        v = float(columns[name][row])
        return "-" if math.isnan(v) else f"{v:.{digits}g}"

    converged = scan.plan.options.tolerance is not None and method == "integrated"
    numbers = {
        "image": str(index),
        "label": classes[int(columns["label"][row])],
        "prediction": classes[int(columns["prediction"][row])],
        "probability": f"{float(columns['probability'][row]):.4f}",
        "class attributed": classes[int(columns["target"][row])],
        "F(x) − F(x′)": value("delta"),
        "completeness error": value("completeness_error"),
        "relative completeness error": error_text(float(columns["relative_completeness_error"][row])),
        "map error": error_text(float(columns["map_error"][row])),
        "steps": str(int(columns["steps"][row])),
        "converged": converged_text(bool(columns["converged"][row]), bool(columns["ill_conditioned"][row]))
        if converged
        else "-",
        "ill-conditioned": "yes" if columns["ill_conditioned"][row] else "no",
    }
    if note:
        numbers["note"] = note.strip()
    return ImageView(Rendered(fig).picture(), numbers)
