"""A run directory or a model trained elsewhere -> one self-contained HTML page through the network.

Sections follow the walk-through: the experiment, weights, activations, what each channel
looks for, interior gradients, integrated gradients, and how far to trust the maps. Every figure is drawn
by `mindscope.render` and embedded as a data URI, so the page opens from disk with no
network and no folder beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from mindscope._version import __version__
from mindscope.report.attribution_sections import attribution_sections
from mindscope.report.channel_section import channel_looks_section
from mindscope.report.methods import METHOD_NAMES, format_table, standard_methods
from mindscope.report.model_sections import model_card_section, report_layers, weights_as_loaded_section
from mindscope.report.options import ReportOptions
from mindscope.report.page import Section, render_page
from mindscope.report.run_sections import activations_section, experiment_section, weights_section
from mindscope.report.scan_page import write_scan_report
from mindscope.report.trust import trust_section
from mindscope.run import LoadedRun, atomic_write_bytes
from mindscope.scan.plan import is_scan
from mindscope.subject import Subject, open_subject

__all__ = ["METHOD_NAMES", "ReportOptions", "build_sections", "format_table", "standard_methods", "write_report"]


def build_sections(
    run: LoadedRun | Subject, options: ReportOptions, *, progress: Callable[[str], None] | None = None
) -> list[Section]:
    """The page's sections for a run, or for a Subject (a run or a model trained elsewhere)."""
    say = progress or (lambda _msg: None)
    if isinstance(run, Subject) and run.run is None:
        say("model card")
        sections = [model_card_section(run)]
        say("weights")
        sections.append(weights_as_loaded_section(run))
        options = replace(options, layers=report_layers(run, options.layers))
    else:
        run = run.run if isinstance(run, Subject) else run
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
    source: Path | str | Subject,
    out: Path | str | None = None,
    *,
    options: ReportOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Analyse a run (a directory), a scan folder or a Subject and write its report; return the HTML file's path."""
    options = options or ReportOptions()
    if not isinstance(source, Subject) and is_scan(source):
        return write_scan_report(source, out, images=options.attribution_images, progress=progress)
    subject = source if isinstance(source, Subject) else open_subject(source)
    data = subject.require_data("the report")
    if not 0 <= options.image < len(data.test):
        raise ValueError(f"--image {options.image} is out of range; the test set has {len(data.test)} images")
    subject.model.to(options.device)
    if out is None:
        out = subject.run.path / "report.html" if subject.run is not None else Path("mindscope-report.html")
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    sections = build_sections(subject, options, progress=progress)
    versions = f"mindscope {__version__} · torch {torch.__version__}"
    if subject.run is not None:
        cfg = subject.run.config
        subtitle = (
            f"run {subject.run.path.resolve()} · data {cfg['data']['spec']} · mindscope "
            f"{cfg['versions']['mindscope']} · torch {cfg['versions']['torch']}"
        )
        title = f"Inside AllConvNet on {cfg['data']['name']}"
    else:
        subtitle = f"model {subject.source} · data {data.spec} · {versions}"
        title = f"Inside {type(subject.model).__name__} on {data.name}"
    html = render_page(title, subtitle, sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, html.encode("utf-8"))
    return out
