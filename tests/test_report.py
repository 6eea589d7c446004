"""The HTML report: its sections, and a real headless Chromium loading it from disk."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mindscope.cli import main

pytestmark = pytest.mark.slow  # trains a run and writes whole reports

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert (
        main(
            [
                "report",
                str(tiny_run),
                "--out",
                str(out),
                "--images",
                "2",
                "--evaluation-images",
                "2",
                "--tolerance",
                "0.05",
            ]
        )
        == 0
    )
    return out


def test_report_has_every_section_in_walkthrough_order(report):
    html = report.read_text()
    ids = re.findall(r'<section id="([\w-]+)"', html)
    assert ids == ["experiment", "weights", "activations", "channels", "interior", "integrated", "trust"]
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    assert html.count("<img ") >= 10


def test_report_rejects_bad_input(tiny_run, tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(tiny_run), "--image", "9999", "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("mindscope: error: no run at") and "out of range" in err[1]
    assert not (tmp_path / "r.html").exists()


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: install Debian's chromium (.ci/run does)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


GIF_FRAMES_JS = """
async () => {
  const out = [];
  for (const img of document.querySelectorAll('img')) {
    if (!img.src.startsWith('data:image/gif')) continue;
    const data = await (await fetch(img.src)).arrayBuffer();
    const decoder = new ImageDecoder({data, type: 'image/gif'});
    await decoder.tracks.ready;
    out.push(decoder.tracks.selectedTrack.frameCount);
  }
  return out;
}
"""


def check_in_chromium(page_file: Path, screenshot: str) -> None:
    """Load a report in headless chromium: every image and GIF decodes, no errors, no network, no sideways scroll."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    console_errors, requests = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri(), wait_until="load")
            widths = page.evaluate("() => [...document.images].map(i => i.complete ? i.naturalWidth : 0)")
            frames = page.evaluate(GIF_FRAMES_JS)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
            page.set_viewport_size({"width": 800, "height": 900})  # a narrow window: no sideways scrolling
            narrow = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        finally:
            browser.close()
    assert widths and all(w > 0 for w in widths), f"images that did not load: {widths}"
    assert console_errors == []
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
    assert len(frames) >= 2 and all(n > 1 for n in frames), f"GIF frame counts: {frames}"
    assert narrow[0] <= narrow[1] <= 800, f"at 800 px the page is {narrow[0]} px wide"


def test_report_loads_in_headless_chromium(report):
    check_in_chromium(report, "report.png")


# --- what the page says: read back from the HTML ------------------------------------------------


def _sections(html: str) -> dict[str, str]:
    parts = re.split(r'<section id="([\w-]+)">', html)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def _text(fragment: str) -> str:
    import html as html_module

    return html_module.unescape(re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]*"', "", fragment)))


