"""Load benchmark of `mindscope serve`: the dashboard under 50 concurrent clients, and its single-request costs.

Run:  python benchmarks/bench_serve.py [--run RUN_DIR] [--clients 50] [--requests 20] [--workers 2]

Starts `mindscope serve RUN_DIR --port 0` as its own process on 127.0.0.1 (as a user would),
reads the printed address, and stops it with Ctrl-C (SIGINT) at the end. Without --run it
uses mindscope-demo/run if present, else trains a width-32 run (2 epochs on 2,000 built-in
images) into a temporary folder.

1. One client, nothing else running:
   - an uncached channel grid (layer 3 of a test image never asked for before), 5 images;
   - integrated gradients at tolerance 0.01 for 5 images (wall time of the request, and the
     steps it took, as the page shows them);
   - the alpha slider through 10 positions at once in one slot: what was computed, what was
     dropped, and the pool's peak queue for that slot (from /stats: counted, not timed).
2. `--clients` concurrent clients, each sending `--requests` requests, one after another:
   four in five are cached views (pages and figures asked for once before the load), one in
   five an uncached computation (a channel grid or a gradient map of an image no one asked for).
   Prints p50 / p95 / max latency of each kind and the error count (any status but 200 and
   the 204 of a superseded request, or a failed connection).

Targets (issue 14, 2 cores, width-32 run): 0 errors; cached views p95 <= 100 ms; an uncached
channel grid <= 500 ms; one image's IG at tolerance 0.01 <= 3 s; the slider never queues more
than one computation. Latencies on a shared machine depend on what else runs: say so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def ensure_run(given: str | None) -> Path:
    if given:
        return Path(given)
    demo = Path("mindscope-demo/run")
    if demo.is_dir():
        return demo
    out = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "w32"
    print(f"training a width-32 run in {out} (2 epochs, 2,000 images)...", flush=True)
    command = [sys.executable, "-m", "mindscope", "train", "--width", "32", "--epochs", "2", "--train-limit",
               "2000", "--test-limit", "500", "--batch-size", "32", "--out", str(out)]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=_env())
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start_server(run: Path, workers: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "mindscope", "serve", str(run), "--port", "0", "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    for _ in range(20):
        line = process.stdout.readline()
        if line.startswith("mindscope dashboard: "):
            return process, line.split(": ", 1)[1].strip()
        if not line:
            break
    process.kill()
    raise RuntimeError(f"the server did not start: {process.stderr.read()}")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    a = np.asarray(values) * 1000
    return (
        f"p50 {np.percentile(a, 50):7.1f} ms  p95 {np.percentile(a, 95):7.1f} ms  max {a.max():7.1f} ms  (n={len(a)})"
    )


class Connection:
    """One keep-alive HTTP/1.1 connection, parsed by hand: the load generator must cost far less than the server.

    (httpx parses in pure Python and, on 2 cores, would measure itself more than the dashboard.)
    """

    def __init__(self, host: str, port: int, cookie: str) -> None:
        self.host, self.port, self.cookie = host, port, cookie
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, url: str) -> tuple[int, bytes]:
        """GET `url`; a connection the server closed while idle (keep-alive ran out) is opened again once."""
        fresh = self.writer is None
        if fresh:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            return await self._exchange(url)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            self.writer = None
            if fresh:
                raise
            return await self.get(url)

    async def _exchange(self, url: str) -> tuple[int, bytes]:
        head = f"GET {url} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nCookie: {self.cookie}\r\n\r\n"
        self.writer.write(head.encode())
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next((int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"), 0)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def timed(connection: Connection, url: str) -> tuple[float, int | None, bytes]:
    start = time.perf_counter()
    try:
        status, body = await connection.get(url)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        connection.writer = None  # a new connection for the next request
        return time.perf_counter() - start, None, b""
    return time.perf_counter() - start, status, body


async def stats(connection: Connection) -> dict:
    status, body = await connection.get("/stats")
    assert status == 200, body
    return json.loads(body)


async def single(connection: Connection, run: str, test_size: int) -> None:
    print("\n1. one client, nothing else asked for")
    await timed(connection, f"/?view=activations&run={run}")  # open the run and list its layers first
    grids, igs = [], []
    for image in range(test_size - 5, test_size):  # images no one looked at yet
        seconds, status, _ = await timed(connection, f"/part/activations?run={run}&image={image}&layer=L3")
        assert status == 200, status
        grids.append(seconds)
    print(f"   uncached channel grid (L3, every channel): {percentiles(grids)}")
    for image in range(test_size - 10, test_size - 5):
        url = f"/part/attribution?run={run}&image={image}&method=integrated&tolerance=0.01"
        seconds, status, body = await timed(connection, url)
        assert status == 200, status
        steps = re.search(rb"<th>steps used</th><td>(\d+)</td>", body).group(1).decode()
        igs.append((seconds, int(steps)))
    print("   integrated gradients, tolerance 0.01:      " + ", ".join(f"{t:.2f} s ({n} steps)" for t, n in igs))
    before = await stats(connection)
    urls = [f"/part/alpha?run={run}&image={test_size - 11}&method=interior&k={k}&slot=bench:alpha" for k in range(10)]
    connections = [Connection(connection.host, connection.port, connection.cookie) for _ in urls]
    answers = await asyncio.gather(*(timed(c, u) for c, u in zip(connections, urls)))
    for c in connections:
        c.close()
    after = await stats(connection)
    codes = [status if status is not None else "failed" for _, status, _ in answers]
    computed = after["by_kind"].get("interior", 0) - before["by_kind"].get("interior", 0)
    print(f"   alpha slider, 10 positions at once:        answers {codes}")
    dropped, peak = after["superseded"] - before["superseded"], after["peak_queued_in_slot"]
    print(f"     computed {computed} (the path once, then one frame per 200), dropped {dropped}, "
          f"peak queued in one slot {peak}")  # fmt: skip


async def load(connection: Connection, run: str, test_size: int, args: argparse.Namespace) -> None:
    cached = [
        f"/?view=activations&run={run}&image=0",
        f"/?view=attributions&run={run}&image=0",
        f"/part/training?run={run}",
        f"/part/activations?run={run}&image=0&layer=L3",
        f"/part/activations?run={run}&image=1&layer=L6",
        f"/part/attribution?run={run}&image=0&method=gradient",
        f"/part/weights?run={run}&tensor=features.0.weight&wepoch=1",
    ]
    for url in cached:  # compute each once, before the load
        _, status, _ = await timed(connection, url)
        assert status == 200, (url, status)
    fresh = iter(range(2, test_size - 11))  # images that no one has asked about

    def uncached(rng: random.Random) -> str:
        image = next(fresh, None)
        if image is None:
            return rng.choice(cached)
        if rng.random() < 0.5:
            return f"/part/activations?run={run}&image={image}&layer=L3"
        return f"/part/attribution?run={run}&image={image}&method=gradient"

    latencies: dict[str, list[float]] = {"cached": [], "uncached": []}
    errors: list[str] = []

    async def one_client(number: int) -> None:
        rng = random.Random(args.seed * 1000 + number)
        mine = Connection(connection.host, connection.port, connection.cookie)
        try:
            for _ in range(args.requests):
                if args.think > 0:  # a user reads the page before the next click
                    await asyncio.sleep(rng.uniform(0, 2 * args.think))
                kind = "uncached" if rng.random() < args.uncached else "cached"
                url = uncached(rng) if kind == "uncached" else rng.choice(cached)
                seconds, status, _ = await timed(mine, url)
                if status not in (200, 204):
                    errors.append(f"{url}: {'no answer' if status is None else status}")
                latencies[kind].append(seconds)
        finally:
            mine.close()

    before = await stats(connection)
    start = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(args.clients)))
    wall = time.perf_counter() - start
    after = await stats(connection)
    total = sum(len(v) for v in latencies.values())
    think = f"{args.think:g} s mean think time" if args.think > 0 else "back to back"
    print(f"\n2. {args.clients} concurrent clients x {args.requests} requests ({think}, "
          f"{args.uncached:.0%} uncached) = {total} in {wall:.1f} s ({total / wall:.0f}/s)")  # fmt: skip
    for kind, values in latencies.items():
        print(f"   {kind:9s} {percentiles(values)}")
    print(f"   errors: {len(errors)}" + (f"  first: {errors[:3]}" if errors else ""))
    print(f"   pool: {after['workers']} workers, computed {after['computed'] - before['computed']}, cache hits "
          f"{after['cache_hits'] - before['cache_hits']}, shared in flight {after['shared'] - before['shared']}, "
          f"peak pending {after['peak_pending']}")  # fmt: skip


async def main_async(args: argparse.Namespace, url: str, run_name: str, test_size: int) -> None:
    address, token = url.split("/?token=")
    host, port = address.removeprefix("http://").rsplit(":", 1)
    login = Connection(host, int(port), "")
    status, _ = await login.get(f"/?token={token}")
    assert status == 303, status
    connection = Connection(host, int(port), f"mindscope-token-{port}={token}")
    try:
        if not args.skip_single:
            await single(connection, run_name, test_size)
        await load(connection, run_name, test_size, args)
    finally:
        login.close()
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a run directory (default: mindscope-demo/run, or train one)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--think", type=float, default=0.0, help="mean seconds between a client's requests")
    parser.add_argument("--uncached", type=float, default=0.2, help="fraction of requests that compute")
    parser.add_argument("--skip-single", action="store_true", help="only the load phase")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run = ensure_run(args.run)
    from mindscope.run import load_run

    loaded = load_run(run)
    test_size, width = len(loaded.data.test), loaded.config["model"]["width"]
    load_avg = os.getloadavg()
    print(f"run {run} (width {width}, {test_size} test images); {os.cpu_count()} CPUs, "
          f"load average before {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}")  # fmt: skip
    process, url = start_server(run, args.workers)
    try:
        asyncio.run(main_async(args, url, run.resolve().name, test_size))
        server_cpu = cpu_seconds(process.pid)
    finally:
        stop_server(process)
    print(f"server stopped (exit status {process.returncode}), it used {server_cpu:.1f} s of CPU; this client "
          f"{time.process_time():.1f} s; load average after {os.getloadavg()[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
