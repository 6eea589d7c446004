"""The dashboard's views through Starlette's TestClient, each checked against the look or the run it shows."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from mindscope.activations import top_activating  # noqa: E402
from mindscope.attribution import integrated_gradients, interior_gradients  # noqa: E402
from mindscope.baselines import black  # noqa: E402
from mindscope.run import load_run  # noqa: E402
from mindscope.serve import create_app  # noqa: E402
from mindscope.serve.attribution_views import ALPHAS  # noqa: E402
from serving import TOKEN, figure, login, make_folder, markers, numbers, poll, spots, table_rows, text  # noqa: E402


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    root = make_folder(tiny_run, tmp_path_factory.mktemp("served"))
    app = create_app([root], token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        login(client)
        yield app, client, f"{root.name}/tiny", root


@pytest.fixture(scope="module")
def run(tiny_run):
    return load_run(tiny_run)


def part(client, name: str, run_name: str, **params) -> str:
    response = client.get(f"/part/{name}", params={"run": run_name, **params})
    assert response.status_code == 200, response.text
    return response.text


def test_every_request_needs_the_token(served):
    app, _, name, _ = served
    with TestClient(app, base_url="http://127.0.0.1") as fresh:
        for path in ("/", "/static/htmx.min.js", f"/part/training?run={name}", "/?token=wrong"):
            response = fresh.get(path, follow_redirects=False)
            assert response.status_code == 403, path
            assert response.text == "missing or wrong token: open the address that 'mindscope serve' printed " \
                                    "(it ends in ?token=...)\n"  # fmt: skip
        response = fresh.get(f"/?view=runs&token={TOKEN}&run={name}", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == f"/?view=runs&run={name.replace('/', '%2F')}"
        cookie = response.headers["set-cookie"]
        assert (
            cookie.startswith(f"mindscope-token-80={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        )
        script = fresh.get("/static/htmx.min.js")
        assert script.status_code == 200 and script.text.startswith("var htmx=")
        assert "Zero-Clause BSD" in fresh.get("/static/htmx-LICENSE").text


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("127.0.0.1", True),
        ("localhost:80", True),
        ("[::1]:80", True),
        ("evil.example", False),
        ("evil.example:80", False),
        ("127.0.0.1.evil.example", False),
        ("", False),
    ],
)
def test_the_host_header_is_checked_against_dns_rebinding(served, host, allowed):
    _, client, _, _ = served
    response = client.get("/static/dashboard.css", headers={"host": host})
    assert response.status_code == (200 if allowed else 403)
    if not allowed:
        assert "is not allowed: open the dashboard at the address" in response.text


@pytest.mark.parametrize(
    "name",
    ["../tiny", "/etc", "{root}/../../etc", "{root}//etc", "{root}/tiny/snapshots", "{root}/link", "nowhere/tiny",
     "{root}/..", "{root}/./../{root}/nothing"],
)  # fmt: skip
def test_run_names_stay_inside_the_folders_given(served, tiny_run, name):
    _, client, _, root = served
    link = root / "link"  # a run, but outside the folder: a link does not let it in
    if not link.exists():
        link.symlink_to(tiny_run, target_is_directory=True)
    response = client.get("/part/training", params={"run": name.format(root=root.name)})
    assert response.status_code == 404
    assert response.text.startswith("no run ") and response.text.endswith("pick one from the Runs view\n")


def test_the_runs_view_lists_each_run_with_its_accuracy(served, run):
    _, client, name, root = served
    rows = table_rows(client.get("/?view=runs").text, "runs")
    assert rows[0] == ["run", "data", "width", "epochs", "test accuracy"]
    final = [m["value"] for m in run.metrics if (m["split"], m["name"], m["scope"]) == ("test", "accuracy", "epoch")]
    tiny = f"{100 * final[-1]:.1f}%"
    assert sorted(rows[1:]) == sorted(
        [[f"{root.name}/{n}", "shapes10", "8", str(max(run.epochs)), tiny] for n in ("other", "tiny", "twin")]
    )


def test_training_curves_show_every_logged_value_on_hover(served, run):
    _, client, name, _ = served
    page = part(client, "training", name)
    assert figure(page, "training-curves")
    labels = {s["label"] for s in spots(page)}
    for m in run.metrics:
        if m["name"] not in ("accuracy", "loss") or not np.isfinite(m["value"]):
            continue
        series = f"{m['split']} ({'per epoch' if m['scope'] == 'epoch' else 'logged steps'})"
        axis = "accuracy (%)" if m["name"] == "accuracy" else "cost (cross-entropy)"
        value = 100 * m["value"] if m["name"] == "accuracy" else m["value"]
        assert f"{series}: epoch {m['epoch']:.4g}, {axis} {value:.4g}" in labels
    assert all(0 <= s["left"] + s["width"] / 2 <= 100 and 0 <= s["top"] + s["height"] / 2 <= 100 for s in spots(page))


def test_weights_at_an_epoch_beside_epoch_0_with_the_change_table(served, tiny_run, run):
    _, client, name, _ = served
    last = max(run.epochs)
    page = part(client, "weights", name, tensor="features.2.weight", wepoch=last)
    assert figure(page, "weight-histogram") | {} and figure(page, "weight-histogram")["epoch"] == str(last)
    snapshots = [load_file(tiny_run / "snapshots" / f"epoch_{e:04d}.safetensors") for e in run.epochs]
    values = [s["features.2.weight"].double().numpy() for s in snapshots]
    low, high = min(v.min() for v in values), max(v.max() for v in values)
    assert f"both panels share one x-range, {low:.3g} to {high:.3g}" in text(page)
    rows = {r[0]: r for r in table_rows(page, "changes")[1:]}
    assert len(rows) == len(snapshots[0])
    first, final = values[0], values[-1]
    assert rows["features.2.weight"][1] == f"{first.mean():+.4f} → {final.mean():+.4f}"
    assert rows["features.2.weight"][2] == f"{first.std():.4f} → {final.std():.4f}"
    moved = np.linalg.norm(final - first) / np.linalg.norm(first)
    assert rows["features.2.weight"][4] == f"{moved:.1%}"


def test_the_image_filter_agrees_with_the_models_own_predictions(served, run):
    _, client, name, _ = served
    test = run.data.test
    with torch.no_grad():
        probabilities = run.model(run.data.inputs(test)).softmax(dim=-1)
    confidence, predicted = probabilities.max(dim=-1)
    labels = test.labels
    cases = [
        ({"outcome": "wrong"}, predicted != labels),
        ({"outcome": "right", "true": 2}, (predicted == labels) & (labels == 2)),
        ({"pred": 1, "low": 0.2, "high": 0.9}, (predicted == 1) & (confidence >= 0.2) & (confidence <= 0.9)),
    ]
    for params, expected in cases:
        response = poll(client, "/part/images?" + "&".join(f"{k}={v}" for k, v in {"run": name, **params}.items()))
        assert response.status_code == 200
        wanted = expected.nonzero().flatten().tolist()
        assert f"{len(wanted)} of {len(test)} test images match" in text(response.text)
        assert [int(i) for i in re.findall(r'data-image="(\d+)"', response.text)] == wanted[:48]


def test_picking_an_image_puts_it_in_the_pages_state(served, run):
    _, client, name, _ = served
    page = client.get("/", params={"view": "images", "run": name, "image": 5}).text
    label = run.classes[int(run.data.test.labels[5])]
    assert f"test image #5 (labelled {label})" in text(page)
    assert '<input type="hidden" name="image" value="5">' in page
    links = re.findall(r"<nav[^>]*>(.*?)</nav>", page, re.S)[0]
    assert links.count("image=5") == 8  # every view keeps the chosen image


def test_the_channel_grid_has_a_box_per_channel_and_a_click_shows_it_large(served, run):
    _, client, name, _ = served
    page = part(client, "activations", name, layer="L3", image=3)
    assert figure(page, "channel-grid")["layer"] == "features.5"
    boxes = [s for s in spots(page) if s["channel"] is not None]
    assert [b["channel"] for b in boxes] == list(range(8))  # width 8: every channel
    for a, b in zip(boxes, boxes[1:]):  # one row, left to right, not overlapping
        assert a["left"] + a["width"] <= b["left"] and abs(a["top"] - b["top"]) < 0.5
    assert 'hx-get="/part/channel?layer=features.5&amp;channel=3"' in page
    large = part(client, "channel", name, layer="features.5", channel=3, image=3)
    assert figure(large, "channel") | {} and figure(large, "channel")["channel"] == "3"


def test_a_channels_top_images_are_those_of_top_activating(served, run):
    _, client, name, _ = served
    response = poll(client, f"/part/topk?run={name}&layer=features.5&channel=3")
    assert response.status_code == 200 and figure(response.text, "top-images")
    batches = (run.data.inputs(run.data.test, list(range(i, min(i + 16, 64)))) for i in range(0, 64, 16))
    reference = top_activating(run.model, batches, "features.5", 3, k=9)
    shown = re.search(r"channel 3 \(([\d, ]+)\)", text(response.text)).group(1)
    assert [int(i) for i in shown.split(", ")] == reference.indices.tolist()


def test_integrated_gradients_show_the_steps_and_completeness_they_reached(served, run):
    _, client, name, _ = served
    page = part(client, "attribution", name, method="integrated", tolerance=0.01, image=3)
    assert figure(page, "attribution")["method"] == "integrated"
    shown = numbers(page)
    x = run.data.inputs(run.data.test, [3])
    reference = integrated_gradients(run.model, x, baseline=black(x, run.data.normalization), tolerance=0.01)
    assert shown["steps used"] == str(int(reference.steps[0]))
    assert shown["relative completeness error"] == f"{float(reference.relative_completeness_error[0]):.3%}"
    assert shown["completeness error"] == f"{float(reference.completeness_error[0]):.3g}"
    sums = float(reference.attributions.sum()) - float(reference.output[0] - reference.baseline_output[0])
    assert abs(sums) == pytest.approx(float(reference.completeness_error[0]), rel=1e-6, abs=1e-12)
    assert shown["converged"] == ("yes" if bool(reference.converged[0]) else "no: the step budget ran out")


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"method": "gradient"}, {"steps used": "1"}),
        ({"method": "smoothgrad"}, {"steps used": "16"}),
        ({"method": "gradient", "target": 4}, {"explained class": "{classes[4]}"}),
        ({"method": "integrated", "baseline": "mean", "tolerance": 0.05}, {"baseline": "dataset-mean grey image"}),
    ],
)
def test_each_method_target_and_baseline_is_the_one_asked_for(served, run, params, expected):
    _, client, name, _ = served
    shown = numbers(part(client, "attribution", name, image=3, **params))
    for key, value in expected.items():
        assert shown[key] == value.format(classes=run.classes)


def test_the_alpha_slider_shows_each_frame_and_marks_the_curve(served, run):
    _, client, name, _ = served
    form = part(client, "attribution", name, method="interior", image=3)
    assert f'name="k" min="0" max="{len(ALPHAS) - 1}"' in form
    x = run.data.inputs(run.data.test, [3])
    for k in (0, 8):
        alpha = ALPHAS[k]
        page = part(client, "alpha", name, method="interior", image=3, k=k)
        assert figure(page, "interior-frame")["alpha"] == f"{alpha}"
        reference = interior_gradients(run.model, x, alphas=[alpha], baseline=black(x, run.data.normalization))
        target = run.classes[int(reference.targets[0])]
        assert numbers(page)[f"p({target}) at α"] == f"{float(reference.target_probabilities[0, 0]):.3f}"
        (line, _), points = (
            markers(page),
            [s for s in spots(page) if s["label"].startswith(f"#0 {target}: α {alpha:.4g}, target")],
        )
        assert len(points) == 1
        assert line[0] == pytest.approx(points[0]["left"] + points[0]["width"] / 2, abs=0.01)


def test_side_by_side_draws_both_runs_of_the_same_data(served):
    _, client, name, root = served
    twin = f"{root.name}/twin"
    page = part(client, "compare", name, other=twin, what="activations", layer="L3", image=2)
    pictures = re.findall(r'data-figure="compare-activations" data-run="([^"]+)"', page)
    assert pictures == [name, twin]
    sources = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(sources) == 2 and sources[0] == sources[1]  # a copy of the run: the same weights draw the same grid
    page = part(client, "compare", name, other=twin, what="attribution", method="gradient", image=2)
    sources = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(sources) == 2 and sources[0] == sources[1]
    other = client.get("/part/compare", params={"run": name, "other": f"{root.name}/other"})
    assert other.status_code == 400 and "looks at other data" in other.text


@pytest.mark.slow  # the four methods' checks re-attribute the image once per layer
def test_trust_runs_on_request_shows_progress_and_the_checks_table(served, run):
    _, client, name, _ = served
    assert "Not run yet" in part(client, "trust", name, image=7)
    first = client.get("/part/trust", params={"run": name, "image": 7, "start": 1})
    assert first.status_code == 200 and 'class="progress"' in first.text
    done = poll(client, f"/part/trust?run={name}&image=7&start=1")
    rows = table_rows(done.text, "trust")
    assert [r[0] for r in rows[1:]] == ["gradient", "interior", "integrated", "smoothgrad", "gradcam"]
    lead = client.get("/", params={"view": "trust", "run": name}).text
    assert "integrated gradients, SmoothGrad and Grad-CAM" in lead  # the text names every method of the table
    x = run.data.inputs(run.data.test, [7])
    reference = integrated_gradients(run.model, x, baseline=black(x, run.data.normalization), tolerance=0.01)
    column = rows[0].index("compl. err (worst)")
    if not bool(reference.ill_conditioned[0]):
        assert rows[3][column] == f"{float(reference.relative_completeness_error[0]):.3%}"
    assert len(re.findall(r'data-figure="trust-\d"', done.text)) == 3  # shapes10 has masks: localisation too


def test_figures_are_pngs_of_the_size_they_state(served):
    _, client, name, _ = served
    found = figure(part(client, "activations", name, layer="L6", image=1), "channel-grid")
    png = base64.b64decode(found["png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (str(width), str(height)) == (found["width"], found["height"])


def test_grad_cam_and_occlusion_are_choices_that_show_what_the_library_computes(served, run):
    from mindscope.attribution import grad_cam, occlusion

    _, client, name, _ = served
    x = run.data.inputs(run.data.test, [3])
    page = part(client, "attribution", name, method="gradcam", image=3)
    assert figure(page, "attribution")["method"] == "gradcam"
    reference = grad_cam(run.model, x)
    shown = numbers(page)
    assert shown["layer"] == reference.layer
    assert shown["explained class"].startswith(run.classes[int(reference.targets[0])])
    page = part(client, "attribution", name, method="occlusion", baseline="black", image=3)
    assert figure(page, "attribution")["method"] == "occlusion"
    start = black(x, run.data.normalization)
    expected = occlusion(run.model, x, window=(8, 8), stride=(4, 4), baseline=start)
    shown = numbers(page)
    assert shown["explained class"].startswith(run.classes[int(expected.targets[0])])
    assert shown["steps used"] == str(int(expected.steps[0]))
    assert 'value="gradcam"' in client.get("/", params={"run": name, "view": "attributions"}).text


def test_a_clicked_channel_offers_what_it_looks_for_as_feature_visualisation_computes_it(served, run):
    from mindscope.layers import resolve_layer
    from mindscope.serve.activation_views import LOOKS_STEPS
    from mindscope.visualisation import feature_visualisation

    _, client, name, _ = served
    large = part(client, "channel", name, layer="L3", channel=2, image=3)
    assert "/part/looks?layer=" in large and "what this channel looks for" in large
    page = part(client, "looks", name, layer="L3", channel=2)
    assert figure(page, "looks")["channel"] == "2"
    layer = resolve_layer(run.model, "L3", output=True)
    reference = feature_visualisation(
        run.model, layer, [2], steps=LOOKS_STEPS, size=(32, 32), seed=0, normalise=run.data.normalization.apply
    )
    shown = re.search(r'data-number="reached">([^<]+)<', page).group(1)
    assert shown == f"{float(reference.activations[0]):.4g}"
