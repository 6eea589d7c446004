"""A scan folder -> one self-contained HTML page of the data set's views.

The page shows what `mindscope scan` found over the whole data set: how many maps converged
and how many images were set aside as ill-conditioned, each class's mean map on one shared
colour scale, the histogram of completeness errors with the tolerance marked, the
worst-converged and the most confidently wrong images with their maps, and the channels that
never fired. Every caption is written from the numbers its figure or table is drawn from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mindscope._util import count
from mindscope._version import __version__
from mindscope.attribution import ILL_CONDITIONING_FLOOR
from mindscope.render.activations import layer_statistics_figure
from mindscope.render.attribution import attribution_panels
from mindscope.render.scan import SIGNS, ZERO_ERROR, class_maps_figure, completeness_figure
from mindscope.report.page import Section, Table, pct, render_page
from mindscope.run import atomic_write_bytes
from mindscope.scan import Scan, open_scan
from mindscope.scan.merge import WORST

PixelSource = Callable[[list[int]], tuple[Tensor, str]]
LISTED_CHANNELS = 16  # dead channels named per layer before "..."


def error_text(value: float | None) -> str:
    """A relative error as a percentage to three significant figures; "-" where the method has none."""
    return "-" if value is None or value != value else f"{100 * value:.3g}%"


def _data_name(scan: Scan) -> str:
    return scan.plan.source.data or "the run's test split"


def scan_pixels(scan: Scan) -> PixelSource:
    """A function: image indices -> their pixels in [0, 1] and a note; grey where the data cannot be opened.

    Only the data is read, never the model run, so the model is opened on the CPU whatever device
    the scan ran on: a scan recorded on CUDA opens on a machine without it.
    """
    try:
        data = scan.plan.source.open(device="cpu").require_data("the scan's report")
    except (ValueError, OSError) as err:
        reason = str(err).splitlines()[0]

        def grey(indices: list[int]) -> tuple[Tensor, str]:
            note = f" The data set could not be opened ({reason}), so the maps are drawn on grey."
            return torch.full((len(indices), *scan.plan.image_shape), 0.5), note

        return grey
    return lambda indices: (data.test.pixels(indices), "")


def overview_section(scan: Scan) -> Section:
    summary, options = scan.summary, scan.plan.options
    rule = (
        f"integrated gradients refined per image to a relative completeness error of {options.tolerance:g} "
        f"(at most {options.max_steps} steps)"
        if options.tolerance is not None
        else f"integrated gradients on a fixed {options.steps}-point Gauss-Legendre rule (no tolerance)"
    )
    sec = Section(
        "scan",
        "1. The scan",
        f"{count(summary['images'], 'test image')} of {_data_name(scan)}, looked at by "
        f"{scan.plan.source.model} with {', '.join(options.methods)}; the {options.target} class's "
        f"{options.score} is attributed against a {options.baseline} baseline; {rule}. "
        f"The model is right on {pct(summary['accuracy'])} of them.",
    )
    rows = []
    for method, entry in summary["methods"].items():
        converged = entry.get("converged")
        rows.append([
            method,
            entry["images"],
            "-" if converged is None else f"{converged} of {entry.get('well_conditioned', entry['images'])}",
            entry.get("ill_conditioned", "-"),
            error_text(entry.get("completeness_error_median")),
            error_text(entry.get("completeness_error_max")),
            f"{entry['steps_mean']:.1f}",
            entry["steps_max"],
            f"{entry['seconds']:.1f}",
        ])  # fmt: skip
    caption = "Per method: images looked at; how many of the well-conditioned maps converged to the tolerance"
    caption += (
        f" ({options.tolerance:g}, integrated gradients only)" if options.tolerance is not None else " (none was set)"
    )
    caption += (
        "; how many images are ill-conditioned (the baseline already scores about F(x), so there is nothing to "
        "explain: they are not refined to the tolerance by design, and set aside from the converged count and "
        "the errors); the relative completeness error |Σ map − (F(x) − F(x′))| / |F(x) − F(x′)| of the other "
        "images; gradient evaluations per image; and compute time."
    )
    aside = [f"{method} {entry['ill_conditioned']}" for method, entry in summary["methods"].items()
             if "ill_conditioned" in entry]  # fmt: skip
    if aside:
        caption += f" Ill-conditioned images set aside: {', '.join(aside)}."
    headers = ["method", "images", "converged", "ill-conditioned", "median error", "max error", "mean steps",
               "max steps", "seconds"]  # fmt: skip
    sec.tables.append(Table(caption, headers, rows))
    return sec


def classes_section(scan: Scan) -> Section:
    sec = Section(
        "classes",
        "2. Each class's mean map",
        "The mean attribution of the images attributed to each class, summed over colour channels: "
        "what drives that class across the data set, rather than on one image.",
    )
    for method in scan.plan.options.methods:
        maps = scan.class_maps(method)
        counts = maps.counts.tolist()
        fig = class_maps_figure(maps.mean.numpy(), scan.plan.classes, counts, title=f"{method}: mean map per class")
        limit = fig.axes[0].images[0].norm.vmax  # the scale the figure drew with, not a recomputation
        empty = [name for name, n in zip(scan.plan.classes, counts) if n == 0]
        caption = (
            f"{method}: mean map of each class over {count(sum(counts), 'image')}, every panel on one shared "
            f"colour scale, ±{limit:.3g} ({SIGNS})."
        )
        if empty:
            caption += f" No image was attributed to {', '.join(empty)}: those panels are blank."
        sec.add(fig, caption)
    return sec


def completeness_caption(scan: Scan, method: str, kept: np.ndarray, ill: int) -> str:
    """The caption of `method`'s histogram of the relative completeness errors `kept` (ill-conditioned left out)."""
    options = scan.plan.options
    tolerance = options.tolerance if method == "integrated" else None
    finite = kept[np.isfinite(kept)]
    caption = f"{method}: relative completeness errors of {count(kept.size, 'image')} on a log axis"
    if tolerance is not None:
        caption += f"; {int((finite < tolerance).sum())} lie below the tolerance {tolerance:g} (dashed red line)"
    else:
        caption += f"; no tolerance was set (a fixed {options.steps}-point rule)"
    if finite.size:
        caption += f"; median {error_text(float(np.median(finite)))}, largest {error_text(float(finite.max()))}"
    exact = int((finite < ZERO_ERROR).sum())
    if exact:
        caption += f"; {exact} exact to rounding (not drawn)"
    return caption + f". {count(ill, 'ill-conditioned image')} set aside."