def _tables(fragment: str) -> list[tuple[str, list[list[str]]]]:
    """(caption, rows of cell texts) for each table of a section."""
    import html as html_module

    found = []
    for caption, body in re.findall(
        r'<p class="tablecap">(.*?)</p>\s*<div class="scroll"><table>(.*?)</table>', fragment, re.S
    ):
        rows = [
            [html_module.unescape(c).strip() for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
        ]
        found.append((html_module.unescape(caption), rows))
    return found


def test_sections_5_and_6_show_the_same_completeness_figures(report, tiny_run):
    from mindscope.attribution import integrated_gradients
    from mindscope.baselines import black
    from mindscope.report.attribution_sections import pick_images
    from mindscope.run import load_run

    sections = _sections(report.read_text())
    (caption5, rows5), *_ = _tables(sections["integrated"])
    trust_tables = _tables(sections["trust"])
    caption6, rows6 = trust_tables[1]
    summary = re.compile(r"worst relative completeness error [0-9.]+% over \d+ well-conditioned images?[^;.]*")
    assert summary.search(caption5).group(0) == summary.search(caption6).group(0)
    header5, header6 = rows5[0], rows6[0]
    per_image5 = {r[0]: r[header5.index("completeness error")] for r in rows5[1:]}
    per_image6 = {r[0]: r[header6.index("completeness error")] for r in rows6[1:]}
    assert per_image5 == per_image6  # the report fixture uses 2 images in both sections
    methods, method_rows = trust_tables[0][1][0], trust_tables[0][1][1:]
    integrated = next(r for r in method_rows if r[0] == "integrated")
    # independently: the tolerance-mode IG of section 5, worst over well-conditioned images
    run = load_run(tiny_run)
    images = pick_images(run, 2)
    x = run.data.inputs(run.data.test, images)
    result = integrated_gradients(run.model, x, baseline=black(x, run.data.normalization), tolerance=0.05)
    relative = result.relative_completeness_error.numpy()
    ill = np.zeros(len(images), bool) if result.ill_conditioned is None else result.ill_conditioned.numpy()
    worst = f"{relative[~ill].max():.3%}"
    assert integrated[methods.index("compl. err (worst)")] == worst
    assert f"worst relative completeness error {worst}" in caption5


def test_the_trust_captions_say_which_way_is_better_from_the_numbers(report):
    trust = _sections(report.read_text())["trust"]
    text = _text(trust)
    assert "negative is good" not in text
    assert "a LOWER area is better" in text and "a HIGHER area is better" in text
    (caption, rows), *_ = _tables(trust)
    header = rows[0]
    deletion_caption = text.split("Deletion (")[-1]  # the figure's caption, with the numbers
    for row in rows[1:]:
        margin = float(row[header.index("del +chance")])
        verdict = "no better than chance" if margin == 0 else ("beats chance" if margin > 0 else "worse than chance")
        assert f"{row[0]} {row[header.index('del AUC')]} vs random" in deletion_caption
        assert re.search(
            rf"{row[0]} [0-9.]+ vs random [0-9.]+: {re.escape(row[header.index('del +chance')])}, {verdict}",
            deletion_caption,
        ), row[0]
    assert "compares the maps on the pixels that can carry attribution" in caption


def test_labels_agree_with_what_they_label(report):
    html = report.read_text()
    text = _text(html)
    assert "1 epoch " in text and "1 epochs" not in text  # the tiny run trains one epoch
    assert "a = " not in text


@pytest.fixture(scope="module")
def folder_report(tmp_path_factory) -> tuple[Path, list]:
    """A width-32 run on an image folder whose classes start with vowels (white backgrounds), reported."""
    import logging
    import warnings

    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("apple", "owl")):
        (root / "data" / name).mkdir(parents=True)
        for i in range(20):
            a = np.full((32, 32, 3), 255, np.uint8)  # white: overlays blend up to exactly 1.0
            y, x = rng.integers(4, 20, 2)
            a[y : y + 10, x : x + 10] = (200, 30, 30) if c == 0 else (30, 30, 200)
            Image.fromarray(a).save(root / "data" / name / f"{i}.png")
    run = root / "run"
    assert (
        main(
            [
                "train",
                "--data",
                f"folder:{root / 'data'}",
                "--epochs",
                "1",
                "--width",
                "32",
                "--batch-size",
                "8",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    out = root / "report.html"
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logging.getLogger("matplotlib").addHandler(handler)  # matplotlib logs its clipping warning
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["report", str(run), "--out", str(out), "--images", "2", "--evaluation-images", "2"]) == 0
    finally:
        logging.getLogger("matplotlib").removeHandler(handler)
    return out, messages + [str(w.message) for w in caught]


def test_an_image_folder_report_clips_explicitly_and_names_classes_without_articles(folder_report):
    out, messages = folder_report
    assert not [m for m in messages if "Clipping input data" in m]
    text = _text(out.read_text())
    assert not re.search(r"\b[Aa] [AEIOUaeiou]", text), re.search(r".{40}\b[Aa] [AEIOUaeiou].{20}", text)
    assert "(labelled apple)" in text or "(labelled owl)" in text


def test_channel_captions_count_the_channels_drawn_and_layer_9_has_no_saturation(folder_report):
    out, _ = folder_report
    activations = _text(_sections(out.read_text())["activations"])
    assert "Layer 3 (features.5): 27 of 32 channels of 32x32" in activations
    assert "32 channels of 32x32" not in activations.replace("27 of 32 channels", "")
    assert "does not apply to L9 (no saturating activation: n/a)" in activations
