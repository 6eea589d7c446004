"""The page: sections of captioned figures and tables, rendered with Jinja2 into one file.

Every figure is embedded as a data URI, so the page opens from disk with no network and
no folder beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jinja2
from matplotlib.figure import Figure as MplFigure

from mindscope.render.html import data_uri, figure_png


@dataclass
class Figure:
    src: str
    caption: str
    alt: str
    pixel: bool = False


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Section:
    id: str
    title: str
    lead: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)

    def add(self, fig: MplFigure | bytes, caption: str, *, alt: str | None = None, gif: bool = False) -> None:
        if isinstance(fig, MplFigure):
            src = data_uri(figure_png(fig), "image/png")
        else:
            src = data_uri(fig, "image/gif" if gif else "image/png")
        self.figures.append(Figure(src, caption, alt or caption, pixel=gif))


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mindscope", "templates"), autoescape=jinja2.select_autoescape(["html"])
    )
    return env.get_template("report.html").render(title=title, subtitle=subtitle, sections=sections)
