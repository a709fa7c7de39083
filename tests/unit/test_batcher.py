import asyncio
import threading
import time

import numpy as np
import pytest

from services.cell_classifier.batcher import BatcherStopped, BatchStats, DynamicBatcher, QueueFull
from tests.helpers.waiting import HANG_S, settle, until


class Recorder:
    """A handler that doubles its input and records each batch it saw."""

    def __init__(self, fail_when=None, delay_s: float = 0.0):
        self.batches: list[list[int]] = []
        self.fail_when = fail_when
        self.delay_s = delay_s

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append([int(v) for v in batch])
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_when is not None and self.fail_when(batch):
            raise RuntimeError("boom")
        return batch * 2


def run(coro):
    return asyncio.run(coro)


class Held:
    """A handler that holds each batch (in flight, in the executor) until ``release()``, and says when the first
    one has reached it: the test waits for that instead of sleeping."""

    def __init__(self, handler):
        self.handler = handler
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.calls = 0  # batches handed to it, whatever they hold

    def __call__(self, batch):
        self.calls += 1
        self.entered.set()
        self.gate.wait(HANG_S)
        return self.handler(batch)

    async def reached(self) -> None:
        await until(self.entered.is_set, what="a batch in the handler")

    def release(self) -> None:
        self.gate.set()


async def cancel_behind_a_held_batch(batcher: DynamicBatcher, held: Held, items: list[int]):
    """Submit [1] and hold its batch in the handler, queue ``items`` behind it and cancel that request once its
    items are queued: (the held request's task, what the cancelled request ended with)."""
    first = asyncio.create_task(batcher.submit(np.array([1])))
    await held.reached()
    abandoned = asyncio.create_task(batcher.submit(np.array(items)))
    await until(lambda: batcher.queued == len(items))  # queued behind the held batch
    abandoned.cancel()
    (ended,) = await asyncio.gather(abandoned, return_exceptions=True)
    return first, ended


def test_results_come_back_in_order_per_request():
    async def main():
        handler = Recorder()
        batcher = DynamicBatcher(handler, max_batch=8, max_delay_s=0.01, max_queue=1000)
        batcher.start()
        requests = [np.arange(start, start + size) for start, size in [(0, 5), (100, 1), (200, 17), (300, 3)]]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return handler, requests, results

    handler, requests, results = run(main())
    for request, result in zip(requests, results):
        assert result.tolist() == (request * 2).tolist()
    assert max(len(b) for b in handler.batches) <= 8
    assert sum(len(b) for b in handler.batches) == 26
    assert len(handler.batches) < 26, "concurrent requests share batches"


def test_a_lone_item_waits_for_the_delay_then_runs_alone():
    async def main():
        handler = Recorder()
        stats: list[BatchStats] = []
        batcher = DynamicBatcher(handler, max_batch=64, max_delay_s=0.05, max_queue=100, on_batch=stats.append)
        batcher.start()
        out = await asyncio.wait_for(batcher.submit(np.array([1])), HANG_S)  # not held for a full batch of 64
        await batcher.stop()
        return handler, stats, out

    handler, stats, out = run(main())
    assert out.tolist() == [2]
    assert handler.batches == [[1]], "no full batch came: the lone item ran alone once the delay was over"
    # the batcher's own clock: it kept the item at least the delay, waiting for company (a lower bound, which
    # a slow machine can only raise; 1 ms for the event loop's and perf_counter's clocks)
    assert stats[0].size == 1 and stats[0].queue_waits_s[0] >= 0.05 - 0.001


def test_a_request_arriving_within_the_delay_joins_the_waiting_batch():
    async def main():
        handler = Recorder()
        depths: list[int] = []
        batcher = DynamicBatcher(handler, max_batch=2, max_delay_s=HANG_S, max_queue=100,
                                 on_queue_depth=depths.append)
        batcher.start()
        first = asyncio.create_task(batcher.submit(np.array([2])))
        # item 2 was queued (depth 1 reported) and the collector took it (no longer counted): it waits for more
        await until(lambda: depths[:1] == [1] and batcher.queued == 0, what="the collector holding item 2")
        second = await asyncio.wait_for(batcher.submit(np.array([3])), HANG_S)  # fills the batch: it runs now
        results = [(await first).tolist(), second.tolist()]
        await batcher.stop()
        return handler, results

    handler, results = run(main())
    assert results == [[4], [6]]
    assert handler.batches == [[2, 3]], "the second request joined the batch that waited for it"


