"""A run directory -> one self-contained HTML page that walks through the network.

Sections follow the walk-through: the experiment, weights, activations, what each channel
looks for, interior gradients, integrated gradients, and how far to trust the maps. Every figure is drawn
by `mindscope.render` and embedded as a data URI, so the page opens from disk with no
network and no folder beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mindscope.report.attribution_sections import attribution_sections
from mindscope.report.channel_section import channel_looks_section
from mindscope.report.methods import METHOD_NAMES, format_table, standard_methods
from mindscope.report.options import ReportOptions
from mindscope.report.page import Section, render_page
from mindscope.report.run_sections import activations_section, experiment_section, weights_section
from mindscope.report.trust import trust_section
from mindscope.run import LoadedRun, atomic_write_bytes, load_run

__all__ = ["METHOD_NAMES", "ReportOptions", "build_sections", "format_table", "standard_methods", "write_report"]


def build_sections(
    run: LoadedRun, options: ReportOptions, *, progress: Callable[[str], None] | None = None
) -> list[Section]:
    say = progress or (lambda _msg: None)
    say("training curves")
    sections = [experiment_section(run)]
    say("weights")
    sections.append(weights_section(run))
    say("activations")
    sections.append(activations_section(run, options))
    if options.visualisation_channels:
        say("what each channel looks for")
        sections.append(channel_looks_section(run, options))
    say("interior and integrated gradients")
    sections.extend(attribution_sections(run, options))
    if options.evaluation_images:
        say("trust checks")
        sections.append(trust_section(run, options))
    return sections


def write_report(
    run_dir: Path | str,
    out: Path | str | None = None,
    *,
    options: ReportOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Analyse a run and write its report; return the path of the (self-contained) HTML file."""
    options = options or ReportOptions()
    run = load_run(run_dir)
    if not 0 <= options.image < len(run.data.test):
        raise ValueError(f"--image {options.image} is out of range; the test set has {len(run.data.test)} images")
    run.model.to(options.device)
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    sections = build_sections(run, options, progress=progress)
    cfg = run.config
    subtitle = (
        f"run {Path(run_dir).resolve()} · data {cfg['data']['spec']} · mindscope "
        f"{cfg['versions']['mindscope']} · torch {cfg['versions']['torch']}"
    )
    html = render_page(f"Inside AllConvNet on {cfg['data']['name']}", subtitle, sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, html.encode("utf-8"))
    return out
