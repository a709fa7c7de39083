"""Latency of the subtype service for one patient per request (target: p99 < 20 ms).

    make bench-subtype      (python -m bench.bench_subtype [--requests 2000])
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from tests.helpers.processes import start_subtype_service
from training.subtype_data import load_patients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    patients = load_patients()
    bodies = [{"counts": {k: int(round(v)) for k, v in counts.items()}} for counts in patients.counts]
    with tempfile.TemporaryDirectory() as tmp:
        service = start_subtype_service(Path(tmp))
        try:
            with httpx.Client(base_url=service.url, timeout=10) as client:
                for body in bodies[:50]:
                    client.post("/v1/predict", json=body)  # warm-up
                latencies = []
                for i in range(args.requests):
                    started = time.perf_counter()
                    response = client.post("/v1/predict", json=bodies[i % len(bodies)])
                    latencies.append(time.perf_counter() - started)
                    response.raise_for_status()
        finally:
            service.stop()
    ms = np.array(latencies) * 1000
    print(f"| requests | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|\n"
          f"| {len(ms)} sequential, one patient each, over loopback HTTP | {np.percentile(ms, 50):.2f} | "
          f"{np.percentile(ms, 90):.2f} | {np.percentile(ms, 99):.2f} | {ms.max():.2f} |")
    print(f"target p99 < 20 ms: {'met' if np.percentile(ms, 99) < 20 else 'NOT met'}")


if __name__ == "__main__":
    main()
