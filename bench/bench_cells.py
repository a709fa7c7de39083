"""Benchmark of the cell classifier: preprocessing and inference alone, the in-process ceiling of
today's path and of the new one, the running service against the new ceiling, and the 1.2.0 model's
service beside the committed model's, in one run.

    make bench-cells        (python -m bench.bench_cells [--duration 20] [--clients 32] [--no-baseline])

1. Preprocessing alone, per decoder path (``shared.preprocessing.DECODERS``): the service's decode
   function on the full-size JPEGs in its decode-worker thread pool, then the same plus the
   per-image appearance distance (what a decode worker does per image). ``full``: today's path
   (every file decoded at full size, then resized); ``draft``: the new one (JPEG DCT-domain
   downscaling to the smallest scale that keeps the input size, then resized).
2. Inference alone, float and int8 (``CELL_MODEL_VARIANT``), on decoded arrays, batch sizes 1-128.
3. The ceiling: decode (+ appearance) in the worker pool, then ONNX inference, one batch after the
   other in one process, per batch size; today's path = full decode + float model, the new path =
   draft decode + the variant the service chooses by default. The best batch is the ceiling.
4. The service as a real process (its default variant and decoder) with ``--workers`` service
   processes (CELL_WORKERS, default 2) and, for comparison, with 1, 32 concurrent closed-loop clients
   sending 1 image per request, then 64: images/s, p50/p99 latency, errors, 503 shed, and the ratio to
   the new ceiling (a one-process figure: two processes can pass it).
5. The 1.2.0 model (8 outputs, vocabulary 1) from git history (``BASELINE_COMMIT``), run through
   today's service code with its card's class order set to today's vocabulary: its labels are
   meaningless there, its speed is what is measured. It has no int8 file and no appearance reference.

``bench.bench_gpu`` runs the same on the CUDA provider.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import PeakRss, closed_loop, multipart_body
from services.cell_classifier.decoding import decode_image
from services.cell_classifier.inference import CellModel, model_variants
from services.cell_classifier.settings import CellServiceSettings
from shared.hashing import file_sha256
from shared.preprocessing import DECODERS
from shared.vocabulary import CELL_TYPES
from tests.helpers.images import encode, fullsize_images
from tests.helpers.processes import REPO_ROOT, start_cell_service

BASELINE_COMMIT = "abd83a1071c5e8b074377312328edfa232ae8698"  # "Cell CNN 1.2.0"
MODEL_PATH = "services/cell_classifier/model"
BATCH_SIZES = (1, 8, 16, 32, 64, 128)
PATH_NAMES = {"full": "today's path: full decode + resize", "draft": "new path: JPEG DCT-domain downscale + resize"}
TARGETS = {"ceiling": 1.5, 1: 0.8, 64: 0.9}


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


@dataclass
class Options:
    """What the in-process measurements and the service run with."""
    provider: str = "cpu"  # CELL_PROVIDER
    decode_workers: int = field(default_factory=lambda: CellServiceSettings().decode_workers)
    inference_threads: int = field(default_factory=lambda: CellServiceSettings().inference_threads)
    service_env: dict[str, str] = field(default_factory=dict)


def timed_rounds(step, n_images: int, min_seconds: float) -> float:
    """Images/s of ``step()`` (which handles ``n_images``), repeated for at least ``min_seconds``."""
    step()  # warm
    done, started = 0, time.perf_counter()
    while True:
        step()
        done += n_images
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def preprocessing_alone(images, opts: Options, model: CellModel, min_seconds: float) -> dict[str, dict[str, float]]:
    """Per decoder path: decode + resize, and decode + resize + appearance distance, in the worker pool."""
    data = [d for _, d in images]
    limit = CellServiceSettings().max_pixels
    out = {}
    with ThreadPoolExecutor(opts.decode_workers) as pool:
        for decoder in DECODERS:
            def decode(d, decoder=decoder):
                return decode_image(d, limit, decoder, model.input_size)

            def decode_and_appearance(d, decoder=decoder):
                return model.appearance_distance(decode_image(d, limit, decoder, model.input_size))

            out[decoder] = {"decode": timed_rounds(lambda: list(pool.map(decode, data)), len(data), min_seconds),
                            "worker": timed_rounds(lambda: list(pool.map(decode_and_appearance, data)), len(data),
                                                   min_seconds)}
    return out


def inference_alone(arrays: np.ndarray, model: CellModel, min_seconds: float) -> dict[int, float]:
    per_batch = {}
    for size in BATCH_SIZES:
        batches = [arrays[i: i + size] for i in range(0, len(arrays) - size + 1, size)]
        # infer: what the service's batches run (the CNN's probabilities and embeddings, then the APL head)
        per_batch[size] = timed_rounds(lambda: [model.infer(b) for b in batches], len(batches) * size,
                                       min_seconds)
    return per_batch


def ceiling(images, model: CellModel, decoder: str, opts: Options, min_seconds: float) -> dict[int, float]:
    """Decode (+ appearance) in the worker pool, then inference, per batch size, one after the other."""
    limit = CellServiceSettings().max_pixels
    data = [d for _, d in images]

    def work(d):
        array = decode_image(d, limit, decoder, model.input_size)
        return array, model.appearance_distance(array)

    results = {}
    with ThreadPoolExecutor(opts.decode_workers) as pool:
        for size in BATCH_SIZES:
            chunks = [data[i: i + size] for i in range(0, len(data) - size + 1, size)]

            def run():
                for chunk in chunks:
                    model.infer(np.stack([a for a, _ in pool.map(work, chunk)]))

            results[size] = timed_rounds(run, len(chunks) * size, min_seconds)
    return results


def service_rows(model_dir: Path, images, args, opts: Options, name: str, workers: int) -> dict:
    """The service as a real process with ``workers`` worker processes (CELL_WORKERS), given the cores the
    in-process rows use (CELL_CORES) to share out among them by its own rule (``cores_per_worker``)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"CELL_PROVIDER": opts.provider, "CELL_MODEL_DIR": str(model_dir), "CELL_WORKERS": str(workers),
               "CELL_CORES": str(opts.decode_workers), **opts.service_env}
        service = start_cell_service(Path(tmp), **env)
        try:
            url = f"{service.url}/v1/classify"
            rows = {}
            with PeakRss(service.pid) as rss:
                for per_request in (1, 64):
                    bodies = [multipart_body(images[i: i + per_request])
                              for i in range(0, len(images) - per_request + 1, per_request)]
                    rows[per_request] = asyncio.run(closed_loop(url, bodies, per_request, args.clients, args.duration))
                    print(f"  {name} service, {workers} worker process(es): {per_request} image(s)/request: "
                          f"{rows[per_request].images_per_s:.0f} images/s", flush=True)
            card = __import__("httpx").get(f"{service.url}/v1/model", timeout=10).json()
        finally:
            service.stop()
    return {"rows": rows, "rss": rss.peak, "version": card["version"], "provider": card["provider"],
            "variant": card.get("variant", "float"), "workers": workers}


