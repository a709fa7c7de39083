"""Helpers shared by the benchmarks: pre-encoded multipart bodies, closed-loop clients, RSS sampling."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import psutil


SHED_SUFFIX = " [503 shed]"  # locust request name suffix of answers refused by load shedding


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
    latencies_s: list[float]  # of accepted requests
    shed: int = 0  # 503 answers (queue full), not counted in requests

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")


class RawHttpConnection:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams.

    On a 2-core machine httpx spent most of a core per ~200 requests/s, CPU that the service
    under test then lacked; this client sends pre-built request bytes and reads the answer by
    its Content-Length, for a few tens of microseconds per request.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(raw)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" not in headers:
            raise RuntimeError("the benchmark client needs Content-Length in every answer")
        body = await self._reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None


def raw_post(url: str, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one HTTP/1.1 POST of ``body`` to ``url``'s path."""
    parts = urlsplit(url)
    lines = [f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
             f"Host: {parts.netloc}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def closed_loop(url: str, bodies: list[tuple[bytes, str]], images_per_request: int, clients: int,
                      duration_s: float, warmup_s: float = 2.0) -> LoadResult:
    """``clients`` concurrent clients, each sending its next request as soon as the last one returns,
    or, after a 503 (load shed), once its Retry-After has passed, as a well-behaved client does.

    Throughput counts the requests that *complete* inside the measured window (after
    ``warmup_s``, for ``duration_s``), whenever they were sent: counting only requests both sent
    and completed inside it would drop every request in flight at either edge, a large bias
    when one request takes seconds (64 images x 32 clients).
    """
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0, "shed": 0}
    parts = urlsplit(url)
    requests = [raw_post(url, body, content_type) for body, content_type in bodies]
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def one_client(index: int) -> None:
        connection = RawHttpConnection(parts.hostname, parts.port)
        i = index
        try:
            while time.perf_counter() < stop_at:
                raw = requests[i % len(requests)]
                i += clients
                sent = time.perf_counter()
                status, headers, _ = await connection.request(raw)
                done = time.perf_counter()
                if not measure_from <= done <= stop_at:
                    pass
                elif status == 503:
                    counts["shed"] += 1
                else:
                    counts["requests"] += 1
                    latencies.append(done - sent)
                    if status != 200:
                        counts["errors"] += 1
                if status == 503:
                    await asyncio.sleep(min(float(headers.get("retry-after", 1)), max(stop_at - done, 0)))
        finally:
            await connection.close()

    await asyncio.gather(*(one_client(i) for i in range(clients)))
    ok = counts["requests"] - counts["errors"]
    return LoadResult(counts["requests"], ok * images_per_request, counts["errors"], duration_s, latencies,
                      counts["shed"])


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
