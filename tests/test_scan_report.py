"""`mindscope report SCAN_DIR`: the page's numbers equal the scan's table, read independently with pandas."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mindscope.activations import activation_statistics
from mindscope.cli import main
from mindscope.report import write_report
from mindscope.run import load_run
from mindscope.scan import open_scan

pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

IMAGES = 32  # scanned; two shards of 16
TOLERANCE = 0.01


class Page(HTMLParser):
    """A report page as data: per section id, its tables' rows (header first) and captions, figure captions, PNGs."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self._section: dict | None = None
        self._cell: list[str] | None = None
        self._text: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = self.sections.setdefault(
                attrs["id"], {"tables": [], "captions": [], "pngs": [], "tablecaps": []}
            )
        elif self._section is None:
            return
        elif tag == "table":
            self._section["tables"].append([])
        elif tag == "tr":
            self._section["tables"][-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img" and attrs["src"].startswith("data:image/png;base64,"):
            self._section["pngs"].append(base64.b64decode(attrs["src"].split(",", 1)[1]))
        elif tag == "figcaption" or (tag == "p" and attrs.get("class") == "tablecap"):
            self._text = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._section["tables"][-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "figcaption" and self._text is not None:
            self._section["captions"].append(self._text)
            self._text = None
        elif tag == "p" and self._text is not None and self._section is not None:
            self._section["tablecaps"].append(self._text)
            self._text = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._text is not None:
            self._text += data


def percent(cell: str) -> float:
    """ "0.413%" -> 0.00413."""
    assert cell.endswith("%"), cell
    return float(cell[:-1]) / 100


@pytest.fixture(scope="module")
def scanned(tiny_run, tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("scans") / "scan"
    args = ["scan", str(tiny_run), "--out", str(out), "--methods", "gradient,integrated", "--limit", str(IMAGES),
            "--shard-size", "16", "--tolerance", str(TOLERANCE), "--layers", "L3,L9"]  # fmt: skip
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def page(scanned, one_thread) -> dict[str, dict]:
    assert main(["report", str(scanned), "--images", "2"]) == 0
    return Page((scanned / "report.html").read_text()).sections


@pytest.mark.slow
def test_the_page_counts_what_the_table_holds(scanned, page):
    frame = open_scan(scanned).table()
    integrated = frame[frame["method"] == "integrated"].set_index("index").sort_index()
    ill = integrated["ill_conditioned"].fillna(False).astype(bool)
    header, *rows = page["scan"]["tables"][0]
    row = dict(zip(header, next(r for r in rows if r[0] == "integrated")))
    assert row["converged"] == f"{int((integrated['converged'] & ~ill).sum())} of {int((~ill).sum())}"
    kept_errors = integrated["relative_completeness_error"][~ill].to_numpy(dtype=float)
    assert row["median error"] == f"{100 * np.median(kept_errors):.3g}%"
    assert row["max error"] == f"{100 * kept_errors.max():.3g}%"
    assert f"Ill-conditioned images set aside: integrated {int(ill.sum())}." in page["scan"]["tablecaps"][0]
    assert row["ill-conditioned"] == str(int(ill.sum()))
    gradient = dict(zip(header, next(r for r in rows if r[0] == "gradient")))
    assert gradient["converged"] == gradient["median error"] == "-"  # a gradient has no baseline to complete to

    # the histogram: one figure (gradients have no completeness error), the ill-conditioned set aside
    errors = integrated["relative_completeness_error"].to_numpy(dtype=float)
    kept = errors[~ill.to_numpy()]
    (caption,) = page["completeness"]["captions"]
    assert f"relative completeness errors of {kept.size} images" in caption
    assert f"{int((kept < TOLERANCE).sum())} lie below the tolerance {TOLERANCE:g}" in caption
    assert f"{int(ill.sum())} ill-conditioned image" in caption
    assert len(page["completeness"]["pngs"]) == 1


@pytest.mark.slow
def test_the_worst_and_the_most_confidently_wrong_image_are_the_tables(scanned, page):
    frame = open_scan(scanned).table()
    integrated = frame[frame["method"] == "integrated"].sort_values("index")
    ill = integrated["ill_conditioned"].fillna(False).astype(bool)
    assert 0 < ill.sum() < IMAGES  # else leaving them out of the ranking could not be seen
    well = integrated[~ill]  # an ill-conditioned image has nothing to explain: not ranked
    badness = np.fmax(well["relative_completeness_error"], well["map_error"]).fillna(-np.inf)
    ranked = well.assign(badness=badness).sort_values(["badness", "index"], ascending=[False, True])
    worst = ranked.iloc[0]
    header, *rows = page["worst"]["tables"][0]
    listed = [dict(zip(header, r)) for r in rows]
    assert [int(r["image"]) for r in listed] == ranked["index"].tolist()[:20]
    assert {r["ill-conditioned"] for r in listed} == {"no"}
    aside = f"{int(ill.sum())} of the {IMAGES} images are ill-conditioned and left out of this ranking"
    assert aside in page["worst"]["tablecaps"][0]
    assert percent(listed[0]["completeness error"]) == pytest.approx(worst["relative_completeness_error"], rel=5e-3)
    assert percent(listed[0]["map error"]) == pytest.approx(worst["map_error"], rel=5e-3)
    assert int(listed[0]["steps"]) == worst["steps"]
    assert f"the worst is image {int(worst['index'])}," in page["worst"]["tablecaps"][0]

    first = frame[frame["method"] == "gradient"]  # the summary's wrong list is read from the first method
    wrong = first[first["prediction"] != first["label"]].sort_values(["probability", "index"], ascending=[False, True])
    header, *rows = page["wrong"]["tables"][0]
    top = dict(zip(header, rows[0]))
    assert int(top["image"]) == wrong["index"].iloc[0]
    assert float(top["probability"]) == pytest.approx(wrong["probability"].iloc[0], abs=5e-5)
    assert [int(r[0]) for r in rows] == wrong["index"].tolist()[:20]
    # the integrated numbers of that image, not the gradient's that the summary carries
    steps = integrated.set_index("index").loc[int(top["image"]), "steps"]
    assert int(top["steps"]) == steps
    for section, order in (("worst", ranked["index"]), ("wrong", wrong["index"])):
        (png,) = page[section]["pngs"]
        assert Image.open(io.BytesIO(png)).format == "PNG"
        (caption,) = page[section]["captions"]
        assert f"the maps of images {order.tolist()[:2]}" in caption  # --images 2: the first two listed


@pytest.mark.slow
def test_class_maps_share_the_scale_of_a_naive_class_mean(scanned, page):
    found = open_scan(scanned)
    frame = found.table()
    captions = page["classes"]["captions"]
    assert len(captions) == len(page["classes"]["pngs"]) == 2  # one figure per method
    for method, caption in zip(("gradient", "integrated"), captions):
        targets = frame[frame["method"] == method].sort_values("index")["target"].to_numpy()
        maps = found.maps(np.arange(IMAGES), method).double().numpy().sum(axis=1)  # (N, H, W)
        limit = max(np.abs(maps[targets == k].mean(axis=0)).max() for k in np.unique(targets))
        scale = float(re.search(r"one shared colour scale, ±([0-9.e+-]+)", caption).group(1))
        assert scale == pytest.approx(limit, rel=5e-3)  # printed to three figures
        assert f"±{scale:.3g} (blue raises the class's score, red lowers it)" in caption  # the panels' convention
        empty = [found.plan.classes[k] for k in range(10) if k not in targets]
        assert ("No image was attributed to " + ", ".join(empty) in caption) == bool(empty)


@pytest.mark.slow
def test_dead_channels_equal_one_pass_over_the_images(tiny_run, scanned, page):
    run = load_run(tiny_run)
    x = run.data.inputs(run.data.test)[:IMAGES]
    plan = open_scan(scanned).plan
    whole = activation_statistics(run.model, x, plan.layers, batch_size=IMAGES)
    header, *rows = page["channels"]["tables"][0]
    table = {r[0]: dict(zip(header, r)) for r in rows}
    assert list(table) == list(plan.layers)
    for name, stats in whole.items():
        dead = stats.dead_channels.tolist()
        assert int(table[name]["dead"]) == len(dead)
        assert table[name]["dead channels"] == (", ".join(map(str, dead)) or "-")
        assert int(table[name]["channels"]) == len(stats.mean) and int(table[name]["images"]) == IMAGES
    assert len(page["channels"]["pngs"]) == 1


@pytest.mark.slow
def test_python_and_the_cli_refuse_what_a_scan_page_cannot_use(scanned, tmp_path, capsys):
    status = main(["report", str(scanned), "--data", "builtin"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.count("\n") == 0
    assert re.search(r"is a scan folder, which records its own model and data; drop --data$", err), err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(scanned, unfinished)
    (unfinished / "summary.json").unlink()
    with pytest.raises(ValueError, match=r"the scan in .* is not finished .* run the scan again"):
        write_report(unfinished, tmp_path / "page.html")
    assert not (tmp_path / "page.html").exists()
    status = main(["report", str(unfinished), "--out", str(tmp_path / "page.html")])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""  # checked before anything is printed
    assert re.fullmatch(r"mindscope: error: the scan in .* is not finished .* run the scan again.*\n", captured.err)


@pytest.mark.slow
def test_a_scan_recorded_on_cuda_opens_its_report_with_its_images_on_a_cpu(scanned, tmp_path, one_thread):
    copy = tmp_path / "on-cuda"
    shutil.copytree(scanned, copy)
    manifest = json.loads((copy / "scan.json").read_text())
    manifest["source"]["device"] = "cuda"  # as 'mindscope scan --device cuda' records it
    (copy / "scan.json").write_text(json.dumps(manifest))
    assert open_scan(copy).plan.source.device == "cuda"
    assert main(["report", str(copy), "--images", "1"]) == 0
    sections = Page((copy / "report.html").read_text()).sections
    captions = sections["worst"]["captions"] + sections["wrong"]["captions"]
    assert len(captions) == 2 and not any("could not be opened" in c for c in captions), captions  # not grey
    frame = open_scan(scanned).table()  # the page is the scan's: its most confidently wrong image first
    first = frame[(frame["method"] == "gradient") & (frame["prediction"] != frame["label"])]
    index = int(first.sort_values(["probability", "index"], ascending=[False, True])["index"].iloc[0])
    assert f"the maps of images [{index}]" in sections["wrong"]["captions"][0]