def completeness_section(scan: Scan, frame) -> Section:
    sec = Section(
        "completeness",
        "3. Completeness errors",
        "How far each map's sum is from the change of the score it explains, F(x) − F(x′), relative to it. "
        "Images whose baseline already scores about F(x) are set aside: their relative error divides by "
        "nearly nothing.",
    )
    options = scan.plan.options
    for method in options.methods:
        rows = frame[frame["method"] == method]
        errors = rows["relative_completeness_error"].to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(errors).all():
            continue  # a method without a baseline has no completeness to draw
        ill = rows["ill_conditioned"].fillna(False).to_numpy(dtype=bool)
        kept = errors[~ill]
        tolerance = options.tolerance if method == "integrated" else None
        fig = completeness_figure(kept, tolerance, title=method)
        sec.add(fig, completeness_caption(scan, method, kept, int(ill.sum())))
    if not sec.figures:
        sec.lead = "No scanned method has a completeness error (only integrated gradients do)."
    return sec


def converged_text(converged: bool, ill_conditioned: bool) -> str:
    """Whether an image's map met the tolerance; an ill-conditioned one is not refined, by design."""
    if converged:
        return "yes"
    return "not refined (ill-conditioned)" if ill_conditioned else "no"


def listing_rows(items: list[dict], classes: tuple[str, ...], converged: bool) -> list[list[object]]:
    """Table rows of summary images; `converged` False: the method promises no tolerance, so say "-"."""
    return [
        [i["index"], classes[i["label"]], classes[i["prediction"]], f"{i['probability']:.4f}",
         error_text(i["relative_completeness_error"]), error_text(i["map_error"]), i["steps"],
         converged_text(i["converged"], i["ill_conditioned"]) if converged else "-",
         "yes" if i["ill_conditioned"] else "no"]
        for i in items
    ]  # fmt: skip


LISTING = ["image", "label", "prediction", "probability", "completeness error", "map error", "steps",
           "converged", "ill-conditioned"]  # fmt: skip


def set_aside_text(ill: int, images: int) -> str:
    """One line: how many ill-conditioned images the worst-converged ranking leaves out, and why."""
    if not ill:
        return f"None of the {count(images, 'image')} is ill-conditioned: every one is ranked."
    return (
        f"{ill} of the {count(images, 'image')} {'is' if ill == 1 else 'are'} ill-conditioned and left out of "
        f"this ranking: the baseline already scores about F(x) (|F(x) − F(x′)| ≤ {ILL_CONDITIONING_FLOOR:.0%} of "
        "F), so there is nothing to explain and the relative error divides by nearly nothing."
    )


def worst_section(scan: Scan, images: int, pixels: PixelSource) -> Section:
    sec = Section(
        "worst",
        "4. The worst-converged images",
        "The well-conditioned images whose maps are least accurate: ranked by the larger of the relative "
        "completeness error and the estimated error of the map itself. Each row of a figure has its own colour "
        "scale, given in its titles.",
    )
    ranked = False
    for method in scan.plan.options.methods:
        columns = scan.columns(method)
        if np.isnan(columns["relative_completeness_error"]).all():
            continue  # a method without a baseline has no completeness to rank by
        ranked = True
        aside = set_aside_text(int(columns["ill_conditioned"].sum()), len(columns["index"]))
        worst = scan.ranking("worst", method)[:WORST]
        if not worst:
            sec.lead += f" {method}: no image to rank. {aside}"
            continue
        first = worst[0]
        sec.tables.append(
            Table(
                f"{method}: the {len(worst)} worst images; the worst is image {first['index']}, with a relative "
                f"completeness error of {error_text(first['relative_completeness_error'])} and a map error of "
                f"{error_text(first['map_error'])} after {count(first['steps'], 'step')}. {aside}",
                LISTING,
                listing_rows(worst, scan.plan.classes, "converged" in scan.summary["methods"][method]),
            )
        )
        shown = [i["index"] for i in worst[:images]]
        x, note = pixels(shown)
        fig = attribution_panels(x, scan.attribution(shown, method), scan.plan.classes, title=f"{method}: worst")
        sec.add(fig, f"{method}: the maps of images {shown}, worst first.{note}")
    if not ranked:
        sec.lead = "No scanned method has a completeness error to rank images by (only integrated gradients do)."
    return sec


