"""The decode workers (services/cell_classifier/workers.py): results, errors, threads, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.cell_classifier.workers import LoopWorkers


def test_results_errors_and_threads():
    workers = LoopWorkers(2, "decode")

    def job(x):
        if x == 3:
            raise ValueError("three")
        return x * 10, threading.current_thread().name

    async def main():
        return await asyncio.gather(*(workers.run(job, x) for x in range(6)), return_exceptions=True)

    results = asyncio.run(main())
    workers.shutdown()
    assert [r[0] for i, r in enumerate(results) if i != 3] == [0, 10, 20, 40, 50]
    assert isinstance(results[3], ValueError)
    assert {r[1] for i, r in enumerate(results) if i != 3} <= {"decode_0", "decode_1"}


def test_stop_iteration_becomes_an_error_not_a_hang():
    workers = LoopWorkers(1, "decode")

    def job():
        raise StopIteration

    async def main():
        return await asyncio.wait_for(workers.run(job), 5)

    with pytest.raises(RuntimeError):
        asyncio.run(main())
    workers.shutdown()


def test_cancelled_job_does_not_run_and_shutdown_ends_threads():
    workers = LoopWorkers(1, "decode")
    ran = []
    gate = threading.Event()

    async def main():
        first = workers.run(gate.wait, 5)
        second = workers.run(ran.append, "second")
        second.cancel()
        gate.set()
        await first
        await asyncio.sleep(0.05)

    asyncio.run(main())
    workers.shutdown()
    for thread in workers._threads:
        thread.join(5)
        assert not thread.is_alive()
    assert ran == []


def test_invalid_count():
    with pytest.raises(ValueError):
        LoopWorkers(0, "decode")
