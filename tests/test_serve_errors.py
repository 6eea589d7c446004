"""Bad input to the dashboard: one line and a 4xx, never a 500; uploads limited; an outside model; the command."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from mindscope.cli import main  # noqa: E402
from mindscope.serve import create_app  # noqa: E402
from mindscope.subject import Subject, open_subject  # noqa: E402
from serving import TOKEN, figure, login, make_folder, served_apps, table_rows, text  # noqa: E402


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    root = make_folder(tiny_run, tmp_path_factory.mktemp("errors"))
    app = create_app([root], token=TOKEN, max_upload_bytes=1 << 20)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        login(client)
        yield client, f"{root.name}/tiny"


BAD = [
    ("activations", {"layer": "features.99"}, 400, r"^no layer 'features.99'; layers are: features, features.0"),
    ("activations", {"layer": "L12"}, 400, r"^no layer L12; layer numbers run from 1 to 9"),
    ("activations", {"layer": "features.20"}, 400, r"^layer 'features.20' has no channel maps"),
    ("activations", {"image": 64}, 400, r"^image '64' is out of range or unknown; give a test-image index \(0..63\)"),
    ("activations", {"image": -1}, 400, r"^image '-1' is out of range"),
    ("activations", {"image": "u0123456789abcdef"}, 400, r"^no uploaded image 'u0123456789abcdef'"),
    ("activations", {"epoch": 7}, 400, r"has no snapshot for epoch 7; epochs: 0, 1$"),
    ("activations", {"epoch": "last"}, 400, r"^epoch must be an integer, got 'last'$"),
    ("activations", {"layer": "x" * 300}, 400, r"^layer is not a plausible value \(300 characters\)"),
    ("channel", {"layer": "L3", "channel": 8}, 400, r"^channel must lie in 0..7, got 8$"),
    ("channel", {"layer": "L3"}, 400, r"^channel is missing; give an integer$"),
    ("attribution", {"tolerance": -0.01}, 400, r"^tolerance must lie in \(0, 1\), got -0.01; such as 0.01$"),
    ("attribution", {"tolerance": "nan"}, 400, r"^tolerance must lie in \(0, 1\), got nan"),
    ("attribution", {"method": "lime"}, 400, r"^unknown method 'lime'; choose one of: gradient, interior, integrated"),
    ("attribution", {"target": 10}, 400, r"^target class 10 is out of range; use 0..9 or 'pred'$"),
    ("attribution", {"baseline": "white"}, 400, r"^unknown baseline 'white'; choose one of: black, mean"),
    ("alpha", {"k": 14}, 400, r"^k must lie in 0..13, got 14$"),
    ("weights", {"tensor": "features.0.kernel"}, 400, r"^no tensor 'features.0.kernel' in run"),
    ("weights", {"wepoch": 3}, 400, r"has no snapshot for epoch 3; snapshots: 0, 1$"),
    ("images", {"low": 2}, 400, r"^low must lie in \[0, 1\], got 2$"),
    ("images", {"outcome": "maybe"}, 400, r"^unknown outcome 'maybe'; choose one of: all, right, wrong$"),
    ("images", {"true": 10}, 400, r"^true must lie in -1..9, got 10$"),
    ("trust", {"more": 9}, 400, r"^more must lie in 0..7, got 9$"),
    ("compare", {}, 400, r"^choose a second run to compare with$"),
    ("compare", {"other": "nowhere/run"}, 404, r"^no run 'nowhere/run' here"),
    ("training", {"run": "../../etc"}, 404, r"^no run '../../etc' here"),
]


@pytest.mark.parametrize("name, params, status, message", BAD, ids=[f"{b[0]}-{'-'.join(b[1])}" for b in BAD])
def test_a_bad_parameter_gets_one_line_and_a_4xx(served, name, params, status, message):
    client, run = served
    response = client.get(f"/part/{name}", params={"run": run, **params})
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.endswith("\n") and response.text.count("\n") == 1, response.text
    assert re.search(message, response.text.strip()), response.text


def test_an_error_for_the_page_is_escaped_html_that_htmx_shows_in_place(served):
    client, run = served
    response = client.get("/part/activations", params={"run": run, "layer": "<img src=x onerror=alert(1)>"},
                          headers={"HX-Request": "true"})  # fmt: skip
    assert response.status_code == 400
    assert response.text.startswith('<p class="error">no layer &#x27;&lt;img src=x onerror=alert(1)&gt;&#x27;')
    page = client.get("/", params={"view": "attributions", "run": run}).text
    config = re.search(r'<meta name="htmx-config" content=\'([^\']+)\'', page).group(1)
    assert "&#34;code&#34;: &#34;[45]..&#34;" in config and "&#34;target&#34;: &#34;#error&#34;" in config


def test_no_page_needs_a_run_before_one_is_picked(served):
    client, run = served
    page = client.get("/", params={"view": "activations"})
    assert page.status_code == 200 and "pick a run first" in page.text
    assert client.get("/", params={"view": "nonsense", "run": run}).status_code == 400


def png(size: tuple[int, int], mode: str = "RGB", colour: object = (200, 30, 30), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's first line)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_an_uploaded_image_is_resized_to_the_model_and_looked_at(served):
    client, run = served
    for body in (png((50, 40)), png((20, 20), "L", 128), png((64, 64), fmt="JPEG")):
        response = client.post("/upload", params={"run": run}, content=body)
        assert response.status_code == 200, response.text
        key = response.json()["image"]
        assert re.fullmatch(r"u[0-9a-f]{16}", key) and f"image={key}" in response.json()["page"]
    page = client.get("/part/activations", params={"run": run, "image": key, "layer": "L3"})
    assert page.status_code == 200 and figure(page.text, "channel-grid")
    header = client.get("/", params={"view": "images", "run": run, "image": key}).text
    assert f"uploaded image {key[:7]}" in text(header)
    thumb = re.search(r'<img class="pixel" src="data:image/png;base64,([^"]+)" alt="the chosen image">', header)
    import base64

    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(thumb.group(1)))))
    assert shown.shape == (64, 64, 3)  # the model's 32x32 input, drawn twice as large


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"\0" * ((1 << 20) + 1), 413, r"^the upload is 1,048,577 bytes, more than the 1,048,576 allowed$"),
        (b"", 400, r"^the upload is empty"),
        (b"GIF89a not really", 400, r"^the upload is not a PNG or JPEG image Pillow can read"),
        (png((8, 8), fmt="GIF"), 400, r"^the upload is not a PNG or JPEG image"),
        (bomb(40000, 40000), 400, r"^the uploaded image was refused as a possible decompression bomb"),
        (bomb(5000, 5000), 400, r"^the uploaded image is 5000x5000 pixels, more than the 16,777,216 allowed"),
        (png((64, 64))[:60], 400, r"^the uploaded image is truncated or corrupt"),
    ],
    ids=["oversized", "empty", "not-an-image", "gif", "bomb", "too-many-pixels", "truncated"],
)
def test_a_bad_upload_is_refused_with_one_line(served, body, status, message):
    client, run = served
    response = client.post("/upload", params={"run": run}, content=body)
    assert response.status_code == status
    assert re.search(message, response.text.strip()) and response.text.count("\n") == 1, response.text


def test_an_outside_model_has_no_training_history(tiny_run):
    opened = open_subject(tiny_run)  # its model and data, but as if it came without a run
    subject = Subject(
        "torch:model.pt2",
        opened.model,
        open_data=lambda: opened.data,
        given_normalization=opened.normalization,
        given_classes=opened.classes,
        given_image_shape=opened.image_shape,
    )
    app = create_app(subject=subject, token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        login(client)
        for view in ("training", "weights"):
            assert "no training history: an outside model" in client.get("/", params={"view": view}).text
        response = client.get("/part/training")
        assert response.status_code == 400 and response.text == "no training history: an outside model\n"
        assert figure(client.get("/part/activations", params={"layer": "L6"}).text, "channel-grid")
        assert "one model only" in client.get("/", params={"view": "compare"}).text
        assert client.get("/part/training", params={"run": "runs/tiny"}).status_code == 404


def test_a_run_given_as_a_model_spec_keeps_its_history(tiny_run):
    app = create_app(subject=open_subject(model=f"run:{tiny_run}"), token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        login(client)
        assert figure(client.get("/part/training").text, "training-curves")
        assert figure(client.get("/part/attribution", params={"method": "gradient", "image": 1}).text, "attribution")


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give a run directory, a scan folder or a folder of runs, or --model SPEC --data SPEC"),
        (["{run}", "--model", "torch:m.pt2"], "give run folders or --model, not both"),
        (["{run}", "--data", "builtin"], "--data and --epoch go with --model"),
        (["{run}", "--port", "70000"], "--port must lie in 0..65535, got 70000"),
        (["{run}", "--workers", "0"], "--workers must lie in 1..64, got 0"),
        (["{run}/nowhere"], "no folder"),
        (["{run}/config.json"], "config.json' is a file, not a folder; give a run directory, a scan folder"),
    ],
)
def test_the_command_refuses_bad_options_with_one_line(tiny_run, capsys, args, message):
    assert main(["serve", *(a.format(run=tiny_run) for a in args)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mindscope: error: ") and message in err[0]


def test_an_empty_folder_is_served_and_a_run_trained_into_it_later_shows_up(tiny_run, tmp_path, capsys, monkeypatch):
    import shutil

    import mindscope.serve.catalog

    served = served_apps(monkeypatch)
    empty = tmp_path / "runs"
    empty.mkdir()
    assert main(["serve", str(empty), "--port", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    said = [line for line in out if line.startswith("no run or scan in ")]
    assert len(said) == 1 and "runs and scans appear as they are written" in said[0], out
    (app,) = served
    monkeypatch.setattr(mindscope.serve.catalog, "NAMES_TTL", 0.0)  # the listing is read again at once
    token = re.search(r"\?token=(\S+)", next(line for line in out if "dashboard: " in line)).group(1)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/", params={"token": token}, follow_redirects=False).status_code == 303
        assert "No runs or scans under" in text(client.get("/").text)
        shutil.copytree(tiny_run, empty / "later")  # as `mindscope train --out runs/later` would
        page = client.get("/", params={"view": "runs"}).text
    assert table_rows(page, "runs")[1][0] == "runs/later"


def test_serve_takes_the_model_flags_for_an_outside_model(tmp_path, capsys, monkeypatch):
    import torch
    from torch import nn

    module = tmp_path / "net.py"
    module.write_text(
        "from torch import nn\n\ndef net():\n    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), "
        "nn.Linear(2 * 4 * 4, 3))\n"
    )
    saved = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    torch.save(saved.state_dict(), tmp_path / "w.pt")
    served = served_apps(monkeypatch)
    args = ["serve", "--model", f"python:{module}:net", "--weights", str(tmp_path / "w.pt"), "--input-size", "1x6x6"]
    assert main([*args, "--pixel-range", "0,255", "--classes", "a,b,c", "--port", "0"]) == 0
    out = capsys.readouterr().out
    assert "input: NCHW 1x6x6, pixels scaled to 0..255" in out
    catalog = served[0].state.dashboard.catalog
    subject = catalog.entry(catalog.names()[0]).subject
    assert subject.classes == ("a", "b", "c")
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(subject.model.state_dict()[name], value)


def test_serve_refuses_model_flags_with_a_run_directory(tiny_run, capsys):
    assert main(["serve", str(tiny_run), "--classes", "a,b", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mindscope: error: --classes describes a model given with --model; a run directory records its own"]