def best(per_batch: dict[int, float]) -> tuple[int, float]:
    size = max(per_batch, key=per_batch.get)
    return size, per_batch[size]


def fmt_batches(per_batch: dict[int, float]) -> str:
    return ", ".join(f"{b}: {v:.0f}" for b, v in per_batch.items())


def measure_committed(model_dir: Path, images, args, opts: Options) -> dict:
    served = CellModel(model_dir, opts.provider, opts.inference_threads, opts.service_env.get("CELL_MODEL_VARIANT",
                                                                                            "auto"))
    chosen = served.variant
    variants = [v for v in ("float", "int8") if v in model_variants(served.card)]
    if opts.provider == "cuda":
        variants = [chosen]  # int8 QDQ is a CPU speed-up; on CUDA float runs
    models = {chosen: served, **{v: CellModel(model_dir, opts.provider, opts.inference_threads, v)
                                 for v in variants if v != chosen}}
    for model in models.values():
        model.warm_up()
    print(f"provider {served.provider}; variants {sorted(models)}; the service runs {chosen}", flush=True)

    pre = preprocessing_alone(images, opts, served, args.min_seconds)
    for decoder, r in pre.items():
        print(f"preprocessing {decoder}: {r['decode']:.0f}/s, with appearance {r['worker']:.0f}/s", flush=True)
    limit = CellServiceSettings().max_pixels
    arrays = np.stack([decode_image(d, limit, size=served.input_size) for _, d in images])
    inference = {v: inference_alone(arrays, m, args.min_seconds) for v, m in models.items()}
    for v, per_batch in inference.items():
        print(f"inference {v}: {fmt_batches(per_batch)}", flush=True)
    old_variant = "float" if "float" in models else chosen
    ceilings = {"old": ceiling(images, models[old_variant], "full", opts, args.min_seconds),
                "new": ceiling(images, served, "draft", opts, args.min_seconds)}
    if "int8" in models and chosen != "int8":  # what CELL_MODEL_VARIANT=int8 would give
        ceilings["new, int8"] = ceiling(images, models["int8"], "draft", opts, args.min_seconds)
    for path, per_batch in ceilings.items():
        print(f"ceiling {path}: {fmt_batches(per_batch)}", flush=True)
    service = service_rows(model_dir, images, args, opts, "committed", args.workers)
    single = service_rows(model_dir, images, args, opts, "committed", 1) if args.workers > 1 else None
    return {"pre": pre, "inference": inference, "ceilings": ceilings, "old_variant": old_variant,
            "new_variant": chosen, "provider": served.provider, "service": service, "single_process": single,
            "version": served.card["version"]}


