"""The dashboard served for real: uvicorn in a thread on 127.0.0.1, port 0; concurrent clients; the command.

Counted, never timed: the pool's counters say how often each computation ran.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
from mindscope.serve import create_app, start  # noqa: E402
from mindscope.serve.attribution_views import ALPHAS  # noqa: E402
from serving import TOKEN, figure, make_folder  # noqa: E402


@pytest.fixture(scope="module")
def live(tiny_run, tmp_path_factory):
    root = make_folder(tiny_run, tmp_path_factory.mktemp("live"))
    app = create_app([root], token=TOKEN, workers=1)
    running = start(app, host="127.0.0.1", port=0)
    try:
        yield app, running, f"{root.name}/tiny"
    finally:
        running.stop()
    assert not running.thread.is_alive()


@contextlib.contextmanager
def client_for(running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{running.port}", timeout=120) as client:
        first = client.get(f"/?token={TOKEN}", follow_redirects=False)
        assert first.status_code == 303 and f"mindscope-token-{running.port}" in first.headers["set-cookie"]
        yield client


def test_it_binds_a_free_port_on_127_0_0_1_and_prints_the_token_in_its_address(live):
    _, running, _ = live
    assert running.port > 0 and running.url == f"http://127.0.0.1:{running.port}/?token={TOKEN}"
    assert httpx.get(f"http://127.0.0.1:{running.port}/").status_code == 403  # no cookie, no token


def test_identical_concurrent_requests_are_computed_once(live):
    app, running, name = live
    stats = app.state.dashboard.jobs.stats
    before = stats.by_kind.get("grid", 0)
    with client_for(running) as client, ThreadPoolExecutor(8) as pool:
        url = f"/part/activations?run={name}&layer=L6&image=9"
        responses = list(pool.map(lambda _: client.get(url), range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    assert len({r.text for r in responses}) == 1
    assert stats.by_kind["grid"] - before == 1


def test_moving_the_alpha_slider_through_ten_positions_queues_at_most_one_computation(live):
    """Ten positions at once, one slot: each newer request drops the older one that has not started."""
    app, running, name = live
    stats = app.state.dashboard.jobs.stats
    superseded, before = stats.superseded, stats.by_kind.get("interior", 0)
    with client_for(running) as client, ThreadPoolExecutor(10) as pool:

        def move(k: int) -> httpx.Response:
            params = {"run": name, "image": 11, "method": "interior", "k": k, "slot": "page1:alpha"}
            return client.get("/part/alpha", params=params)

        responses = list(pool.map(move, range(10)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 204} and codes.count(200) >= 1
    computed = stats.by_kind["interior"] - before  # the path's gradients once, then one frame per 200
    assert computed == 1 + codes.count(200)
    assert stats.superseded - superseded == codes.count(204)
    assert stats.peak_queued_in_slot <= 1
    for r, k in zip(responses, range(10)):
        if r.status_code == 200:
            assert figure(r.text, "interior-frame")["alpha"] == str(ALPHAS[k])


@pytest.mark.slow  # a fresh interpreter imports torch and the dashboard
def test_the_command_serves_until_ctrl_c_and_warns_off_localhost(tiny_run):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    command = [sys.executable, "-m", "mindscope", "serve", str(tiny_run), "--port", "0", "--host", "0.0.0.0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for _ in range(20):  # bounded: the address comes within a few lines
            line = process.stdout.readline()
            lines.append(line)
            if line.startswith("mindscope dashboard: ") or not line:
                break
        url = lines[-1].removeprefix("mindscope dashboard: ").strip()
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url, lines
        with httpx.Client(timeout=60) as client:
            page = client.get(url, follow_redirects=True)
            assert page.status_code == 200 and "<title>mindscope" in page.text
            assert client.get(url.split("?")[0], headers={"host": "attacker.example"}).status_code == 403
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "warning: listening on 0.0.0.0" in err and "stopped" in out
