"""`mindscope scan`: attributions and activation statistics over a whole data set, resumable.

Parses the options into a `ScanSource`, `ScanOptions` and an engine, calls
`mindscope.scan.scan` (or `merge_scan` for --merge), shows progress with the time left, and
prints the summary: how many images converged, the worst ones, the most confidently wrong.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

from mindscope._util import count
from mindscope.cli.source import model_source, source_card
from mindscope.scan import LocalEngine, RayEngine, ScanOptions, ScanSource, merge_scan, parse_shard, scan
from mindscope.scan.compute import ShardReport
from mindscope.scan.options import BASELINES, SCORES, TARGETS
from mindscope.scan.plan import Plan
from mindscope.training import resolve_device

LINE_EVERY_S = 10.0  # without a terminal: one progress line at most this often


def _layers(spec: str) -> tuple[str, ...] | None:
    text = spec.strip().lower()
    if text == "all":
        return None
    if text == "none":
        return ()
    return tuple(s.strip() for s in spec.split(",") if s.strip())


class _Progress:
    """A bar with the time left on a terminal; otherwise a line every LINE_EVERY_S seconds."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.total = self.done = 0
        self.began = self.last = time.perf_counter()

    def start(self, plan: Plan, images: int) -> None:
        self.total, self.began = images, time.perf_counter()
        click.echo(
            f"scan: {count(plan.images, 'image')} in {count(len(plan.shards), 'shard')}; "
            f"{count(images, 'image')} to compute",
            err=True,
        )
        if sys.stderr.isatty():
            self.bar = tqdm(total=images, desc="scan", unit="img", leave=False, file=sys.stderr)

    def shard(self, report: ShardReport) -> None:
        self.done += report.images
        if self.bar is not None:
            self.bar.update(report.images)
            return
        now = time.perf_counter()
        if now - self.last >= LINE_EVERY_S or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.began, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            click.echo(f"scan: {self.done}/{self.total} images, {rate:.1f} images/s, about {left:.0f} s left", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _describe(summary: dict) -> list[str]:
    lines = [f"accuracy {summary['accuracy']:.1%} on {summary['images']} images"]
    for method, entry in summary["methods"].items():
        line = f"{method}: steps mean {entry['steps_mean']:.1f}, max {entry['steps_max']}"
        ill = entry.get("ill_conditioned")
        if "converged" in entry:
            well = entry.get("well_conditioned", entry["images"])
            line += f"; {entry['converged']} of {well} converged to {entry['tolerance']:.2%}"
            if ill:
                line += f"; {ill} ill-conditioned (nothing to explain), not refined to the tolerance by design"
        if "completeness_error_median" in entry:
            line += (
                f"; completeness error median {entry['completeness_error_median']:.3%}, "
                f"max {entry['completeness_error_max']:.3%}"
            )
            if ill is not None:
                line += f" ({ill} ill-conditioned {'image' if ill == 1 else 'images'} set aside)"
        lines.append(line)
        worst = entry.get("worst", [])[:3]
        if worst:
            shown = ", ".join(
                f"#{w['index']} (completeness {w['relative_completeness_error']:.2%}"
                + (f", map {w['map_error']:.2%}" if w["map_error"] is not None else "")
                + f", {w['steps']} steps)"
                for w in worst
            )
            lines.append(f"  least accurate maps (ill-conditioned images set aside): {shown}")
    wrong = summary["most_confident_wrong"][:3]
    if wrong:
        shown = ", ".join(f"#{w['index']} {w['label_name']} -> {w['prediction_name']} (p={w['probability']:.3f})"
                          for w in wrong)  # fmt: skip
        lines.append(f"most confident wrong: {shown}")
    dead = {layer: channels for layer, channels in summary["dead_channels"].items() if channels}
    if summary["dead_channels"]:
        lines.append("dead channels: " + ("; ".join(f"{k}: {v}" for k, v in dead.items()) or "none"))
    return lines


@click.command("scan")
@model_source
@click.option("--out", type=click.Path(path_type=Path), required=True, help="scan folder (created, or resumed)")
@click.option(
    "--methods", default="integrated", show_default=True, help="comma-separated: gradient,integrated,smoothgrad"
)
@click.option("--tolerance", type=float, default=None, help="integrated: refine to this error (default 0.01)")
@click.option("--steps", type=int, default=None, help="integrated: a fixed Gauss-Legendre rule instead of a tolerance")
@click.option(
    "--max-steps", type=int, default=2048, show_default=True, help="integrated: per-image cap with a tolerance"
)
@click.option("--baseline", type=click.Choice(BASELINES), default="black", show_default=True)
@click.option("--score", type=click.Choice(SCORES), default="probability", show_default=True)
@click.option("--target", type=click.Choice(TARGETS), default="predicted", show_default=True, help="class attributed")
@click.option("--layers", "layer_spec", default="all", show_default=True,
              help="layers for activation statistics: all (every numbered layer), none, or e.g. 3,6,9")  # fmt: skip
@click.option("--limit", type=int, default=None, help="scan only the first N test images")
@click.option("--shard", "shard_spec", default=None, help="I/N: compute only shards I, I+N, ... (no coordination)")
@click.option("--merge", is_flag=True, help="only join the shards already in --out into its results")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="threads (local) or actors (ray)")
@click.option("--shard-size", type=int, default=256, show_default=True, help="images per shard file")
@click.option("--batch-size", type=int, default=32, show_default=True, help="images per call of the looks")
@click.option("--float16", is_flag=True, help="store maps as float16 (half the size, ~3 significant digits)")
@click.option("--epoch", type=int, default=None, help="snapshot of a run to load (default: the last)")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda")
def scan_command(out, methods, tolerance, steps, max_steps, baseline, score, target, layer_spec, limit, shard_spec,
                 merge, engine, workers, shard_size, batch_size, float16, epoch, device, **source) -> None:  # fmt: skip
    """Scan a data set with attributions and activation statistics into OUT, resuming what is there."""
    run_dir, model_spec = source["run_dir"], source["model_spec"]
    if merge:
        if any(value is not None for value in source.values()) or shard_spec is not None:
            raise ValueError("--merge joins the shards already in --out; give only --out")
        progress = merge_scan(out)
    else:
        if steps is not None and tolerance is not None:
            raise ValueError("give --steps N or --tolerance E, not both: a tolerance chooses the steps itself")
        if run_dir is not None and model_spec is not None:
            raise ValueError(f"give a run directory or --model, not both (got {run_dir} and {model_spec!r})")
        if run_dir is None and model_spec is None:
            raise ValueError("give a run directory, or --model SPEC (run:DIR, torch:FILE, ...), or --merge")
        shard = parse_shard(shard_spec) if shard_spec is not None else None
        options = ScanOptions(
            methods=tuple(methods.split(",")),
            tolerance=None if steps is not None else (0.01 if tolerance is None else tolerance),
            steps=steps or 32,
            max_steps=max_steps,
            baseline=baseline,
            score=score,
            target=target,
            layers=_layers(layer_spec),
            float16=float16,
            shard_size=shard_size,
            batch_size=batch_size,
        )
        device = str(resolve_device(device))
        card = source_card(source)  # the file, or the flags' fields: every worker opens the model with these
        where = ScanSource(model_spec or f"run:{run_dir}", source["data_spec"], epoch, source["weights"], card, device)
        runner = LocalEngine(workers) if engine == "local" else RayEngine(workers)
        bar = _Progress()
        try:
            progress = scan(where, out, options=options, limit=limit, shard=shard, engine=runner,
                            on_start=bar.start, on_shard=bar.shard)  # fmt: skip
        finally:
            bar.close()
        click.echo(f"computed {count(progress.computed, 'shard')}, {progress.skipped} already done")
    if progress.summary is None:
        missing = len(progress.plan.missing())
        click.echo(f"{missing} of {len(progress.plan.shards)} shards still missing; when all are done, run "
                   f"'mindscope scan --merge --out {out}'")  # fmt: skip
        return
    for line in _describe(progress.summary):
        click.echo(line)
    click.echo(f"wrote {out}")


commands = [scan_command]
