"""One patient of 500 distinct full-size images through the gateway, cold and warm, against the
in-process pipeline (decode + ONNX inference + ensemble, no HTTP).

    make bench-gateway    (python -m bench.bench_gateway [--images 500])
Targets: cold <= 1.5x the in-process pipeline; warm <= 5% of cold.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from bench.bench_cells import distinct_images
from bench.common import multipart_body
from services.cell_classifier.decoding import decode_image
from services.cell_classifier.inference import CellModel
from services.cell_classifier.settings import CellServiceSettings
from services.subtype.ensemble import SubtypeEnsemble
from services.subtype.predictor import SubtypePredictor
from services.subtype.settings import DEFAULT_MODEL_DIR as SUBTYPE_MODEL_DIR
from tests.helpers.keys import AUTH
from tests.helpers.processes import start_cell_service, start_gateway, start_subtype_service


def in_process(images: list[tuple[str, bytes]]) -> float:
    settings = CellServiceSettings()
    model = CellModel(settings.model_dir, "auto", settings.inference_threads)
    model.warm_up()
    predictor = SubtypePredictor(SubtypeEnsemble(SUBTYPE_MODEL_DIR))
    started = time.perf_counter()
    with ThreadPoolExecutor(settings.decode_workers) as pool:
        labels = []
        for i in range(0, len(images), 64):
            arrays = list(pool.map(lambda item: decode_image(item[1], settings.max_pixels, size=model.input_size),
                                       images[i: i + 64]))
            labels += [model.label(p).label for p in model.predict(np.stack(arrays))]
    counts = {label: labels.count(label) for label in set(labels)}
    predictor.predict_many([counts])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    images = distinct_images(args.images)
    baseline = min(in_process(images) for _ in range(2))
    body, content_type = multipart_body(images)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        cell = start_cell_service(tmp_path, CELL_PROVIDER="auto")
        subtype = start_subtype_service(tmp_path)
        gateway = start_gateway(tmp_path, cell.url, subtype.url, ready_path="/readyz")
        try:
            url = f"{gateway.url}/patients/BENCH-1/classify"
            headers = {"content-type": content_type, **AUTH}
            started = time.perf_counter()
            cold = httpx.post(url, content=body, headers=headers, timeout=600)
            cold_s = time.perf_counter() - started
            started = time.perf_counter()
            warm = httpx.post(url, content=body, headers=headers, timeout=600)
            warm_s = time.perf_counter() - started
            assert cold.status_code == warm.status_code == 200, (cold.text[:300], warm.text[:300])
            assert warm.json()["cached"] is True
        finally:
            for process in (gateway, subtype, cell):
                process.stop()
    print(f"| {args.images} distinct full-size images, one patient | seconds | ratio |\n|---|---|---|")
    print(f"| in-process pipeline (decode + ONNX + ensemble) | {baseline:.2f} | 1.00 |")
    print(f"| gateway, cold (no cache) | {cold_s:.2f} | {cold_s / baseline:.2f} x in-process |")
    print(f"| gateway, warm (the stored report) | {warm_s:.3f} | {warm_s / cold_s:.1%} of cold |")
    print(f"targets: cold <= 1.5x in-process ({'met' if cold_s <= 1.5 * baseline else 'NOT met'}), "
          f"warm <= 5% of cold ({'met' if warm_s <= 0.05 * cold_s else 'NOT met'})")


if __name__ == "__main__":
    main()
