"""Prometheus metrics of the cell service, in a registry owned by the app.

With several worker processes (``CELL_WORKERS``) the launcher sets ``PROMETHEUS_MULTIPROC_DIR``
before the workers start: each process then writes its values to files there, and ``/metrics``,
whichever worker answers it, adds up every process's (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

from services.cell_classifier.batcher import BatchStats

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
__all__ = ["CONTENT_TYPE_LATEST", "CellMetrics", "MULTIPROCESS_DIR_ENV"]


class CellMetrics:
    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry()
        self.requests = Counter("cell_requests", "Classify requests by outcome", ["outcome"], registry=self.registry)
        self.images = Counter("cell_images", "Images received by result", ["result"], registry=self.registry)
        self.errors = Counter("cell_errors", "Requests answered with an error status", ["status"],
                              registry=self.registry)
        buckets = sorted({1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256, max_batch})
        self.batch_size = Histogram("cell_batch_size", "Images per ONNX run", buckets=buckets, registry=self.registry)
        self.queue_wait = Histogram("cell_queue_wait_seconds", "Time an image waits before its batch runs",
                                    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                                    registry=self.registry)
        self.inference = Histogram("cell_inference_seconds", "Duration of one ONNX run",
                                   buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                                   registry=self.registry)
        # the children every request touches, looked up once (``labels()`` costs a lock and a dict per call)
        self.requests_ok = self.requests.labels("ok")
        self.requests_error = self.requests.labels("error")
        self.images_classified = self.images.labels("classified")
        self.images_error = self.images.labels("error")
        self.failed_batches = Counter("cell_failed_batches", "ONNX runs that raised", registry=self.registry)
        # all live worker processes' queues together; each process's value is set by its batcher whenever its
        # queue changes (on_queue_depth), since a scrape reaches only one of them
        self.queue_depth = Gauge("cell_queue_depth", "Images waiting for inference", registry=self.registry,
                                 multiprocess_mode="livesum")
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR_ENV))

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format: this process's, or every worker process's summed."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def close(self) -> None:
        """At a worker's exit: its live gauges (the queue depth) stop counting."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())

    def count_response(self, status: int) -> None:
        """One /v1/classify answer: ``ok`` below 400, else ``error`` and its status."""
        if status < 400:
            self.requests_ok.inc()
        else:
            self.requests_error.inc()
            self.errors.labels(str(status)).inc()

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.inference.observe(stats.run_s)
        for wait in stats.queue_waits_s:
            self.queue_wait.observe(wait)
        if not stats.ok:
            self.failed_batches.inc()


def forget_dead_worker(pid: int) -> None:
    """In the process manager, for a worker that died without ``close()`` (killed, crashed): its live gauges
    (its last queue depth) leave the sum; its counters stay, as the requests it answered did happen."""
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        multiprocess.mark_process_dead(pid)
