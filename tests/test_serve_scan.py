"""`mindscope serve SCAN_DIR`: the dashboard's scan views, each number checked against the Parquet table and shards.

The references are read here with pyarrow and safetensors, never through `mindscope.scan`'s
reader: the table for the rankings, counts and histogram; the shard files' maps for the
per-class means.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

pytest.importorskip("starlette")
pq = pytest.importorskip("pyarrow.parquet")
from starlette.testclient import TestClient  # noqa: E402

from mindscope.cli import main  # noqa: E402
from mindscope.render.scan import ZERO_ERROR  # noqa: E402
from mindscope.serve import create_app  # noqa: E402
from mindscope.serve.scan_views import LIST_ROWS  # noqa: E402
from serving import TOKEN, login, numbers, served_apps, spots, table_rows, text  # noqa: E402

IMAGES = 40  # scanned: shards of 16, 16 and 8
TOLERANCE = 0.01
CLASSES = ("circle", "square", "triangle", "diamond", "plus", "cross", "ring", "crescent", "star", "frame")


@pytest.fixture(scope="module")
def folder(tiny_run, tmp_path_factory, one_thread) -> Path:
    """ROOT/tiny (the run), ROOT/scans/whole (a finished scan), ROOT/scans/half (one shard short, not merged)."""
    root = tmp_path_factory.mktemp("served-scans")
    shutil.copytree(tiny_run, root / "tiny")
    whole = root / "scans" / "whole"
    args = ["scan", str(root / "tiny"), "--out", str(whole), "--methods", "gradient,integrated", "--limit",
            str(IMAGES), "--shard-size", "16", "--tolerance", str(TOLERANCE), "--layers", "none"]  # fmt: skip
    assert main(args) == 0
    half = root / "scans" / "half"
    shutil.copytree(whole, half)
    for leftover in ("summary.json", "images.parquet", "shards/000002.parquet"):
        (half / leftover).unlink()
    return root


@pytest.fixture(scope="module")
def table(folder) -> dict[str, dict[str, np.ndarray]]:
    """The scan's table per method as numpy columns, sorted by image index (pyarrow only)."""
    rows = pq.read_table(folder / "scans" / "whole" / "images.parquet").to_pydict()
    out = {}
    for method in ("gradient", "integrated"):
        keep = [i for i, m in enumerate(rows["method"]) if m == method]
        order = sorted(keep, key=lambda i: rows["index"][i])
        out[method] = {k: np.array([_value(k, v[i]) for i in order]) for k, v in rows.items()}
    return out


def _value(column: str, value: object) -> object:
    """A table cell for numpy: a null is NaN, or False in the boolean columns."""
    if value is None:
        return False if column in ("converged", "ill_conditioned") else np.nan
    return value