def wrong_section(scan: Scan, frame, images: int, pixels: PixelSource) -> Section:
    wrong = scan.summary["most_confident_wrong"]
    sec = Section("wrong", "5. The most confidently wrong images")
    if not wrong:
        sec.lead = f"The model classifies all {scan.summary['images']} scanned images correctly."
        return sec
    method = "integrated" if "integrated" in scan.plan.options.methods else scan.plan.options.methods[0]
    first, classes = wrong[0], scan.plan.classes
    sec.lead = (
        f"Wrong predictions, most confident first, with the {method} map of the class attributed. The most "
        f"confident is image {first['index']}: a {classes[first['label']]} taken for a "
        f"{classes[first['prediction']]} with probability {first['probability']:.4f}."
    )
    numbers = _numbers(frame, method, [i["index"] for i in wrong])
    errors = [{**i, **n} for i, n in zip(wrong, numbers)]
    sec.tables.append(
        Table(
            f"The {len(wrong)} most confidently wrong of {scan.summary['images']} images; completeness, steps and "
            f"convergence are those of {method}.",
            LISTING,
            listing_rows(errors, classes, "converged" in scan.summary["methods"][method]),
        )
    )
    shown = [i["index"] for i in wrong[:images]]
    x, note = pixels(shown)
    fig = attribution_panels(x, scan.attribution(shown, method), classes, title=f"{method}: confidently wrong")
    sec.add(fig, f"{method}: the maps of images {shown}, most confident first.{note}")
    return sec


def _numbers(frame, method: str, indices: list[int]) -> list[dict]:
    """The images' numbers for `method` from the table (the summary lists the first method's)."""
    rows = frame[frame["method"] == method].set_index("index").loc[indices]
    keys = ("relative_completeness_error", "map_error", "steps", "converged", "ill_conditioned")
    return [{k: None if row[k] is None or row[k] != row[k] else row[k] for k in keys} for _, row in rows.iterrows()]


def channels_section(scan: Scan) -> Section:
    stats = scan.layer_statistics()
    sec = Section(
        "channels",
        "6. Dead channels",
        "A channel is dead when its activation was never above zero at any position of any scanned image.",
    )
    if not stats:
        sec.lead = "No layer's activations were recorded in this scan (--layers none)."
        return sec
    rows = []
    for name, s in stats.items():
        dead = s.dead_channels.tolist()
        listed = ", ".join(map(str, dead[:LISTED_CHANNELS])) + (" ..." if len(dead) > LISTED_CHANNELS else "")
        rows.append([name, len(s.mean), len(dead), listed or "-", pct(float(s.active.mean())), s.examples])
    total = sum(r[2] for r in rows)
    sec.tables.append(
        Table(
            f"{count(total, 'dead channel')} in {count(len(rows), 'layer')}, over {count(rows[0][5], 'image')}; "
            "'active' is the mean fraction of values above zero.",
            ["layer", "channels", "dead", "dead channels", "active", "images"],
            rows,
        )
    )
    sec.add(layer_statistics_figure(stats), "Fractions of active, saturated and dead channels per layer.")
    return sec


def scan_sections(scan: Scan, *, images: int = 6, progress: Callable[[str], None] | None = None) -> list[Section]:
    """The scan page's sections; `images` worst and wrong images are drawn with their maps."""
    say = progress or (lambda _msg: None)
    frame = scan.table()
    pixels = scan_pixels(scan)
    sections = [overview_section(scan)]
    say("per-class mean maps")
    sections.append(classes_section(scan))
    say("completeness errors")
    sections.append(completeness_section(scan, frame))
    say("worst-converged images")
    sections.append(worst_section(scan, images, pixels))
    say("most confidently wrong images")
    sections.append(wrong_section(scan, frame, images, pixels))
    say("dead channels")
    sections.append(channels_section(scan))
    return sections


def write_scan_report(
    path: Path | str,
    out: Path | str | None = None,
    *,
    images: int = 6,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the page of a finished scan (default SCAN_DIR/report.html); return its path."""
    scan = open_scan(path)
    out = Path(out) if out is not None else scan.path / "report.html"
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    sections = scan_sections(scan, images=images, progress=progress)
    plan = scan.plan
    title = f"A scan of {count(plan.images, 'image')}"
    subtitle = (
        f"scan {scan.path.resolve()} · model {plan.source.model} · data {_data_name(scan)} · "
        f"weights sha256 {plan.weights[:12]} · mindscope {__version__} · torch {torch.__version__}"
    )
    html = render_page(title, subtitle, sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, html.encode("utf-8"))
    return out
