"""Benchmark of the cell classifier: the in-process ceiling against the running service, for the
committed model and the 1.2.0 model side by side in one run.

    make bench-cells        (python -m bench.bench_cells [--duration 20] [--clients 32] [--no-baseline])

For each model:
1. Ceiling: decode (same decoder and thread count as the service) + ONNX inference of
   full-size originals, in-process, for several batch sizes; the best is the ceiling.
2. The service as a real process, 32 concurrent closed-loop clients sending 1 image per
   request, then 64 images per request: images/s, p50/p99 latency, errors.
3. The service's peak RSS over the whole run, and the ratios service/ceiling.
Then the ratio of the committed model's service to the 1.2.0 service (target >= 0.8).

The 1.2.0 model (8 outputs, vocabulary 1) is taken from git history (``BASELINE_COMMIT``) and run
through today's service code with its card's class order set to today's vocabulary: its labels
are meaningless there, its speed is what is measured. It has no appearance reference, so its
service skips that per-image step.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
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
from shared.hashing import file_sha256
from shared.vocabulary import CELL_TYPES
from tests.helpers.processes import REPO_ROOT, start_cell_service

BASELINE_COMMIT = "abd83a1071c5e8b074377312328edfa232ae8698"  # "Cell CNN 1.2.0"
MODEL_PATH = "services/cell_classifier/model"


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


def baseline_model_dir(target: Path) -> Path:
    """The 1.2.0 ONNX model and its card from git history, card patched to load in today's service."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("cell_cnn.onnx", "model_card.json"):
        data = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:{MODEL_PATH}/{name}"], cwd=REPO_ROOT,
                              capture_output=True, check=True).stdout
        (target / name).write_bytes(data)
    card = json.loads((target / "model_card.json").read_text())
    assert file_sha256(target / card["file"]) == card["sha256"]
    card["class_order"] = list(CELL_TYPES)  # speed only: see the module docstring
    (target / "model_card.json").write_text(json.dumps(card))
    return target


def ceiling(images: list[tuple[str, bytes]], batch_sizes: tuple[int, ...], model_dir: Path) -> dict[int, float]:
    settings = CellServiceSettings()
    model = CellModel(model_dir, "auto", settings.inference_threads)
    model.warm_up()
    results = {}
    with ThreadPoolExecutor(settings.decode_workers) as pool:
        for size in batch_sizes:
            rounds = max(1, 512 // size)
            started = time.perf_counter()
            for r in range(rounds):
                chunk = [images[(r * size + i) % len(images)][1] for i in range(size)]
                # decode + appearance distance, as the service's decode workers do
                arrays = list(pool.map(lambda d: decode_image(d, settings.max_pixels), chunk))
                list(pool.map(model.appearance_distance, arrays))
                model.predict(np.stack(arrays))
            results[size] = rounds * size / (time.perf_counter() - started)
    return results


def measure(name: str, model_dir: Path, images, args) -> dict:
    """Ceiling and service rows for one model directory."""
    per_batch = ceiling(images, (1, 8, 16, 32, 64, 128), model_dir)
    best_batch = max(per_batch, key=per_batch.get)
    print(f"{name} ceiling (in-process decode + ONNX): "
          + ", ".join(f"batch {b}: {v:.0f}/s" for b, v in per_batch.items()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        service = start_cell_service(Path(tmp), CELL_PROVIDER="auto", CELL_MODEL_DIR=str(model_dir))
        try:
            url = f"{service.url}/v1/classify"
            rows = {}
            with PeakRss(service.pid) as rss:
                for per_request in (1, 64):
                    bodies = [multipart_body(images[i: i + per_request])
                              for i in range(0, len(images) - per_request + 1, per_request)]
                    rows[per_request] = asyncio.run(closed_loop(url, bodies, per_request, args.clients, args.duration))
                    print(f"  {name}: {per_request} image(s)/request: {rows[per_request].images_per_s:.0f} images/s",
                          flush=True)
            card = __import__("httpx").get(f"{service.url}/v1/model", timeout=10).json()
        finally:
            service.stop()
    return {"name": name, "version": card["version"], "provider": card["provider"], "best_batch": best_batch,
            "ceiling": per_batch[best_batch], "rows": rows, "rss": rss.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per scenario")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--no-baseline", action="store_true", help="measure the committed model only")
    args = parser.parse_args()

    images = distinct_images(512)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(images)} distinct 360x363 JPEGs", flush=True)
    results = [measure("committed", CellServiceSettings().model_dir, images, args)]
    if not args.no_baseline:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(measure("1.2.0", baseline_model_dir(Path(tmp) / "baseline"), images, args))

    print()
    print("| model | scenario | images/s | p50 ms | p99 ms | errors | 503 shed | service/ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        label = f"{r['name']} ({r['version']})"
        print(f"| {label} | ceiling: in-process decode + ONNX, batch {r['best_batch']} | {r['ceiling']:.0f} "
              "| | | | | 1.00 |")
        for per_request, result in r["rows"].items():
            print(f"| {label} | service, {args.clients} clients x {per_request} image(s)/request | "
                  f"{result.images_per_s:.0f} | {result.percentile_ms(50):.1f} | {result.percentile_ms(99):.1f} | "
                  f"{result.errors} | {result.shed} | {result.images_per_s / r['ceiling']:.2f} |")
    print()
    for r in results:
        print(f"{r['name']}: service peak RSS {r['rss'] / 2**20:.0f} MiB; provider {r['provider']}")
    if len(results) == 2:
        new, old = results
        ratios = {k: new["rows"][k].images_per_s / old["rows"][k].images_per_s for k in new["rows"]}
        print("committed / 1.2.0 service images/s: "
              + ", ".join(f"{k} image(s)/request {v:.2f}" for k, v in ratios.items())
              + f"; ceiling {new['ceiling'] / old['ceiling']:.2f} (target >= 0.80)")
    print("targets: service/ceiling >= 0.80 (64/request), >= 0.60 (1/request), RSS < 1024 MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
