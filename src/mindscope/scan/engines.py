"""Where the shards are computed: threads in this process, or a Ray Data pipeline over actors.

Both run `Scanner.run` (and so `scan_batch`) on each shard and yield a `ShardReport` as each
finishes; a shard's files are written by whoever computed it.

`LocalEngine(workers)`: a pool of `workers` threads in this process, each with its own copy of
the model (hooks and autograd never cross threads), at most two shards per worker in flight
so memory does not grow with the data set. With more than one worker, torch's intra-op
threads are split between them for the scan, then put back.

`RayEngine(actors)`: Ray Data reads the shard list (one block per shard, so no step has to
repartition), `map_batches` it over a pool of actors that each open the model and data once
and keep them, and streams back the reports. Each actor asks for a fraction of a CPU
(`cpus_per_actor`, default 0.5), so the pool never holds every CPU while Ray wants one for
itself, and a fraction of a GPU where the scan runs on CUDA. It joins the cluster that
RAY_ADDRESS names or one already started; otherwise it starts a local one and stops it after.
"""

from __future__ import annotations

import copy
import os
import queue
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mindscope._util import positive_int
from mindscope.scan.compute import Scanner, ShardReport
from mindscope.scan.plan import Plan, Shard

if TYPE_CHECKING:
    from mindscope.subject import Subject

LOCAL_OBJECT_STORE = 256 << 20  # bytes; a scan moves only shard numbers and reports through it


@dataclass(frozen=True)
class LocalEngine:
    """Threads in this process, `workers` shards at a time."""

    workers: int = 1

    def check(self) -> None:
        positive_int(self.workers, "workers", maximum=256)

    def run(self, plan: Plan, shards: Sequence[Shard], subject: Subject) -> Iterator[ShardReport]:
        data = subject.require_data("a scan")
        models = [subject.model] + [copy.deepcopy(subject.model) for _ in range(self.workers - 1)]
        idle: queue.Queue[Scanner] = queue.Queue()
        for model in models:
            idle.put(Scanner(model, subject.normalization, data.test, plan))

        def work(shard: Shard) -> ShardReport:
            scanner = idle.get()
            try:
                return scanner.run(shard)
            finally:
                idle.put(scanner)

        threads = torch.get_num_threads()
        if self.workers > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.workers))
        todo = iter(shards)
        running: set[Future] = set()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mindscope-scan")
        try:
            while True:
                while len(running) < 2 * self.workers and (shard := next(todo, None)) is not None:
                    running.add(pool.submit(work, shard))
                if not running:
                    return
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(threads)


class _ShardActor:
    """A Ray actor: opens the model and data once, then scans the shards it is given."""

    def __init__(self, plan: Plan, threads: int) -> None:
        torch.set_num_threads(threads)
        subject = plan.source.open()
        self.scanner = Scanner(subject.model, subject.normalization, subject.require_data("a scan").test, plan)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reports = [self.scanner.run(Shard(int(k), int(a), int(b)))
                   for k, a, b in zip(batch["number"], batch["start"], batch["stop"])]  # fmt: skip
        return {
            "number": np.array([r.number for r in reports], dtype=np.int64),
            "images": np.array([r.images for r in reports], dtype=np.int64),
            "seconds": np.array([r.seconds for r in reports], dtype=np.float64),
        }


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ValueError(
            "the ray engine needs Ray Data, which is not installed; "
            "install it with pip install 'mindscope[distributed]', or use --engine local"
        ) from None
    return ray


@dataclass(frozen=True)
class RayEngine:
    """A Ray Data pipeline: the shard list, mapped over `actors` actors that keep the model loaded."""

    actors: int = 2
    cpus_per_actor: float = 0.5
    gpus_per_actor: float = 0.5  # used only when the scan runs on CUDA
    threads_per_actor: int = 1  # torch intra-op threads in each actor

    def check(self) -> None:
        positive_int(self.actors, "workers", maximum=4096)
        positive_int(self.threads_per_actor, "threads_per_actor", maximum=256)
        if not 0 < self.cpus_per_actor:
            raise ValueError(f"cpus_per_actor must be > 0 (e.g. 0.5), got {self.cpus_per_actor}")
        _ray()

    def run(self, plan: Plan, shards: Sequence[Shard], subject: Subject | None = None) -> Iterator[ShardReport]:
        if not shards:
            return
        ray = _ray()
        started = not ray.is_initialized()
        if started:
            local = "RAY_ADDRESS" not in os.environ
            options = {"include_dashboard": False, "object_store_memory": LOCAL_OBJECT_STORE} if local else {}
            ray.init(log_to_driver=False, **options)
        context = ray.data.DataContext.get_current()
        bars, context.enable_progress_bars = context.enable_progress_bars, False  # the caller shows progress
        try:
            rows = [{"number": s.number, "start": s.start, "stop": s.stop} for s in shards]
            gpus = self.gpus_per_actor if plan.source.device.startswith("cuda") else None
            reports = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                _ShardActor,
                fn_constructor_kwargs={"plan": plan, "threads": self.threads_per_actor},
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=self.actors),
                num_cpus=self.cpus_per_actor,
                num_gpus=gpus,
            )
            for row in reports.iter_rows():
                yield ShardReport(int(row["number"]), int(row["images"]), float(row["seconds"]))
        finally:
            context.enable_progress_bars = bars
            if started:
                ray.shutdown()