def test_zero_delay_runs_without_waiting():
    async def main():
        handler = Recorder()
        batcher = DynamicBatcher(handler, max_batch=64, max_delay_s=0.0, max_queue=100)
        batcher.start()
        out = await batcher.submit(np.array([7, 8]))
        await batcher.stop()
        return out

    assert run(main()).tolist() == [14, 16]


def test_full_queue_refuses_whole_request():
    async def main():
        handler = Recorder()
        held = Held(handler)
        batcher = DynamicBatcher(held, max_batch=2, max_delay_s=0.0, max_queue=4)
        batcher.start()
        try:
            running = asyncio.create_task(batcher.submit(np.array([1, 2])))
            await held.reached()  # taken by the handler
            waiting = asyncio.create_task(batcher.submit(np.array([3, 4, 5])))
            await until(lambda: batcher.queued == 3)  # queued: 3 of 4
            with pytest.raises(QueueFull):
                await batcher.submit(np.array([6, 7]))
        finally:
            held.release()
        results = await asyncio.gather(running, waiting)
        await batcher.stop()
        return handler, results

    handler, results = run(main())
    assert [r.tolist() for r in results] == [[2, 4], [6, 8, 10]]
    assert all(6 not in b and 7 not in b for b in handler.batches)


def test_failing_batch_fails_only_its_requests():
    async def main():
        handler = Recorder(fail_when=lambda batch: 13 in batch)
        batcher = DynamicBatcher(handler, max_batch=4, max_delay_s=0.0, max_queue=100)
        batcher.start()
        bad = await asyncio.gather(batcher.submit(np.array([13])), return_exceptions=True)
        good = await batcher.submit(np.array([1, 2, 3]))
        await batcher.stop()
        return bad[0], good

    bad, good = run(main())
    assert isinstance(bad, RuntimeError)
    assert good.tolist() == [2, 4, 6], "the batcher keeps serving after a failed batch"


def test_cancelled_request_is_not_computed():
    async def main():
        handler = Recorder()
        held = Held(handler)
        batcher = DynamicBatcher(held, max_batch=1, max_delay_s=0.0, max_queue=100)
        batcher.start()
        try:
            first, cancelled = await cancel_behind_a_held_batch(batcher, held, [2, 3])
            assert isinstance(cancelled, asyncio.CancelledError)
        finally:
            held.release()
        await first
        after = await batcher.submit(np.array([4]))
        await batcher.stop()
        return handler, held.calls, after

    handler, calls, after = run(main())
    assert after.tolist() == [8]
    assert calls == 2 and handler.batches == [[1], [4]], "the cancelled request's items never reached the handler"


def test_submit_before_start_and_after_stop():
    async def main():
        batcher = DynamicBatcher(Recorder(), max_batch=4, max_delay_s=0.0, max_queue=10)
        with pytest.raises(BatcherStopped):
            await batcher.submit(np.array([1]))
        batcher.start()
        await batcher.stop()
        with pytest.raises(BatcherStopped):
            await batcher.submit(np.array([1]))

    run(main())


def test_invalid_configuration():
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_batch=0, max_delay_s=0.0, max_queue=10)


@pytest.mark.parametrize("concurrent", [1, 2])
def test_the_next_batch_starts_while_one_runs_only_when_concurrent_batches_allow(concurrent):
    """With room for two batches the batcher hands the next batch to the executor while the first still
    runs (two model instances, issue 12); with one it waits for the first to finish."""
    from concurrent.futures import ThreadPoolExecutor

    async def main():
        started: list[int] = []
        gate = threading.Event()

        def handler(batch):
            started.append(int(batch[0]))
            gate.wait(HANG_S)
            return batch * 2

        pool = ThreadPoolExecutor(concurrent)
        batcher = DynamicBatcher(handler, max_batch=1, max_delay_s=0.0, max_queue=10, executor=pool,
                                 max_concurrent_batches=concurrent)
        batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(np.array([1])))
            second = asyncio.create_task(batcher.submit(np.array([2])))
            if concurrent == 2:
                await until(lambda: len(started) == 2, what="both batches running")
            else:
                await until(lambda: started == [1], what="the first batch running")
                await settle()  # a free slot would have let the collector take item 2 by now
            running_together, left_queued = sorted(started), batcher.queued
        finally:
            gate.set()
        results = await asyncio.gather(first, second)
        await batcher.stop()
        pool.shutdown()
        return running_together, left_queued, results

    running_together, left_queued, results = run(main())
    assert running_together == ([1, 2] if concurrent == 2 else [1])
    assert left_queued == (0 if concurrent == 2 else 1), "with one slot, item 2 waits in the queue"
    assert [r.tolist() for r in results] == [[2], [4]]


