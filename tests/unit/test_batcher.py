import asyncio
import threading
import time

import numpy as np
import pytest

from services.cell_classifier.batcher import BatcherStopped, DynamicBatcher, QueueFull


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


def gated(handler: Recorder) -> tuple[threading.Event, object]:
    """A handler that blocks until the returned event is set (to hold a batch in flight)."""
    gate = threading.Event()

    def slow(batch):
        gate.wait(5)
        return handler(batch)

    return gate, slow


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


def test_waits_at_most_max_delay_for_more_items():
    async def main():
        handler = Recorder()
        batcher = DynamicBatcher(handler, max_batch=64, max_delay_s=0.05, max_queue=100)
        batcher.start()
        started = time.perf_counter()
        await batcher.submit(np.array([1]))
        lone = time.perf_counter() - started
        # a second request arriving within the delay joins the first one's batch
        first = asyncio.create_task(batcher.submit(np.array([2])))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, batcher.submit(np.array([3])))
        await batcher.stop()
        return handler, lone

    handler, lone = run(main())
    assert handler.batches == [[1], [2, 3]]
    assert 0.04 <= lone < 2.0, "a lone item waits for the delay, then runs alone"


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
        gate, slow = gated(handler)
        batcher = DynamicBatcher(slow, max_batch=2, max_delay_s=0.0, max_queue=4)
        batcher.start()
        running = asyncio.create_task(batcher.submit(np.array([1, 2])))  # taken by the handler
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(batcher.submit(np.array([3, 4, 5])))  # queued: 3 of 4
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await batcher.submit(np.array([6, 7]))
        gate.set()
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
        gate, slow = gated(handler)
        batcher = DynamicBatcher(slow, max_batch=1, max_delay_s=0.0, max_queue=100)
        batcher.start()
        first = asyncio.create_task(batcher.submit(np.array([1])))
        await asyncio.sleep(0.05)
        abandoned = asyncio.create_task(batcher.submit(np.array([2, 3])))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        await asyncio.sleep(0.01)
        gate.set()
        await first
        after = await batcher.submit(np.array([4]))
        await batcher.stop()
        return handler, after

    handler, after = run(main())
    assert after.tolist() == [8]
    assert [2] not in handler.batches and [3] not in handler.batches


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
            gate.wait(5)
            return batch * 2

        pool = ThreadPoolExecutor(concurrent)
        batcher = DynamicBatcher(handler, max_batch=1, max_delay_s=0.0, max_queue=10, executor=pool,
                                 max_concurrent_batches=concurrent)
        batcher.start()
        first = asyncio.create_task(batcher.submit(np.array([1])))
        second = asyncio.create_task(batcher.submit(np.array([2])))
        for _ in range(100):  # give both batches every chance to start
            await asyncio.sleep(0.005)
        running_together = sorted(started)
        gate.set()
        results = await asyncio.gather(first, second)
        await batcher.stop()
        pool.shutdown()
        return running_together, results

    running_together, results = run(main())
    assert running_together == ([1, 2] if concurrent == 2 else [1])
    assert [r.tolist() for r in results] == [[2], [4]]


def test_stop_lets_batches_in_the_executor_answer_their_requests():
    from concurrent.futures import ThreadPoolExecutor

    async def main():
        gate = threading.Event()
        pool = ThreadPoolExecutor(2)
        batcher = DynamicBatcher(lambda b: (gate.wait(5), b * 3)[1], max_batch=4, max_delay_s=0.0, max_queue=10,
                                 executor=pool, max_concurrent_batches=2)
        batcher.start()
        request = asyncio.create_task(batcher.submit(np.array([5])))
        await asyncio.sleep(0.05)  # the batch is in the executor
        stopping = asyncio.create_task(batcher.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done(), "stop waits for the running batch"
        gate.set()
        await stopping
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
        gate, slow = gated(handler)
        batcher = DynamicBatcher(slow, max_batch=1, max_delay_s=0.0, max_queue=4)
        batcher.start()
        first = asyncio.create_task(batcher.submit(np.array([1])))  # taken by the handler (held)
        await asyncio.sleep(0.05)
        abandoned = asyncio.create_task(batcher.submit(np.array([2, 3, 4])))
        await asyncio.sleep(0.01)
        assert batcher.queued == 3
        abandoned.cancel()
        await asyncio.sleep(0.01)
        assert batcher.queued == 0, "nothing will compute them: they hold no room"
        later = asyncio.create_task(batcher.submit(np.array([5, 6, 7, 8])))  # the whole limit, not QueueFull
        await asyncio.sleep(0.01)
        assert batcher.queued == 4
        gate.set()
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
        gate, slow = gated(handler)
        batcher = DynamicBatcher(slow, max_batch=2, max_delay_s=0.0, max_queue=100, on_queue_depth=depths.append)
        batcher.start()
        waiting = asyncio.create_task(batcher.submit(np.arange(5)))
        await asyncio.sleep(0.05)  # 2 taken into the held batch, 3 queued
        seen = list(depths)
        gate.set()
        await waiting
        await batcher.stop()
        return seen, depths

    seen, depths = run(main())
    assert seen[0] == 5 and seen[-1] == 3  # queued, then 2 taken into the held batch
    assert depths[-1] == 0
