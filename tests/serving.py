"""Helpers for the dashboard's tests: a served folder of runs, and reading figures and numbers out of its HTML."""

from __future__ import annotations

import html
import json
import re
import shutil
import time
from pathlib import Path

TOKEN = "test-token-0123456789"
SPOT = re.compile(r'<span class="spot"[^>]*?style="left:([\d.-]+)%;top:([\d.-]+)%;width:([\d.-]+)%;height:([\d.-]+)%"'
                  r' data-label="([^"]*)"(?: data-channel="(\d+)")?')  # fmt: skip
MARKER = re.compile(r'<span class="marker" style="left:([\d.-]+)%;top:([\d.-]+)%;height:([\d.-]+)%"')


def make_folder(tiny_run: Path, root: Path) -> Path:
    """ROOT/tiny (the run), ROOT/twin (a copy: same data, same weights), ROOT/other (fewer test images)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("tiny", "twin", "other"):
        shutil.copytree(tiny_run, root / name)
    config = json.loads((root / "other" / "config.json").read_text())
    config["data"]["test_limit"] = 32
    (root / "other" / "config.json").write_text(json.dumps(config))
    return root


def served_apps(monkeypatch) -> list:
    """Make `mindscope serve` return instead of serving until Ctrl-C; the list receives the app it built."""
    import mindscope.serve

    served = []

    def serve_forever(app, sock):  # keep the app, free the port
        served.append(app)
        sock.close()

    monkeypatch.setattr(mindscope.serve, "serve_forever", serve_forever)
    return served


def login(client) -> None:
    """Trade the token for its cookie, as a browser does with the printed address."""
    response = client.get(f"/?token={TOKEN}&view=runs", follow_redirects=False)
    assert response.status_code == 303, response.text


def figure(page: str, kind: str) -> dict[str, str]:
    """The data-* attributes of the figure of `kind` in a page or part (AssertionError if absent)."""
    match = re.search(rf'<div class="pic" data-figure="{re.escape(kind)}"([^>]*)>', page)
    assert match, f"no {kind} figure in: {page[:300]}"
    attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', match.group(1)))
    start = match.end()
    img = re.search(r'<img src="data:image/png;base64,([^"]+)" width="(\d+)" height="(\d+)"', page[start:])
    attrs.update(png=img.group(1), width=img.group(2), height=img.group(3))
    return attrs


def spots(page: str) -> list[dict]:
    return [
        {
            "left": float(m[0]),
            "top": float(m[1]),
            "width": float(m[2]),
            "height": float(m[3]),
            "label": html.unescape(m[4]),
            "channel": None if m[5] == "" else int(m[5]),
        }
        for m in SPOT.findall(page)
    ]


def markers(page: str) -> list[tuple[float, float, float]]:
    return [tuple(float(v) for v in m) for m in MARKER.findall(page)]


def numbers(page: str) -> dict[str, str]:
    """The label -> value table shown beside a figure."""
    table = re.search(r'<table class="numbers">(.*?)</table>', page, re.S)
    assert table, "no numbers table"
    return {html.unescape(k): html.unescape(v) for k, v in re.findall(r"<th>(.*?)</th><td>(.*?)</td>", table.group(1))}


def table_rows(page: str, css: str) -> list[list[str]]:
    table = re.search(rf'<table class="{css}">(.*?)</table>', page, re.S)
    assert table, f"no {css} table"
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", row, re.S)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table.group(1), re.S)
    ]


def text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]*"', "", page)))


def poll(client, url: str, *, tries: int = 900, pause: float = 0.2):
    """GET `url` until it is no longer a progress part (bounded); return the last response."""
    for _ in range(tries):
        response = client.get(url)
        if response.status_code != 200 or 'class="progress"' not in response.text:
            return response
        time.sleep(pause)
    raise AssertionError(f"{url} still in progress after {tries} polls")
