"""The HTML report: its sections, and a real headless Chromium loading it from disk."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

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
    assert ids == ["experiment", "weights", "activations", "interior", "integrated", "trust"]
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


def test_report_loads_in_headless_chromium(report):
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
            page.goto(report.as_uri(), wait_until="load")
            widths = page.evaluate("() => [...document.images].map(i => i.complete ? i.naturalWidth : 0)")
            frames = page.evaluate(GIF_FRAMES_JS)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert widths and all(w > 0 for w in widths), f"images that did not load: {widths}"
    assert console_errors == []
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
    assert len(frames) >= 2 and all(n > 1 for n in frames), f"GIF frame counts: {frames}"
