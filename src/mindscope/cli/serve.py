"""`mindscope serve`: the live dashboard on this machine, until Ctrl-C.

Starlette and uvicorn come with the `serve` extra (`pip install "mindscope[serve]"`); they
are imported only when the command runs, so the rest of the CLI works without them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mindscope.cli.source import model_flags, source_card

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SWITCH_INTERVAL = 0.001  # seconds a thread holds the GIL before another may take it (Python's default: 0.005)


def _check(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in {low}..{high}, got {value}")


@click.command("serve")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "model_spec", default=None, help="An outside model (torch:, onnx:, keras:, python:, run:DIR).")
@click.option("--data", "data_spec", default=None, help="Images for --model, e.g. folder:PATH (class folders).")
@click.option("--epoch", type=int, default=None, help="With --model run:DIR: the snapshot to open (default: the last).")
@click.option("--port", type=int, default=8765, show_default=True, help="TCP port; 0 picks a free one.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; others are warned about.")
@click.option("--allow-host", "allowed", multiple=True, help="Another Host name the browser may use (repeatable).")
@click.option("--workers", type=int, default=2, show_default=True, help="Computations at once.")
@click.option("--threads", type=int, default=None, help="torch threads (default: CPU cores / workers).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda")
@model_flags
def serve(paths, model_spec, data_spec, epoch, port, host, allowed, workers, threads, device, **flags) -> None:
    """Serve a dashboard of RUN_DIR, SCAN_DIR or a FOLDER_OF_RUNS and scans (or --model SPEC --data SPEC)."""
    source = {**flags, "run_dir": None, "model_spec": model_spec, "data_spec": data_spec}
    given = [f"--{'classes' if k == 'class_names' else k.replace('_', '-')}" for k, v in flags.items() if v is not None]
    if given and model_spec is None:
        raise ValueError(f"{given[0]} describes a model given with --model; a run directory records its own")
    if model_spec is not None and paths:
        raise ValueError(f"give run folders or --model, not both (got {paths[0]} and {model_spec!r})")
    if model_spec is None and not paths:
        raise ValueError("give a run directory, a scan folder or a folder of runs, or --model SPEC --data SPEC")
    if model_spec is None and (data_spec is not None or epoch is not None):
        raise ValueError("--data and --epoch go with --model; a run directory brings its own data and epochs")
    _check("--port", port, 0, 65535)
    _check("--workers", workers, 1, 64)
    cores = os.cpu_count() or 1
    threads = threads if threads is not None else max(1, cores // workers)
    _check("--threads", threads, 1, 1024)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ValueError("the dashboard needs Starlette and uvicorn: pip install 'mindscope[serve]'") from None
    import torch

    from mindscope._util import count
    from mindscope.scan import is_scan, open_scan
    from mindscope.serve import address, bind, create_app, serve_forever
    from mindscope.serve.catalog import SEARCH_DEPTH
    from mindscope.subject import open_subject
    from mindscope.training import resolve_device

    device = resolve_device(device)
    torch.set_num_threads(threads)  # the pool's workers share the cores instead of each taking them all
    # The event loop answers cached views between the workers' Python (matplotlib holds the GIL):
    # at the default 5 ms each hand-over costs up to 5 ms; with 50 clients and both workers busy,
    # cached p95 measured 177 ms at 5 ms, 71 ms at 1 ms (benchmarks/bench_serve.py).
    sys.setswitchinterval(SWITCH_INTERVAL)
    subject = None
    if model_spec is not None:
        subject = open_subject(
            model=model_spec, data=data_spec, epoch=epoch, weights=flags["weights"], card=source_card(source)
        )
        subject.model.to(device)
        for line in subject.describe():
            click.echo(line)
    for path in paths:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(
                f"{str(path)!r} is a file, not a folder; give a run directory, a scan folder or a folder of runs"
            )
        if not path.is_dir():
            raise FileNotFoundError(f"no folder {str(path)!r}; give a run directory, a scan folder or a folder of runs")
        if is_scan(path) and (problem := open_scan(path).unfinished()) is not None:
            raise ValueError(problem)
    app = create_app(paths, subject=subject, host=host, allowed_hosts=allowed, workers=workers, device=str(device))
    catalog = app.state.dashboard.catalog
    runs, scans = catalog.names(), catalog.scan_names()
    sock = bind(host, port)
    port = sock.getsockname()[1]
    found = " and ".join(count(n, noun) for n, noun in ((len(runs), "run"), (len(scans), "scan")) if n)
    unfinished = sum(not catalog.scan(name).complete for name in scans)
    if unfinished:
        found += " (unfinished)" if unfinished == len(scans) else f" ({unfinished} unfinished)"
    if found:
        click.echo(f"serving {found} with {workers} workers x {threads} threads")
    else:  # the catalog lists the folders again as pages ask (every NAMES_TTL s): runs trained into them show up
        click.echo(
            f"no run or scan in {', '.join(map(str, paths))} yet (looked {SEARCH_DEPTH} folders down); runs and "
            f"scans appear as they are written ('mindscope train --out', 'mindscope scan --out' into it); "
            f"serving with {workers} workers x {threads} threads"
        )
    if host not in LOOPBACK:
        click.echo(
            f"warning: listening on {host}: anyone who can reach this machine on port {port} and learns the "
            "token can use the dashboard and read the runs it serves; the default --host 127.0.0.1 keeps it local",
            err=True,
        )
    click.echo(f"mindscope dashboard: {address(app, host, port)}")
    click.echo("press Ctrl-C to stop")
    try:
        serve_forever(app, sock)
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then passed Ctrl-C on
        pass
    click.echo("stopped")


commands: list[click.Command] = [serve]
