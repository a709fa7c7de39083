"""Helpers shared by the benchmarks: pre-encoded multipart bodies, closed-loop clients, RSS sampling."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass

import httpx
import numpy as np
import psutil


def multipart_body(files: list[tuple[str, bytes]], field: str = "images") -> tuple[bytes, str]:
    """Encode once, send many times: the client's cost stays out of the measurement."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, data in files:
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                      f"Content-Type: application/octet-stream\r\n\r\n".encode())
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


@dataclass
class LoadResult:
    requests: int
    images: int
    errors: int
    seconds: float
    latencies_s: list[float]

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")


async def closed_loop(url: str, bodies: list[tuple[bytes, str]], images_per_request: int, clients: int,
                      duration_s: float, warmup_s: float = 2.0) -> LoadResult:
    """``clients`` concurrent clients, each sending its next request as soon as the last one returns."""
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def one_client(index: int) -> None:
            i = index
            while time.perf_counter() < stop_at:
                body, content_type = bodies[i % len(bodies)]
                i += clients
                sent = time.perf_counter()
                response = await client.post(url, content=body, headers={"content-type": content_type})
                done = time.perf_counter()
                if sent >= measure_from and done <= stop_at:
                    counts["requests"] += 1
                    latencies.append(done - sent)
                    if response.status_code != 200:
                        counts["errors"] += 1

        await asyncio.gather(*(one_client(i) for i in range(clients)))
    ok = counts["requests"] - counts["errors"]
    return LoadResult(counts["requests"], ok * images_per_request, counts["errors"], duration_s, latencies)


class PeakRss:
    """Samples the resident memory of a process and its children in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.05):
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.process.memory_info().rss + sum(c.memory_info().rss for c in self.process.children(True))
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