@pytest.fixture(scope="module")
def client(folder):
    app = create_app([folder], token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        login(client)
        yield client


def get(client, part: str, **params) -> str:
    response = client.get(f"/part/{part}", params={"scan": f"{folder_label(client)}/scans/whole", **params})
    assert response.status_code == 200, response.text
    return response.text


def folder_label(client) -> str:
    return next(iter(client.app.state.dashboard.catalog.roots))


def percent(cell: str) -> float:
    assert cell.endswith("%"), cell
    return float(cell[:-1]) / 100


def test_scans_are_listed_beside_the_runs_and_an_unfinished_one_says_what_to_run(client, table):
    label = folder_label(client)
    page = client.get("/", params={"view": "runs"}).text
    assert table_rows(page, "runs")[1][0] == f"{label}/tiny"
    rows = {r[0]: r for r in table_rows(page, "scans")[1:]}
    assert set(rows) == {f"{label}/scans/whole", f"{label}/scans/half"}
    integrated = table["integrated"]
    accuracy = (integrated["prediction"] == integrated["label"]).mean()
    assert rows[f"{label}/scans/whole"][3:] == [str(IMAGES), "gradient, integrated", f"{100 * accuracy:.1f}%"]
    assert rows[f"{label}/scans/half"][5] == "unfinished: 1 shard missing; run the scan again"
    assert f'href="/?view=scan&amp;scan={label}%2Fscans%2Fwhole"' in page
    response = client.get("/part/scan-classes", params={"scan": f"{label}/scans/half"})
    assert response.status_code == 400
    assert re.fullmatch(r"the scan in \S+half is not finished \(1 of 3 shards missing\); run the scan again .*\n",
                        response.text)  # fmt: skip


def test_serving_a_scan_folder_opens_its_page_with_the_counts_of_its_table(folder, table):
    app = create_app([folder / "scans" / "whole"], token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        login(client)
        page = client.get("/").text
    assert "<h2>Scan whole</h2>" in page and 'aria-current="page">Scan</a>' in page
    rows = {r[0]: r for r in table_rows(page, "scan-overview")[1:]}
    integrated = table["integrated"]
    ill = integrated["ill_conditioned"].astype(bool)
    converged = f"{int((integrated['converged'] & ~ill).sum())} of {int((~ill).sum())}"  # among the well-conditioned
    assert rows["integrated"][1:4] == [str(IMAGES), converged, str(int(ill.sum()))]
    kept = integrated["relative_completeness_error"][~ill]  # the figures leave the ill-conditioned out
    assert rows["integrated"][4:6] == [f"{100 * np.median(kept):.3g}%", f"{100 * kept.max():.3g}%"]
    assert rows["gradient"][2] == "-"
    for part in ("scan-classes", "scan-completeness", "scan-list?which=worst", "scan-list?which=wrong"):
        assert f'hx-get="/part/{part}"' in page


@pytest.mark.parametrize("served", ["the run", "its folder"])
def test_a_scan_stored_inside_a_run_folder_is_listed_and_opens(folder, table, tmp_path, served):
    run = tmp_path / "tiny"
    shutil.copytree(folder / "tiny", run)
    shutil.copytree(folder / "scans" / "whole", run / "scan")  # as 'mindscope scan RUN --out RUN/scan' writes it
    root = run if served == "the run" else tmp_path
    name = root.name if root == run else f"{root.name}/tiny"
    app = create_app([root], token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        login(client)
        page = client.get("/", params={"view": "runs"}).text
        assert [r[0] for r in table_rows(page, "runs")[1:]] == [name]
        assert [r[0] for r in table_rows(page, "scans")[1:]] == [f"{name}/scan"]
        part = client.get("/part/scan-list", params={"scan": f"{name}/scan", "which": "wrong"})
    assert part.status_code == 200, part.text
    columns = table["integrated"]
    wrong = [i for i in range(IMAGES) if columns["prediction"][i] != columns["label"][i]]
    first = min(wrong, key=lambda i: (-columns["probability"][i], columns["index"][i]))
    assert int(table_rows(part.text, "scan-wrong")[1][0]) == columns["index"][first]


def test_a_scan_recorded_on_cuda_shows_its_images_on_a_cpu(folder, tmp_path):
    copy = tmp_path / "on-cuda"
    shutil.copytree(folder / "scans" / "whole", copy)
    manifest = json.loads((copy / "scan.json").read_text())
    manifest["source"]["device"] = "cuda"  # as 'mindscope scan --device cuda' records it
    (copy / "scan.json").write_text(json.dumps(manifest))
    app = create_app([copy], token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        login(client)
        part = client.get("/part/scan-image", params={"scan": "on-cuda", "index": 3})
    assert part.status_code == 200, part.text
    assert numbers(part.text)["image"] == "3" and "note" not in numbers(part.text)  # no grey stand-in


@pytest.mark.parametrize("method", ["integrated", "gradient"])
def test_the_worst_list_pages_through_the_tables_ranking(client, table, method):
    columns = table[method]
    first = get(client, "scan-list", which="worst", method=method)
    if np.isnan(columns["relative_completeness_error"]).all():
        assert f"{method} has no completeness error to rank images by" in text(first)
        return
    # ranked: the well-conditioned images only (an ill-conditioned one has nothing to explain)
    ill = columns["ill_conditioned"].astype(bool)
    assert 0 < ill.sum() < IMAGES  # else leaving them out could not be seen
    badness = np.fmax(columns["relative_completeness_error"], columns["map_error"])
    kept = [i for i in range(IMAGES) if not ill[i]]
    expected = sorted(kept, key=lambda i: (-badness[i], columns["index"][i]))
    aside = f"{int(ill.sum())} of the {IMAGES} images are ill-conditioned and left out of this ranking"
    shown = []
    for page in range(math.ceil(len(kept) / LIST_ROWS)):
        part = first if page == 0 else get(client, "scan-list", which="worst", method=method, page=page)
        assert f"of the {len(kept)} worst-converged" in text(part) and aside in text(part)
        shown += table_rows(part, "scan-worst")[1:]
    assert [int(r[0]) for r in shown] == [int(columns["index"][i]) for i in expected]
    for row, i in zip(shown, expected):
        assert percent(row[4]) == pytest.approx(columns["relative_completeness_error"][i], rel=5e-3)
        assert percent(row[5]) == pytest.approx(columns["map_error"][i], rel=5e-3)
        assert int(row[6]) == columns["steps"][i]
        assert row[7] == ("yes" if columns["converged"][i] else "no")
        assert row[8] == "no"
    response = client.get("/part/scan-list", params={"scan": f"{folder_label(client)}/scans/whole", "page": 99})
    assert response.status_code == 400 and "page 99 is out of range" in response.text


def test_the_wrong_list_holds_every_wrong_prediction_most_confident_first(client, table):
    columns = table["integrated"]
    wrong = [i for i in range(IMAGES) if columns["prediction"][i] != columns["label"][i]]
    expected = sorted(wrong, key=lambda i: (-columns["probability"][i], columns["index"][i]))
    shown = []
    for page in range(math.ceil(len(wrong) / LIST_ROWS)):
        shown += table_rows(get(client, "scan-list", which="wrong", page=page), "scan-wrong")[1:]
    assert [int(r[0]) for r in shown] == [int(columns["index"][i]) for i in expected]
    for row, i in zip(shown, expected):
        assert row[1:3] == [CLASSES[columns["label"][i]], CLASSES[columns["prediction"][i]]]
        assert float(row[3]) == pytest.approx(columns["probability"][i], abs=5e-5)


def test_a_class_mean_map_is_the_mean_of_the_shard_maps_of_its_images(client, folder, table):
    targets = table["integrated"]["target"]
    maps = np.concatenate([load_file(str(p))["maps/integrated"]
                           for p in sorted((folder / "scans" / "whole" / "shards").glob("*.safetensors"))])  # fmt: skip
    assert maps.shape[0] == IMAGES
    labels = [s["label"] for s in spots(get(client, "scan-classes"))]
    assert len(labels) == len(CLASSES)
    for k, name in enumerate(CLASSES):
        n = int((targets == k).sum())
        assert labels[k].startswith(f"{name}: {n} image" if n else f"{name}: no images")
    for k in sorted(set(targets.tolist()))[:2]:
        expected = maps[targets == k].astype(np.float64).mean(axis=0)  # (C, H, W)
        values = client.get("/part/scan-class-values", params={"scan": f"{folder_label(client)}/scans/whole",
                                                                "class": k}).json()  # fmt: skip
        assert values["name"] == CLASSES[k] and values["images"] == int((targets == k).sum())
        np.testing.assert_allclose(np.array(values["mean"]), expected, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(np.array(values["mean_abs"]), np.abs(maps[targets == k]).mean(axis=0),
                                   rtol=1e-5, atol=1e-9)  # fmt: skip
        shown = numbers(get(client, "scan-classes", **{"class": k}))
        assert shown["images"] == str(values["images"])
        assert float(shown["sum of the mean map"]) == pytest.approx(expected.sum(), rel=1e-4)
        assert float(shown["largest pixel"]) == pytest.approx(expected.sum(axis=0).max(), rel=1e-4)


def test_the_histogram_counts_are_numpy_histogram_of_the_tables_errors(client, table):
    columns = table["integrated"]
    errors = columns["relative_completeness_error"][~columns["ill_conditioned"].astype(bool)]
    drawn = errors[errors >= ZERO_ERROR]
    edges = np.logspace(np.log10(drawn.min()), np.log10(drawn.max()), 31)
    expected, _ = np.histogram(drawn, bins=edges)
    part = get(client, "scan-completeness")
    bars = [re.fullmatch(r"(\d+) images? with relative completeness error from (\S+) to (\S+)", s["label"])
            for s in spots(part)]  # fmt: skip
    assert all(bars)
    counts = {round(math.log10(float(b[2])), 3): int(b[1]) for b in bars}
    assert counts == {round(math.log10(e), 3): int(c) for e, c in zip(edges[:-1], expected) if c}
    below = int((errors < TOLERANCE).sum())
    assert f"{below} lie below the tolerance {TOLERANCE:g}" in text(part)
    assert "gradient has no completeness error" in text(get(client, "scan-completeness", method="gradient"))


def test_clicking_an_image_shows_its_map_with_the_tables_numbers(client, table):
    listing = get(client, "scan-list", which="wrong")
    index = int(table_rows(listing, "scan-wrong")[1][0])
    assert f'hx-get="/part/scan-image?index={index}"' in html.unescape(listing)
    part = get(client, "scan-image", index=index)
    shown, row = numbers(part), {k: v[index] for k, v in table["integrated"].items()}
    assert shown["image"] == str(index) and 'data-figure="scan-image"' in part
    assert (shown["label"], shown["prediction"]) == (CLASSES[row["label"]], CLASSES[row["prediction"]])
    assert float(shown["probability"]) == pytest.approx(row["probability"], abs=5e-5)
    assert float(shown["F(x) − F(x′)"]) == pytest.approx(row["delta"], rel=1e-5)
    assert percent(shown["relative completeness error"]) == pytest.approx(row["relative_completeness_error"], rel=5e-3)
    assert int(shown["steps"]) == row["steps"]
    assert shown["converged"] == (
        "yes" if row["converged"] else "not refined (ill-conditioned)" if row["ill_conditioned"] else "no"
    )


@pytest.mark.parametrize(
    "part, params, status, message",
    [
        ("scan-classes", {"method": "lime"}, 400, r"^unknown method 'lime'; choose one of: gradient, integrated$"),
        ("scan-classes", {"class": 10}, 400, r"^class must lie in 0..9, got 10$"),
        ("scan-image", {"index": IMAGES}, 400, rf"^index must lie in 0..{IMAGES - 1}, got {IMAGES}$"),
        ("scan-list", {"which": "best"}, 400, r"^unknown which 'best'; choose one of: worst, wrong$"),
        ("scan-classes", {"scan": "../../etc"}, 404, r"^no scan '../../etc' here"),
        ("scan-classes", {"scan": "{label}/tiny"}, 404, r"^no scan '.*/tiny' here"),
    ],
)
def test_bad_parameters_get_one_line(client, part, params, status, message):
    label = folder_label(client)
    params = {"scan": f"{label}/scans/whole", **{k: str(v).format(label=label) for k, v in params.items()}}
    response = client.get(f"/part/{part}", params=params)
    assert response.status_code == status and response.text.count("\n") == 1, response.text
    assert re.search(message, response.text.strip()), response.text


def test_scan_parts_need_the_token(folder):
    app = create_app([folder], token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1") as fresh:
        assert fresh.get("/part/scan-class-values", params={"class": 0}).status_code == 403


@pytest.mark.parametrize("what", ["unfinished", "merged-but-for-the-summary"])
def test_the_command_refuses_a_folder_it_cannot_show_with_one_line(folder, tmp_path, capsys, what):
    if what == "unfinished":
        path, message = folder / "scans" / "half", r"not finished \(1 of 3 shards missing\); run the scan again"
    else:
        path = tmp_path / "scan"
        shutil.copytree(folder / "scans" / "whole", path)
        (path / "summary.json").unlink()
        message = (
            rf"all 3 shards are in, but not merged\); run the scan again, or 'mindscope scan --merge --out {path}'"
        )
    assert main(["serve", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mindscope: error: ") and re.search(message, err[0]), err


@pytest.mark.slow  # starts a browser
def test_the_scan_views_in_chromium(folder, tmp_path):
    pytest.importorskip("uvicorn")
    sync_api = pytest.importorskip("playwright.sync_api")
    from mindscope.serve import start
    from test_report import _chromium
    from test_serve_browser import ARTIFACTS, CHROMIUM_ARGS, LOADED

    executable = _chromium()
    running = start(create_app([folder / "scans" / "whole"], token=TOKEN))
    origin = f"http://127.0.0.1:{running.port}"
    console, requests = [], []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(120_000)
                page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: console.append(str(e)))
                page.on("request", lambda r: requests.append(r.url))

                def figure(selector: str) -> None:
                    page.wait_for_selector(f"{selector} img")
                    page.wait_for_function(LOADED, arg=f"{selector} img")

                page.goto(running.url)
                for kind in ("scan-classes", "scan-completeness", "scan-worst", "scan-wrong"):
                    figure(f"[data-figure={kind}]")
                assert page.locator("[data-figure=scan-classes] .spot").count() == len(CLASSES)
                page.select_option("select[name=class]", "2")
                page.wait_for_selector("#classes-panel table.numbers")
                assert page.locator("[data-figure=scan-classes] .spot").count() == 1
                first = page.locator("table.scan-wrong tr[data-index] a.pick").first
                index = first.get_attribute("hx-get").split("index=")[1]
                first.click()
                figure(f"#wrong-detail [data-figure=scan-image][data-index='{index}']")
                page.screenshot(path=str(tmp_path / "dashboard-scan.png"), full_page=True)
                page.click("#wrong-panel button:has-text('next')")
                page.wait_for_function("() => document.querySelector('#wrong-panel').textContent.includes('Page 2')")
                page.select_option("#scan-state select[name=method]", "gradient")
                page.wait_for_function("() => location.search.includes('method=gradient')")
                page.wait_for_selector("#worst-panel .note")
                assert "gradient has no completeness error" in page.inner_text("#worst-panel")
                figure("[data-figure=scan-wrong]")
            finally:
                browser.close()
    finally:
        running.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "dashboard-scan.png", ARTIFACTS / "dashboard-scan.png")
    assert console == []
    assert [u for u in requests if not u.startswith((origin + "/", "data:"))] == []


def test_an_ill_conditioned_image_says_it_was_not_refined(client, table):
    columns = table["integrated"]
    ill = np.flatnonzero(columns["ill_conditioned"].astype(bool) & ~columns["converged"].astype(bool))
    assert ill.size  # else the wording could not be seen
    shown = numbers(get(client, "scan-image", index=int(columns["index"][ill[0]])))
    assert shown["converged"] == "not refined (ill-conditioned)" and shown["ill-conditioned"] == "yes"


def test_the_printed_summary_leaves_the_ill_conditioned_out_of_its_figures(folder, table, capsys):
    whole = folder / "scans" / "whole"
    args = ["scan", str(folder / "tiny"), "--out", str(whole), "--methods", "gradient,integrated", "--limit",
            str(IMAGES), "--shard-size", "16", "--tolerance", str(TOLERANCE), "--layers", "none"]  # fmt: skip
    assert main(args) == 0  # a finished scan: nothing computed, the summary printed again
    out = capsys.readouterr().out
    columns = table["integrated"]
    ill = columns["ill_conditioned"].astype(bool)
    kept = columns["relative_completeness_error"][~ill]
    converged = int((columns["converged"].astype(bool) & ~ill).sum())
    assert (
        f"; {converged} of {int((~ill).sum())} converged to {TOLERANCE:.2%}; {int(ill.sum())} ill-conditioned " in out
    )
    assert f"median {np.median(kept):.3%}, max {kept.max():.3%} ({int(ill.sum())} ill-conditioned" in out


def test_a_folder_whose_only_scan_is_unfinished_opens_on_the_runs_view(folder, tmp_path, capsys, monkeypatch):
    served = served_apps(monkeypatch)
    shutil.copytree(folder / "scans" / "half", tmp_path / "scans" / "half")
    assert main(["serve", str(tmp_path / "scans"), "--port", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("serving 1 scan (unfinished) with ") for line in out), out
    token = re.search(r"\?token=(\S+)", next(line for line in out if "dashboard: " in line)).group(1)
    (app,) = served
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/", params={"token": token}, follow_redirects=False).status_code == 303
        page = client.get("/")
    assert page.status_code == 200
    assert table_rows(page.text, "scans")[1][5] == "unfinished: 1 shard missing; run the scan again"


def test_a_class_without_images_says_so_and_its_values_have_no_mean(client, table):
    targets = table["integrated"]["target"]
    empty = [k for k in range(len(CLASSES)) if not (targets == k).any()]
    assert empty  # else the wording could not be seen
    k = empty[0]
    part = get(client, "scan-classes", **{"class": k})
    assert f"integrated: no image was attributed to {CLASSES[k]}, so it has no mean map." in text(part)
    assert "±" not in text(part) and "own colour scale" not in text(part)
    assert numbers(part) == {"class": f"{k}: {CLASSES[k]}", "images": "0"}
    params = {"scan": f"{folder_label(client)}/scans/whole", "class": k}
    values = client.get("/part/scan-class-values", params=params).json()
    assert values["images"] == 0 and values["mean"] is None and values["mean_abs"] is None
