"""Benchmark of the cell classifier: the in-process ceiling against the running service.

    make bench-cells        (python -m bench.bench_cells [--duration 20] [--clients 32])

1. Ceiling: decode (same decoder and thread count as the service) + ONNX inference of
   full-size originals, in-process, for several batch sizes; the best is the ceiling.
2. The service as a real process, 32 concurrent closed-loop clients sending 1 image per
   request, then 64 images per request: images/s, p50/p99 latency, errors.
3. The service's peak RSS over the whole run, and the ratios service/ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import PeakRss, closed_loop, multipart_body
from services.cell_classifier.decoding import decode_image
from services.cell_classifier.inference import CellModel
from services.cell_classifier.settings import CellServiceSettings
from tests.helpers.images import encode, fullsize_images
from tests.helpers.processes import start_cell_service


def distinct_images(n: int) -> list[tuple[str, bytes]]:
    """``n`` distinct full-size JPEGs: the 64 originals, re-encoded at varying quality when more are needed."""
    originals = [(p.name, p.read_bytes()) for _, p in fullsize_images()]
    out = list(originals)
    quality = 95
    while len(out) < n:
        for name, data in originals:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            out.append((f"q{quality}-{name}", encode(image, "JPEG", quality=quality)))
        quality -= 1
    return out[:n]


def ceiling(images: list[tuple[str, bytes]], batch_sizes: tuple[int, ...]) -> dict[int, float]:
    settings = CellServiceSettings()
    model = CellModel(settings.model_dir, "auto", settings.inference_threads)
    model.warm_up()
    results = {}
    with ThreadPoolExecutor(settings.decode_workers) as pool:
        for size in batch_sizes:
            rounds = max(1, 512 // size)
            started = time.perf_counter()
            for r in range(rounds):
                chunk = [images[(r * size + i) % len(images)][1] for i in range(size)]
                arrays = list(pool.map(lambda d: decode_image(d, settings.max_pixels), chunk))
                model.predict(np.stack(arrays))
            results[size] = rounds * size / (time.perf_counter() - started)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per scenario")
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()

    images = distinct_images(512)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(images)} distinct 360x363 JPEGs", flush=True)
    per_batch = ceiling(images, (1, 8, 16, 32, 64, 128))
    best_batch = max(per_batch, key=per_batch.get)
    best = per_batch[best_batch]
    print("ceiling (in-process decode + ONNX): " + ", ".join(f"batch {b}: {v:.0f}/s" for b, v in per_batch.items()),
          flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        service = start_cell_service(Path(tmp), CELL_PROVIDER="auto")
        try:
            url = f"{service.url}/v1/classify"
            rows = []
            with PeakRss(service.pid) as rss:
                for per_request in (1, 64):
                    bodies = [multipart_body(images[i: i + per_request])
                              for i in range(0, len(images) - per_request + 1, per_request)]
                    result = asyncio.run(closed_loop(url, bodies, per_request, args.clients, args.duration))
                    rows.append((per_request, result))
                    print(f"  {per_request} image(s)/request: {result.images_per_s:.0f} images/s", flush=True)
            provider = __import__("httpx").get(f"{service.url}/v1/model", timeout=10).json()["provider"]
        finally:
            service.stop()

    print()
    print("| scenario | images/s | p50 ms | p99 ms | errors | 503 shed | service/ceiling |")
    print("|---|---|---|---|---|---|---|")
    print(f"| ceiling: in-process decode + ONNX, batch {best_batch} | {best:.0f} | | | | | 1.00 |")
    for per_request, result in rows:
        print(f"| service, {args.clients} clients x {per_request} image(s)/request | {result.images_per_s:.0f} | "
              f"{result.percentile_ms(50):.1f} | {result.percentile_ms(99):.1f} | {result.errors} | {result.shed} | "
              f"{result.images_per_s / best:.2f} |")
    print()
    print(f"service peak RSS: {rss.peak / 2**20:.0f} MiB; provider {provider}; targets: >= 0.80 (64/request), "
          f">= 0.60 (1/request), RSS < 1024 MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
