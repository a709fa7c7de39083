"""Decode workers: a lean thread pool for the event loop's per-image jobs (issue 12).

``loop.run_in_executor`` on a ``ThreadPoolExecutor`` costs, per job, a ``concurrent.futures.Future``
(with its own lock and condition), the pool's thread-count check and the chaining of that future
to an asyncio one; at hundreds of 1-image requests per second that was a measurable share of the
event loop's time. Here a job is one queue put, and its answer one ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class WorkersStopped(RuntimeError):
    """The workers were shut down before the job ran."""


def _deliver(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled meanwhile
        return
    if error is None:
        future.set_result(result)
    elif isinstance(error, (StopIteration, StopAsyncIteration)):  # asyncio futures refuse these
        future.set_exception(RuntimeError(f"{type(error).__name__} raised in a worker"))
    else:
        future.set_exception(error)


class LoopWorkers:
    """``await workers.run(fn, *args)``: ``fn(*args)`` in one of ``count`` daemon threads named
    ``{name}_{i}``, its result or exception delivered to the calling event loop."""

    def __init__(self, count: int, name: str):
        if count < 1:
            raise ValueError("count must be >= 1")
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._stopped:  # behind the threads' stop markers it would never run
            future.set_exception(WorkersStopped("the decode workers are shut down"))
            return future
        self._jobs.put((loop, future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            loop, future, fn, args = job
            if future.cancelled():  # a plain attribute read: the caller gave up before the job started
                continue
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # noqa: BLE001 - the job's failure belongs to its caller
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_deliver, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits for this answer
                pass
            del job, future, result, error

    def shutdown(self) -> None:
        """Fail the jobs not started with ``WorkersStopped`` (the service is stopping; their callers would
        otherwise wait forever), refuse new ones alike, and let the threads end after their current job."""
        self._stopped = True
        try:
            while True:
                job = self._jobs.get_nowait()
                if job is not _STOP:
                    loop, future, _, _ = job
                    try:  # called on the loop's thread or any other
                        loop.call_soon_threadsafe(_deliver, future, None, WorkersStopped(
                            "the decode workers were shut down before this job ran"))
                    except RuntimeError:  # the loop is closed: nobody waits for this answer
                        pass
        except queue.Empty:
            pass
        for _ in self._threads:
            self._jobs.put(_STOP)
