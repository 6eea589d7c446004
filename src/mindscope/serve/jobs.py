"""The dashboard's computations: a bounded worker pool, a cache, in-flight sharing, dropped superseded work.

Every model computation (and every figure drawn from it) runs off the event loop in one of
`workers` threads. The queue in front of them lives on the event loop, not in the pool, so
that work nobody waits for any more can be taken out of it:

- a result is cached under its key (run, epoch, image, layer, method, parameters), so the
  same question asked twice is answered from memory;
- identical requests that arrive while the first is still queued or running share it;
- a request may name a `slot` (one control of one page, such as its alpha slider): a newer
  request in the same slot drops the older one if it has not started yet, so moving a
  slider through ten positions queues at most one computation behind the running one;
- a long job reports progress (a fraction and a note) that a page can poll.

All bookkeeping happens on the event loop thread; the worker threads only run the jobs.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mindscope._util import positive_int

Progress = Callable[[float, str], None]
Work = Callable[[Progress], Any]


class Superseded(Exception):
    """A queued request that a newer request from the same control replaced before it started."""


@dataclass(eq=False)
class Job:
    key: Hashable
    work: Work
    future: asyncio.Future
    slot: str | None = None
    keep: bool = True  # cache the result
    waiters: int = 0  # requests awaiting it; a background job has none
    started: bool = False
    fraction: float = 0.0
    note: str = "queued"

    def report(self, fraction: float, note: str) -> None:
        """Progress from the worker thread: plain attribute writes, read by the loop when polled."""
        self.fraction, self.note = min(max(float(fraction), 0.0), 1.0), note


@dataclass
class JobStats:
    """Counters, for tests and the benchmark (never for timing)."""

    computed: int = 0  # jobs that a worker ran
    cache_hits: int = 0
    shared: int = 0  # requests that joined a job already queued or running
    superseded: int = 0  # queued jobs dropped for a newer request in their slot
    peak_queued_in_slot: int = 0  # the most jobs of one slot ever waiting to start at once
    peak_pending: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)  # computed, by the first element of the key


@dataclass(frozen=True)
class Status:
    """Where a key stands: done (result cached), failed (message), or running/queued with progress."""

    done: bool
    fraction: float = 0.0
    note: str = ""
    error: str | None = None


class Jobs:
    """A bounded pool of worker threads behind a cache, with in-flight sharing and superseding."""

    def __init__(self, *, workers: int = 2, cache_items: int = 512) -> None:
        positive_int(workers, "workers")
        positive_int(cache_items, "cache_items")
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None  # started with the first job, again after close()
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()
        self._cache_items = cache_items
        self._inflight: dict[Hashable, Job] = {}
        self._pending: deque[Job] = deque()
        self._slots: dict[str, Job] = {}
        self._failed: OrderedDict[Hashable, str] = OrderedDict()
        self._running = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = JobStats()

    # --- asking --------------------------------------------------------------------------

    def cached(self, key: Hashable) -> tuple[bool, Any]:
        """(True, result) when `key` is in the cache, else (False, None)."""
        if key in self._cache:
            self._cache.move_to_end(key)
            self.stats.cache_hits += 1
            return True, self._cache[key]
        return False, None

    async def get(self, key: Hashable, work: Work, *, slot: str | None = None, keep: bool = True) -> Any:
        """Return the result for `key`: from the cache, from a job in flight, or from `work` run in the pool.

        Raises Superseded when a newer request in the same `slot` replaced this one before it ran.
        `keep=False` runs the work in the pool without caching its result (it is still shared in flight).
        """
        hit, value = self.cached(key)
        if hit:
            return value
        job = self._job(key, work, slot=slot, keep=keep)
        job.waiters += 1
        try:
            return await asyncio.shield(job.future)
        finally:
            job.waiters -= 1

    def start(self, key: Hashable, work: Work) -> Status:
        """Start `work` in the background unless it is cached or in flight; return where it stands.

        A failed job reports its error once, then may be started again.
        """
        if key in self._cache:
            self._cache.move_to_end(key)
            return Status(True)
        if key in self._failed:
            return Status(False, error=self._failed.pop(key))
        job = self._job(key, work, slot=None, keep=True)
        return Status(False, job.fraction, job.note)

    def status(self, key: Hashable) -> Status | None:
        """Where `key` stands, or None when it is neither cached, failed, nor in flight."""
        if key in self._cache:
            return Status(True)
        if key in self._failed:
            return Status(False, error=self._failed[key])
        job = self._inflight.get(key)
        return None if job is None else Status(False, job.fraction, job.note)

    def close(self) -> None:
        """Drop queued jobs and let running ones finish in the background; a later job starts a new pool."""
        for job in self._pending:
            self._inflight.pop(job.key, None)
            if not job.future.done():
                job.future.cancel()
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # --- the queue -----------------------------------------------------------------------

    def _job(self, key: Hashable, work: Work, *, slot: str | None, keep: bool) -> Job:
        loop = asyncio.get_running_loop()
        self._loop = loop
        job = self._inflight.get(key)
        if job is not None:
            self.stats.shared += 1
        else:
            job = Job(key, work, loop.create_future(), slot=slot, keep=keep)
            job.future.add_done_callback(_observe)
            self._inflight[key] = job
            self._pending.append(job)
            self.stats.peak_pending = max(self.stats.peak_pending, len(self._pending))
        if slot is not None:
            self._supersede(slot, job)
        self._dispatch()
        return job

    def _supersede(self, slot: str, job: Job) -> None:
        old = self._slots.get(slot)
        self._slots[slot] = job
        if old is not None and old is not job and not old.started and old.waiters <= 1 and not old.future.done():
            self._pending.remove(old)
            self._inflight.pop(old.key, None)
            old.future.set_exception(Superseded(f"replaced by a newer request from {slot}"))
            self.stats.superseded += 1
        queued = sum(1 for j in self._pending if j.slot == slot)
        self.stats.peak_queued_in_slot = max(self.stats.peak_queued_in_slot, queued)

    def _dispatch(self) -> None:
        while self._pending and self._running < self.workers:
            job = self._pending.popleft()
            job.started, job.note = True, "started"
            self._running += 1
            self.stats.computed += 1
            kind = str(job.key[0]) if isinstance(job.key, tuple) and job.key else str(job.key)
            self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mindscope-serve")
            done = self._executor.submit(job.work, job.report)
            done.add_done_callback(lambda f, job=job: self._finished(job, f))

    def _finished(self, job: Job, done: Future) -> None:
        """In the worker thread: hand the finished job to the event loop (unless it has closed)."""
        try:
            self._loop.call_soon_threadsafe(self._finish, job, done)
        except RuntimeError:  # the loop closed while the job ran: nobody is waiting any more
            pass

    def _finish(self, job: Job, done: Future) -> None:
        self._running -= 1
        if self._inflight.get(job.key) is job:
            del self._inflight[job.key]
        if job.slot is not None and self._slots.get(job.slot) is job:
            del self._slots[job.slot]
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is None:
            if job.keep:
                self._cache[job.key] = done.result()
                self._cache.move_to_end(job.key)
                while len(self._cache) > self._cache_items:
                    self._cache.popitem(last=False)
            if not job.future.done():
                job.future.set_result(done.result())
        else:
            if job.waiters == 0:  # a background job: keep its error for the page that polls
                self._failed[job.key] = str(error).splitlines()[0] if str(error) else type(error).__name__
                while len(self._failed) > 64:
                    self._failed.popitem(last=False)
            if not job.future.done():
                job.future.set_exception(error)
        self._dispatch()


def _observe(future: asyncio.Future) -> None:
    """Mark a job's exception as seen: a background job's error is reported by polling instead."""
    if not future.cancelled():
        future.exception()
