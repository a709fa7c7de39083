"""Chaos: concurrent patient requests while redis-server and the cell service are killed and restarted.

Every answer must be a correct report or a clear problem+json error (503/504); nothing lost,
nothing wrong, no 500. Afterwards the gateway caches cell labels in the restarted Redis again. The run
is bounded in time and requests, on loopback only.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import hashlib

import httpx
import pytest
import redis as redis_client
from PIL import Image

from tests.helpers.cell_metrics import cell_images_classified
from tests.helpers.images import encode, fullsize_images
from tests.helpers.keys import AUTH
from tests.helpers.processes import start_cell_service, start_gateway, start_subtype_service
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.integration
DURATION_S = 25.0
CLIENTS = 4


def patients() -> dict[str, list[tuple[str, bytes]]]:
    originals = [Image.open(path).convert("RGB") for _, path in fullsize_images()]
    out = {}
    for p in range(8):
        out[f"CHAOS-{p}"] = [(f"p{p}-{i}.jpg", encode(originals[(p * 7 + i) % 64], "JPEG", quality=80 + p))
                             for i in range(8)]
    return out


def send(url: str, patient: str, files) -> httpx.Response | Exception:
    try:
        return httpx.post(f"{url}/patients/{patient}/classify", headers=AUTH, timeout=30,
                          files=[("images", (n, d, "image/jpeg")) for n, d in files])
    except httpx.HTTPError as exc:
        return exc


def _cache_works_again(gateway_url: str, cell_url: str, redis_url: str) -> None:
    """After the restarts the gateway uses the restarted Redis again: images it never saw (new sha256s),
    classified once under one patient id, are answered from Redis under another (the report database,
    keyed by patient, cannot answer that), and /readyz says the cache is available."""
    ready = httpx.get(f"{gateway_url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"]["cache"] == {"kind": "redis", "available": True}
    originals = [Image.open(path).convert("RGB") for _, path in fullsize_images()[:8]]
    fresh = [(f"after-{i}.jpg", encode(image, "JPEG", quality=70)) for i, image in enumerate(originals)]
    hashes = [hashlib.sha256(d).hexdigest() for _, d in fresh]
    client = redis_client.Redis.from_url(redis_url, decode_responses=True)
    assert not [k for sha in hashes for k in client.scan_iter(match=f"cell:*:{sha}")], "images never seen before"

    before = cell_images_classified(cell_url)
    first = send(gateway_url, "CHAOS-AFTER-A", fresh)
    assert first.status_code == 200, first.text[:300]
    assert first.json()["cached"] is False and not any("cache unavailable" in w for w in first.json()["warnings"])
    assert cell_images_classified(cell_url) - before == len(fresh)
    assert all(list(client.scan_iter(match=f"cell:*:{sha}")) for sha in hashes), "the labels are in Redis"

    second = send(gateway_url, "CHAOS-AFTER-B", fresh)
    assert second.status_code == 200 and second.json()["cached"] is False, "another patient: not from the store"
    assert (second.json()["cell_counts"], second.json()["prediction"]) == \
        (first.json()["cell_counts"], first.json()["prediction"])
    assert cell_images_classified(cell_url) - before == len(fresh), "the labels came from Redis, not the cell service"


def test_chaos(tmp_path):
    redis = RedisServer(tmp_path).start()
    cell = start_cell_service(tmp_path)
    subtype = start_subtype_service(tmp_path)
    gateway = start_gateway(tmp_path, cell.url, subtype.url, redis.url, CELL_TIMEOUT_S="5", RETRY_BACKOFF_S="0.1",
                            RATE_LIMIT_PER_MINUTE="1000000", RATE_LIMIT_BURST="100000")
    data = patients()
    try:
        expected = {}
        for patient, files in data.items():
            response = send(gateway.url, patient, files)
            assert response.status_code == 200
            report = response.json()
            expected[patient] = (report["cell_counts"], report["prediction"])

        stop = threading.Event()
        outcomes: Counter = Counter()
        problems: list[str] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            names = sorted(data)
            i = index
            while not stop.is_set():
                patient = names[i % len(names)]
                i += 1
                # under a new patient id each time: a repeated upload would be answered from the report
                # database without the cell service, and the services' failures would never show
                response = send(gateway.url, f"{patient}.{index}-{i}", data[patient])
                with lock:
                    outcomes["sent"] += 1
                    if isinstance(response, Exception):
                        outcomes["lost"] += 1
                        problems.append(f"{patient}: {type(response).__name__}")
                    elif response.status_code == 200:
                        report = response.json()
                        if (report["cell_counts"], report["prediction"]) == expected[patient] \
                                and report["n_images"] == len(data[patient]):
                            outcomes["succeeded"] += 1
                        else:
                            outcomes["wrong"] += 1
                            problems.append(f"{patient}: wrong report")
                    elif response.status_code in (502, 503, 504) and \
                            response.headers.get("content-type", "").startswith("application/problem+json"):
                        outcomes["failed_clearly"] += 1
                    else:
                        outcomes[f"status_{response.status_code}"] += 1
                        problems.append(f"{patient}: HTTP {response.status_code} {response.text[:120]}")

        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, k) for k in range(CLIENTS)]
            started = time.monotonic()
            time.sleep(2)
            redis.stop()  # uncached answers, computed by the cell service
            time.sleep(3)
            cell.stop()  # and now nothing can answer: clear 503s
            time.sleep(3)
            redis.start()
            time.sleep(1)
            cell.start()
            while time.monotonic() - started < DURATION_S:
                time.sleep(0.5)
            stop.set()
            for future in futures:
                future.result(timeout=120)

        print(f"\nchaos report: {dict(outcomes)}")
        assert outcomes["lost"] == 0 and outcomes["wrong"] == 0, problems[:10]
        assert not [k for k in outcomes if k.startswith("status_")], problems[:10]
        assert outcomes["succeeded"] > 0 and outcomes["failed_clearly"] > 0
        _cache_works_again(gateway.url, cell.url, redis.url)
    finally:
        for process in (gateway, subtype, cell):
            process.stop()
        redis.stop()
