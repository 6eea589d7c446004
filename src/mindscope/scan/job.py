"""Run a scan: open the model, plan the shards, claim the folder, compute what is missing, merge.

Every check that can refuse the command (options, --shard, the engine, a folder that holds
another scan) runs before the first byte is written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mindscope._util import check_fits
from mindscope.models.card import CARD_KEYS
from mindscope.scan.compute import ShardReport
from mindscope.scan.engines import LocalEngine, RayEngine
from mindscope.scan.files import remove_leftovers
from mindscope.scan.merge import SUMMARY, merge
from mindscope.scan.options import ScanOptions, ScanSource, plain_card
from mindscope.scan.plan import SHARDS, Plan, claim, open_plan, resolve_scan_layers, weights_hash
from mindscope.scan.table import arrow

Engine = LocalEngine | RayEngine


@dataclass(frozen=True)
class ScanProgress:
    """What one call did: shards computed and skipped, and the summary once every shard is in."""

    plan: Plan
    computed: int
    skipped: int  # already done (by an earlier run, or another --shard process)
    summary: dict | None  # None while shards are missing


def plan_scan(source: ScanSource, out: Path | str, options: ScanOptions, *, limit: int | None = None):
    """Open the model and data of `source` and plan a scan of them into `out`; return (plan, subject)."""
    subject = source.open()
    test = subject.require_data("a scan").test
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit must be a positive number of images, got {limit!r}")
    images = len(test) if limit is None else min(limit, len(test))
    if images == 0:
        raise ValueError(f"the data {source.data or subject.source!r} holds no test images to scan")
    shape = tuple(test.images.shape[1:])
    if options.tolerance is not None and "integrated" in options.methods:  # every step's gradient is kept
        what = f"integrated gradients on {options.batch_size} images at a time with up to {options.max_steps} steps"
        needed = options.batch_size * options.max_steps * math.prod(shape) * 4  # float32 gradients
        check_fits(needed, what, "lower --batch-size or --max-steps")
    layers = resolve_scan_layers(subject.model, options.layers)
    card = None if subject.card is None else plain_card({k: getattr(subject.card, k) for k in CARD_KEYS})
    plan = Plan(Path(out), source, options, images, tuple(subject.classes or test.classes), shape, layers,  # type: ignore[arg-type]
                weights_hash(subject.model), card)  # fmt: skip
    return plan, subject


def scan(
    source: ScanSource,
    out: Path | str,
    *,
    options: ScanOptions | None = None,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    engine: Engine | None = None,
    on_shard: Callable[[ShardReport], None] | None = None,
    on_start: Callable[[Plan, int], None] | None = None,
) -> ScanProgress:
    """Scan the first `limit` test images of `source` into `out`, resuming whatever is there.

    With `shard=(i, n)` only shards i, i + n, ... are computed. When every shard of the scan is
    present (from this call or others), they are merged into the table, class maps, layer
    statistics and summary. `on_start(plan, images to compute)` and `on_shard(report)` report
    progress.
    """
    options = options or ScanOptions()
    engine = engine or LocalEngine()
    arrow()
    engine.check()
    if shard is not None:
        i, n = shard
        if not 0 <= i < n:
            raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    plan, subject = plan_scan(source, out, options, limit=limit)
    claim(plan)
    mine = plan.shards if shard is None else plan.shards[shard[0] :: shard[1]]
    remove_leftovers([plan.out / SHARDS], [p.name for s in mine for p in plan.shard_files(s)])  # killed writers'
    todo = [s for s in mine if not plan.is_done(s)]
    if on_start is not None:
        on_start(plan, sum(len(s) for s in todo))
    computed = 0
    for report in engine.run(plan, todo, subject):
        computed += 1
        if on_shard is not None:
            on_shard(report)
    summary = None
    if not plan.missing():
        done = (plan.out / SUMMARY).exists() and shard is not None and not computed
        summary = json.loads((plan.out / SUMMARY).read_text()) if done else merge(plan)
    return ScanProgress(plan, computed, len(mine) - len(todo), summary)


def merge_scan(out: Path | str) -> ScanProgress:
    """Join the shards of the scan in `out` (written by `--shard` runs) into its results."""
    arrow()
    plan = open_plan(Path(out))
    remove_leftovers([plan.out / SHARDS], [p.name for s in plan.shards for p in plan.shard_files(s)])
    return ScanProgress(plan, 0, len(plan.shards), merge(plan))