def test_stop_lets_batches_in_the_executor_answer_their_requests():
    from concurrent.futures import ThreadPoolExecutor

    async def main():
        held = Held(lambda b: b * 3)
        pool = ThreadPoolExecutor(2)
        batcher = DynamicBatcher(held, max_batch=4, max_delay_s=0.0, max_queue=10,
                                 executor=pool, max_concurrent_batches=2)
        batcher.start()
        try:
            request = asyncio.create_task(batcher.submit(np.array([5])))
            await held.reached()  # the batch is in the executor
            stopping = asyncio.create_task(batcher.stop())
            await until(lambda: not batcher.running, what="the collector stopped")
            await settle()  # stop has done all it can without the running batch
            assert not stopping.done(), "stop waits for the running batch"
        finally:
            held.release()
        await asyncio.wait_for(stopping, HANG_S)
        pool.shutdown()
        return await request

    assert run(main()).tolist() == [15]


def test_concurrent_batches_must_be_at_least_one():
    with pytest.raises(ValueError):
        DynamicBatcher(lambda b: b, max_batch=1, max_delay_s=0.0, max_queue=1, max_concurrent_batches=0)


def test_inference_threads_are_shared_out_among_the_concurrent_batches(monkeypatch):
    import os

    from services.cell_classifier.settings import CellServiceSettings

    monkeypatch.setenv("CELL_INFERENCE_THREADS", "4")
    assert CellServiceSettings().concurrent_batches == 2 and CellServiceSettings().threads_per_batch() == 2
    monkeypatch.setenv("CELL_INFERENCE_THREADS", "1")
    assert CellServiceSettings().threads_per_batch() == 1  # never below one thread per batch
    monkeypatch.setenv("CELL_INFERENCE_THREADS", "0")
    monkeypatch.setenv("CELL_CONCURRENT_BATCHES", "1")
    assert CellServiceSettings().threads_per_batch() == (os.cpu_count() or 1)


def test_a_cancelled_requests_items_leave_the_queue_limit_at_once():
    async def main():
        handler = Recorder()
        held = Held(handler)
        batcher = DynamicBatcher(held, max_batch=1, max_delay_s=0.0, max_queue=4)
        batcher.start()
        try:
            first, _ = await cancel_behind_a_held_batch(batcher, held, [2, 3, 4])  # its cancellation handled
            assert batcher.queued == 0, "nothing will compute them: they hold no room"
            later = asyncio.create_task(batcher.submit(np.array([5, 6, 7, 8])))  # the whole limit, not QueueFull
            await until(lambda: later.done() or batcher.queued == 4)
            if later.done():
                later.result()  # raises the QueueFull it met
            assert batcher.queued == 4
        finally:
            held.release()
        results = await asyncio.gather(first, later)
        await batcher.stop()
        return handler, results

    handler, results = run(main())
    assert [r.tolist() for r in results] == [[2], [10, 12, 14, 16]]
    assert not any(v in batch for batch in handler.batches for v in (2, 3, 4))


def test_the_queue_depth_is_reported_as_items_are_queued_and_taken():
    async def main():
        depths: list[int] = []
        handler = Recorder()
        held = Held(handler)
        batcher = DynamicBatcher(held, max_batch=2, max_delay_s=0.0, max_queue=100, on_queue_depth=depths.append)
        batcher.start()
        try:
            waiting = asyncio.create_task(batcher.submit(np.arange(5)))
            await held.reached()  # 2 taken into the held batch (reported before it ran), 3 queued
            seen = list(depths)
        finally:
            held.release()
        await waiting
        await batcher.stop()
        return seen, depths

    seen, depths = run(main())
    assert seen[0] == 5 and seen[-1] == 3  # queued, then 2 taken into the held batch
    assert depths[-1] == 0
