"""The dashboard in a real browser: Debian's Chromium driven by Playwright, as the report's test does.

Open the dashboard on a small run, pick an image, change the layer, move the alpha slider,
change the method; each time the right figure must appear, with no console error and no
request leaving 127.0.0.1. Then a grey-scale 28x28 run (Fashion-MNIST's shape) with an upload.
Screenshots are saved as test artefacts.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains a small run and starts a browser

pytest.importorskip("uvicorn")
from mindscope.cli import main  # noqa: E402
from mindscope.serve import create_app, start  # noqa: E402
from serving import TOKEN, make_folder  # noqa: E402
from test_report import _chromium  # noqa: E402  (one way to find the browser, or skip)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
LOADED = "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file as Fashion-MNIST ships them: magic (dtype 0x08, ndim), big-endian sizes, bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory) -> Path:
    """A width-8 run on a Fashion-MNIST-shaped set: 1x28x28 images, 10 classes, 96 train and 32 test."""
    root = tmp_path_factory.mktemp("grey")
    rng = np.random.default_rng(0)
    (root / "data").mkdir()
    for split, n in (("train", 96), ("t10k", 32)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(labels):  # a bright bar whose place says the class
            images[i, 2 + 2 * c : 6 + 2 * c, 4:24] = 220
        write_idx(root / "data" / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / "data" / f"{split}-labels-idx1-ubyte.gz", labels)
    out = root / "runs" / "fashion"
    args = ["train", "--data", f"fashion-mnist:{root / 'data'}", "--epochs", "1", "--width", "8",
            "--batch-size", "32", "--log-every", "1", "--histogram-every", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return out


def test_the_dashboard_in_chromium(tiny_run, grey_run, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    folder = make_folder(tiny_run, tmp_path / "runs")
    app = create_app([folder, grey_run.parent], token=TOKEN)
    running = start(app)
    origin = f"http://127.0.0.1:{running.port}"
    console, requests, shots = [], [], []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.set_default_timeout(120_000)
                page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: console.append(str(e)))
                page.on("request", lambda r: requests.append(r.url))

                def shot(name: str) -> None:
                    path = tmp_path / f"dashboard-{name}.png"
                    page.screenshot(path=str(path), full_page=True)
                    shots.append(path)

                def figure(selector: str):
                    element = page.wait_for_selector(f"{selector} img")
                    page.wait_for_function(LOADED, arg=f"{selector} img")
                    return element

                page.goto(running.url)  # the token is traded for a cookie and leaves the address bar
                assert page.url == f"{origin}/" and "token" not in page.url
                page.click("table.runs a:has-text('runs/tiny')")
                figure("[data-figure=training-curves]")
                spot = page.locator("[data-figure=training-curves] .spot").first
                spot.hover()
                tip = spot.evaluate("e => getComputedStyle(e, '::after').content")
                assert tip.strip('"') == spot.get_attribute("data-label") and "epoch" in tip
                shot("training")

                page.click("nav a:has-text('Weights')")
                figure("[data-figure=weight-histogram][data-epoch='1']")
                asked = len(requests)
                page.click("button.play")  # from the first snapshot to the last, one a second
                page.wait_for_function("() => document.querySelector('button.play').textContent.includes('play')")
                figure("[data-figure=weight-histogram][data-epoch='1']")  # it ends on the last snapshot
                # ... having asked for the first: a frame slower than a second is skipped, so not waited for
                assert any("/part/weights" in u and "wepoch=0" in u for u in requests[asked:]), requests[asked:]

                page.click("nav a:has-text('Images')")
                page.wait_for_selector(".thumb[data-image='5']").click()
                page.wait_for_function("() => document.querySelector('#chosen-caption').textContent.includes('#5')")
                assert "image=5" in page.url
                shot("images")

                page.click("nav a:has-text('Activations')")
                figure("[data-figure=channel-grid][data-layer='features.5']")
                page.select_option("select[name=layer]", "features.11")
                figure("[data-figure=channel-grid][data-layer='features.11']")
                page.click("[data-figure=channel-grid] .spot[data-channel='2']")
                figure("[data-figure=channel][data-channel='2']")
                figure("[data-figure=top-images][data-channel='2']")
                shot("activations")

                page.click("nav a:has-text('Attributions')")
                figure("[data-figure=attribution][data-method=integrated]")
                page.select_option("select[name=method]", "gradient")
                figure("[data-figure=attribution][data-method=gradient]")
                page.select_option("select[name=method]", "interior")
                figure("[data-figure=saturation-curve][data-alpha='0.5']")
                lines = []
                for k, alpha in ((3, "0.04"), (12, "0.9")):
                    page.fill("input[name=k]", str(k))
                    page.dispatch_event("input[name=k]", "input")
                    figure(f"[data-figure=interior-frame][data-alpha='{alpha}']")
                    figure(f"[data-figure=saturation-curve][data-alpha='{alpha}']")
                    lines.append(page.locator("[data-figure=saturation-curve] .marker").first.bounding_box()["x"])
                assert lines[0] < lines[1]  # the line moved right with alpha
                shot("alpha")
                page.select_option("select[name=method]", "integrated")
                clean = len(console)  # a bad value next: the 400 is expected, and logged by the browser
                page.fill("input[name=tolerance]", "-1")
                page.dispatch_event("input[name=tolerance]", "change")
                page.wait_for_selector("#error .error")
                assert page.inner_text("#error") == "tolerance must lie in (0, 1), got -1; such as 0.01"
                page.wait_for_timeout(200)
                expected, console[clean:] = console[clean:], []

                fashion = next(n for n in app.state.dashboard.catalog.names() if n.endswith("/fashion"))
                page.goto(f"{origin}/?view=activations&run={fashion}")
                figure("[data-figure=channel-grid]")
                page.click("nav a:has-text('Images')")
                page.wait_for_selector(".thumb")
                page.set_input_files("#upload", files=[{"name": "bag.png", "mimeType": "image/png",
                                                        "buffer": _png_bytes()}])  # fmt: skip
                page.wait_for_function(
                    "() => document.querySelector('#chosen-caption').textContent.includes('uploaded')"
                )
                page.click("nav a:has-text('Attributions')")
                figure("[data-figure=attribution][data-method=integrated]")
                shot("fashion-upload")
            finally:
                browser.close()
    finally:
        running.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    for path in shots:
        shutil.copy(path, ARTIFACTS / path.name)
    assert console == []
    assert expected and all("400" in m or "htmx:responseError" in m for m in expected), expected
    assert [u for u in requests if not u.startswith((origin + "/", "data:"))] == []


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (90, 60), (180, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()
