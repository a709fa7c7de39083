"""Dynamic batching across concurrent requests, in the manner of Triton's dynamic batcher.

Requests submit arrays of items; single items queue up and one background task
takes up to ``max_batch`` of them per run, waiting at most ``max_delay_s`` after the
first for more, and hands the batch to the executor; up to ``max_concurrent_batches``
batches run at once (Triton's instance count), so the next one forms while one runs.
The queue is bounded in items: a request that does not fit is
refused whole with ``QueueFull`` (the service answers 503 + Retry-After). Only
live items count: a cancelled request's items leave the count (and drop their
arrays) at once, though the collector skips them later. The handler runs in a
worker thread; if it raises, only the requests with items in that batch fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """The queue has no room for the request's items."""


class BatcherStopped(Exception):
    """The batcher is not running."""


@dataclass
class BatchStats:
    """What one run of the handler looked like (for metrics)."""

    size: int
    queue_waits_s: list[float]
    run_s: float
    ok: bool


@dataclass
class _Item:
    value: np.ndarray | None  # None: its request was cancelled while it was queued
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    queued: bool = True  # still counted in ``DynamicBatcher.queued``


class DynamicBatcher:
    def __init__(
        self,
        handler: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        executor: Executor | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        max_concurrent_batches: int = 1,
        on_queue_depth: Callable[[int], None] | None = None,
    ):
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0 or max_concurrent_batches < 1:
            raise ValueError("max_batch, max_queue and max_concurrent_batches must be >= 1, max_delay_s >= 0")
        self._handler = handler
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._executor = executor
        self._on_batch = on_batch
        self._on_queue_depth = on_queue_depth
        self.max_concurrent_batches = max_concurrent_batches
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._live = 0  # queued items whose request still waits (``queued``)
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    @property
    def queued(self) -> int:
        """Items waiting for a batch, not counting those of cancelled requests (still in the queue until the
        collector reaches them, but nothing will compute them: counted, they refused live requests)."""
        return self._live

    def _unqueue(self, item: _Item) -> None:
        """``item`` leaves the count: taken by the collector, or its request cancelled (whichever comes first)."""
        if item.queued:
            item.queued = False
            self._live -= 1

    def _depth_changed(self) -> None:
        """Tell ``on_queue_depth`` (the queue-depth gauge) the new depth where it changes, not when /metrics is
        scraped: with several worker processes the scrape reaches one, and the others' values went stale."""
        if self._on_queue_depth is not None:
            try:
                self._on_queue_depth(self._live)
            except Exception:  # noqa: BLE001 - metrics must never break inference
                pass

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._running:  # batches already handed to the executor finish and answer their requests
            await asyncio.gather(*self._running, return_exceptions=True)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._unqueue(item)
            if not item.future.done():
                item.future.set_exception(BatcherStopped("service is shutting down"))
        self._depth_changed()

    async def submit(self, values: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Results for ``values`` (a stack or a list of items), in order. Raises ``QueueFull`` at once if no
        room. A list is not copied here: items are stacked into the batch in the handler's thread."""
        if not self.running:
            raise BatcherStopped("batcher is not running")
        if len(values) == 0:
            return np.empty((0,))
        if self._live + len(values) > self.max_queue:
            raise QueueFull(f"{self._live} items queued, limit {self.max_queue}")
        loop = asyncio.get_running_loop()
        items = [_Item(value, loop.create_future()) for value in values]
        for item in items:
            self._queue.put_nowait(item)
        self._live += len(items)
        self._depth_changed()
        try:
            return np.stack(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            for item in items:  # a cancelled or failed request leaves nothing behind to compute
                item.future.cancel()
                if item.queued:  # not yet taken (so in no batch): its room and its array are given back now
                    self._unqueue(item)
                    item.value = None
            self._depth_changed()
            raise

    async def _collect(self) -> list[_Item]:
        """Up to ``max_batch`` items, waiting at most ``max_delay_s`` after the first. Cancelled by ``stop()``
        meanwhile, it fails the items it took off the queue (``stop()`` fails only those left there; theirs
        would otherwise wait forever). ``asyncio.timeout``, not ``wait_for``: on Python 3.11, ``wait_for``
        swallows a cancellation that arrives with the item, and the collector would then wait on forever."""
        batch = [await self._queue.get()]
        self._unqueue(batch[0])
        try:
            deadline = time.perf_counter() + self.max_delay_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    self._unqueue(batch[-1])
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        batch.append(await self._queue.get())
                        self._unqueue(batch[-1])
                except TimeoutError:
                    break
        except asyncio.CancelledError:
            stopped = BatcherStopped("service is shutting down")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(stopped)
            raise
        finally:
            self._depth_changed()
        return batch

    async def _run(self) -> None:
        """Collect a batch, hand it to the executor, collect the next: up to ``max_concurrent_batches`` run at
        once, so that the next batch can start the moment the handler has room instead of after a round trip
        to the clients (with closed-loop clients, one batch at a time left the inference thread idle about a
        third of the time, issue 12)."""
        slots = asyncio.Semaphore(self.max_concurrent_batches)
        while True:
            await slots.acquire()
            try:
                batch = [item for item in await self._collect() if not item.future.done()]
            except BaseException:
                slots.release()
                raise
            if not batch:
                slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(lambda done: (self._running.discard(done), slots.release()))

    async def _run_batch(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        waits = [started - item.enqueued for item in batch]
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._stack_and_run, [i.value for i in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"handler returned {len(outputs)} results for {len(batch)} items")
        except Exception as exc:  # noqa: BLE001 - the failure belongs to this batch's requests only
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            self._report(BatchStats(len(batch), waits, time.perf_counter() - started, ok=False))
            return
        for item, output in zip(batch, outputs):
            if not item.future.done():
                item.future.set_result(output)
        self._report(BatchStats(len(batch), waits, time.perf_counter() - started, ok=True))

    def _stack_and_run(self, values: list[np.ndarray]) -> np.ndarray:
        """In the executor: the copy into one batch array stays off the event loop (numpy releases the
        GIL for it, and under load the loop then waited to get it back)."""
        return self._handler(np.stack(values))

    def _report(self, stats: BatchStats) -> None:
        if self._on_batch is not None:
            try:
                self._on_batch(stats)
            except Exception:  # noqa: BLE001 - metrics must never break inference
                pass