def measure_baseline(images, args, opts: Options) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = baseline_model_dir(Path(tmp) / "baseline")
        model = CellModel(model_dir, opts.provider, opts.inference_threads, "float")
        model.warm_up()
        per_batch = ceiling(images, model, "draft", opts, args.min_seconds)
        print(f"1.2.0 ceiling (new path, float): {fmt_batches(per_batch)}", flush=True)
        float_opts = Options(opts.provider, opts.decode_workers, opts.inference_threads,
                             {**opts.service_env, "CELL_MODEL_VARIANT": "float"})
        service = service_rows(model_dir, images, args, float_opts, "1.2.0", args.workers)
    return {"ceiling": per_batch, "service": service}


def print_table(r: dict, baseline: dict | None, args, opts: Options) -> None:
    workers = opts.decode_workers
    print()
    print("| step | path / variant | images/s | p50 ms | p99 ms | errors | 503 shed | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    full, draft = r["pre"]["full"], r["pre"]["draft"]
    for key, what in (("decode", "decode + resize"), ("worker", "decode + resize + appearance distance")):
        print(f"| preprocessing alone ({what}), {workers} threads | {PATH_NAMES['full']} | {full[key]:.0f} "
              "| | | | | 1.00 |")
        print(f"| preprocessing alone ({what}), {workers} threads | {PATH_NAMES['draft']} | {draft[key]:.0f} "
              f"| | | | | {draft[key] / full[key]:.2f} x today's |")
    inference = {v: best(p) for v, p in r["inference"].items()}
    reference = inference.get("float", next(iter(inference.values())))[1]
    for variant, (size, value) in inference.items():
        print(f"| inference alone, batch {size} (best) | {variant} | {value:.0f} | | | | | "
              f"{value / reference:.2f} x float |")
    old_batch, old = best(r["ceilings"]["old"])
    new_batch, new = best(r["ceilings"]["new"])
    print(f"| ceiling: in-process decode + ONNX, batch {old_batch} | today's path: full decode + "
          f"{r['old_variant']} | {old:.0f} | | | | | 1.00 |")
    print(f"| ceiling: in-process decode + ONNX, batch {new_batch} | new path: DCT downscale + "
          f"{r['new_variant']} | {new:.0f} | | | | | {new / old:.2f} x today's (target >= {TARGETS['ceiling']}) |")
    if "new, int8" in r["ceilings"]:
        i_batch, i = best(r["ceilings"]["new, int8"])
        print(f"| ceiling: in-process decode + ONNX, batch {i_batch} | DCT downscale + int8 (CELL_MODEL_VARIANT=int8, "
              f"not the default) | {i:.0f} | | | | | {i / old:.2f} x today's |")
    for service in filter(None, (r["service"], r.get("single_process"))):
        for per_request, result in service["rows"].items():
            target = f" (target >= {TARGETS[per_request]})" if service is r["service"] else " (for comparison)"
            print(f"| service, {service['workers']} worker process(es), {args.clients} clients x {per_request} "
                  f"image(s)/request | new path: DCT downscale + {service['variant']} | {result.images_per_s:.0f} | "
                  f"{result.percentile_ms(50):.1f} | {result.percentile_ms(99):.1f} | {result.errors} | "
                  f"{result.shed} | {result.images_per_s / new:.2f} of the new ceiling{target} |")
    if baseline:
        b_batch, b = best(baseline["ceiling"])
        print(f"| 1.2.0: ceiling, batch {b_batch} | new path: DCT downscale + float | {b:.0f} | | | | | |")
        for per_request, result in baseline["service"]["rows"].items():
            mine = r["service"]["rows"][per_request].images_per_s
            print(f"| 1.2.0: service, {args.workers} worker process(es), {args.clients} clients x {per_request} "
                  f"image(s)/request | new path: DCT "
                  f"downscale + float | {result.images_per_s:.0f} | {result.percentile_ms(50):.1f} | "
                  f"{result.percentile_ms(99):.1f} | {result.errors} | {result.shed} | "
                  f"committed {r['version']} / 1.2.0: {mine / result.images_per_s:.2f} |")
    print()
    print("per batch size (images/s): "
          + "; ".join(f"inference {v}: {fmt_batches(p)}" for v, p in r["inference"].items())
          + "; " + "; ".join(f"ceiling {k}: {fmt_batches(p)}" for k, p in r["ceilings"].items()))
    single = r.get("single_process")
    print(f"provider {r['provider']}; service: variant {r['service']['variant']}, peak RSS (all processes) "
          f"{r['service']['rss'] / 2**20:.0f} MiB with {r['service']['workers']} worker process(es)"
          + (f", {single['rss'] / 2**20:.0f} MiB with 1" if single else "")
          + (f"; 1.2.0 service peak RSS {baseline['service']['rss'] / 2**20:.0f} MiB" if baseline else ""))
    print(f"targets: new ceiling >= {TARGETS['ceiling']} x today's; service >= {TARGETS[64]} of the new ceiling at "
          f"64 images/request, >= {TARGETS[1]} at 1; RSS < 1024 MiB")
    sys.stdout.flush()


def parser(description: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured per service scenario")
    p.add_argument("--min-seconds", type=float, default=2.0, help="seconds per in-process measurement")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--images", type=int, default=512, help="distinct full-size JPEGs")
    p.add_argument("--no-baseline", action="store_true", help="skip the 1.2.0 model")
    p.add_argument("--workers", type=int, default=2,
                   help="the service's worker processes (CELL_WORKERS) for the rows held to the targets; with more "
                        "than 1 the committed model's service is also measured with 1 process, for comparison")
    return p


def run(args, opts: Options) -> None:
    images = distinct_images(args.images)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(images)} distinct 360x363 JPEGs; "
          f"{opts.decode_workers} decode workers", flush=True)
    started = time.perf_counter()
    result = measure_committed(CellServiceSettings().model_dir, images, args, opts)
    baseline = None if args.no_baseline else measure_baseline(images, args, opts)
    print_table(result, baseline, args, opts)
    print(f"bench time {time.perf_counter() - started:.0f} s")


def main() -> None:
    run(parser().parse_args(), Options())


if __name__ == "__main__":
    main()
