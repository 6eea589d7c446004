"""The dashboard's worker pool: bounded, cached, shared in flight, superseded per slot, with progress.

Counted, never timed: work functions block on events the test releases, and count their calls.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("starlette")

from mindscope.serve.jobs import Jobs, Superseded  # noqa: E402


class Gate:
    """Work that waits until the test opens it, counting who ran and how many ran at once."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.calls: list[object] = []
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def work(self, value: object):
        def run(progress):
            with self._lock:
                self.calls.append(value)
                self.running += 1
                self.most = max(self.most, self.running)
            progress(0.5, f"half of {value}")
            assert self.open.wait(10), "the test never opened the gate"
            with self._lock:
                self.running -= 1
            return value

        return run


async def until(condition, limit: int = 2000) -> None:
    """Yield to the loop until `condition()` holds (bounded: a test fails rather than hangs)."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def test_a_result_is_computed_once_and_then_served_from_the_cache():
    async def scenario():
        jobs, gate = Jobs(workers=2), Gate()
        gate.open.set()
        first = await jobs.get(("grid", 1), gate.work("a"))
        second = await jobs.get(("grid", 1), gate.work("b"))
        jobs.close()
        return first, second, gate.calls, jobs.stats

    first, second, calls, stats = asyncio.run(scenario())
    assert (first, second) == ("a", "a") and calls == ["a"]
    assert stats.computed == 1 and stats.cache_hits == 1


def test_identical_requests_in_flight_share_one_computation():
    async def scenario():
        jobs, gate = Jobs(workers=2), Gate()
        tasks = [asyncio.create_task(jobs.get(("ig", 7), gate.work(i))) for i in range(8)]
        await until(lambda: len(gate.calls) == 1)
        gate.open.set()
        results = await asyncio.gather(*tasks)
        jobs.close()
        return results, gate.calls, jobs.stats

    results, calls, stats = asyncio.run(scenario())
    assert calls == [0] and results == [0] * 8
    assert stats.computed == 1 and stats.shared == 7


def test_the_pool_never_runs_more_than_its_workers():
    async def scenario():
        jobs, gate = Jobs(workers=2), Gate()
        tasks = [asyncio.create_task(jobs.get(("grid", i), gate.work(i))) for i in range(6)]
        await until(lambda: len(gate.calls) == 2)
        waiting = len(gate.calls)
        gate.open.set()
        results = await asyncio.gather(*tasks)
        jobs.close()
        return waiting, results, gate.most

    waiting, results, most = asyncio.run(scenario())
    assert waiting == 2 and most == 2
    assert results == list(range(6))


def test_a_slider_through_ten_positions_queues_at_most_one_computation():
    """The alpha slider: ten positions while a worker is busy; only the last is computed."""

    async def scenario():
        jobs, gate = Jobs(workers=1), Gate()
        busy = asyncio.create_task(jobs.get(("interior", "frame", 0.01), gate.work("first")))
        await until(lambda: gate.calls == ["first"])
        moves = []
        for k in range(10):  # the slider moves while the first frame is still being drawn
            moves.append(asyncio.create_task(jobs.get(("interior", "frame", k), gate.work(k), slot="page:alpha")))
            await until(lambda k=k: jobs.status(("interior", "frame", k)) is not None)  # queued
        gate.open.set()
        outcomes = await asyncio.gather(busy, *moves, return_exceptions=True)
        jobs.close()
        return outcomes, gate.calls, jobs.stats

    outcomes, calls, stats = asyncio.run(scenario())
    assert calls == ["first", 9], calls  # the running frame, then only the latest position
    assert outcomes[0] == "first" and outcomes[-1] == 9
    assert all(isinstance(o, Superseded) for o in outcomes[1:-1])
    assert stats.superseded == 9 and stats.peak_queued_in_slot == 1


def test_a_superseded_request_is_kept_when_someone_else_waits_for_it():
    async def scenario():
        jobs, gate = Jobs(workers=1), Gate()
        busy = asyncio.create_task(jobs.get("busy", gate.work("busy")))
        await until(lambda: gate.calls == ["busy"])
        mine = asyncio.create_task(jobs.get(("frame", 1), gate.work(1), slot="a"))
        theirs = asyncio.create_task(jobs.get(("frame", 1), gate.work(1)))  # another page, same frame
        await until(lambda: jobs.stats.shared == 1)
        newer = asyncio.create_task(jobs.get(("frame", 2), gate.work(2), slot="a"))
        await until(lambda: jobs.status(("frame", 2)) is not None)
        gate.open.set()
        return await asyncio.gather(busy, mine, theirs, newer), gate.calls

    results, calls = asyncio.run(scenario())
    assert results == ["busy", 1, 1, 2] and calls == ["busy", 1, 2]


def test_background_jobs_report_progress_and_errors_once():
    def fails(progress):
        progress(0.25, "a quarter")
        raise ValueError("layer 'x' has no channel maps")

    async def scenario():
        jobs, gate = Jobs(workers=1), Gate()
        started = jobs.start(("scores", "L3"), gate.work("scores"))
        await until(lambda: jobs.status(("scores", "L3")).fraction == 0.5)
        halfway = jobs.status(("scores", "L3"))
        gate.open.set()
        await until(lambda: jobs.status(("scores", "L3")).done)
        done = jobs.start(("scores", "L3"), gate.work("again"))
        jobs.start(("scores", "bad"), fails)
        await until(lambda: jobs.status(("scores", "bad")).error is not None)
        error = jobs.start(("scores", "bad"), fails)
        retried = jobs.start(("scores", "bad"), fails)  # the error was reported: a new try starts
        jobs.close()
        return started, halfway, done, error, retried, gate.calls

    started, halfway, done, error, retried, calls = asyncio.run(scenario())
    assert not started.done and (halfway.fraction, halfway.note) == (0.5, "half of scores")
    assert done.done and calls == ["scores"]
    assert error.error == "layer 'x' has no channel maps"
    assert retried.error is None and not retried.done


def test_an_error_reaches_every_request_that_waited_and_is_not_cached():
    calls = []

    def broken(progress):
        calls.append(1)
        raise ValueError("image 99 is out of range")

    async def scenario():
        jobs = Jobs(workers=1)
        results = await asyncio.gather(*(jobs.get("k", broken) for _ in range(3)), return_exceptions=True)
        again = await asyncio.gather(jobs.get("k", broken), return_exceptions=True)
        jobs.close()
        return results, again

    results, again = asyncio.run(scenario())
    assert all(isinstance(r, ValueError) and "out of range" in str(r) for r in results + again)
    assert len(calls) == 2  # once for the three together, once more when asked again


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_the_pool_needs_a_positive_number_of_workers(workers):
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        Jobs(workers=workers)
