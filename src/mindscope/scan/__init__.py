"""A look over a whole data set: attributions and activation statistics, sharded and resumable.

    SCAN/scan.json                     what is scanned, how, and by which weights (written first)
    SCAN/shards/000012.safetensors     shard 12: its maps (float32, or float16 with a scale per map),
                                       per-class sums and layer accumulators
    SCAN/shards/000012.parquet         shard 12: one row per image and method (written last)
    SCAN/images.parquet  classes.safetensors  layers.safetensors  summary.json   once every shard is in

Every file is written whole or not at all, a shard whose files exist is skipped, and a
killed run's temp files are removed by the next, so a scan killed at any moment and started
again ends with every image exactly once. `scan(..., shard=(i, n))` computes one slice of
the shards, for n processes or machines with no coordination; `merge_scan` joins them.
`LocalEngine` runs threads here; `RayEngine` runs the same per-shard work as a Ray Data
pipeline over actors (`pip install 'mindscope[distributed]'`).
"""

from mindscope.scan.compute import BatchResult, Scanner, ShardReport, scan_batch
from mindscope.scan.engines import LocalEngine, RayEngine
from mindscope.scan.job import ScanProgress, merge_scan, plan_scan, scan
from mindscope.scan.options import METHODS, ScanOptions, ScanSource
from mindscope.scan.plan import Plan, Shard, is_scan, parse_shard
from mindscope.scan.reader import ClassMaps, Scan, open_scan
from mindscope.scan.statistics import Moments

__all__ = [
    "METHODS",
    "BatchResult",
    "ClassMaps",
    "LocalEngine",
    "Moments",
    "Plan",
    "RayEngine",
    "Scan",
    "ScanOptions",
    "ScanProgress",
    "ScanSource",
    "Scanner",
    "Shard",
    "ShardReport",
    "merge_scan",
    "is_scan",
    "open_scan",
    "parse_shard",
    "plan_scan",
    "scan",
    "scan_batch",
]
