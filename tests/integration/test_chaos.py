"""Chaos: concurrent patient requests while redis-server and the cell service are killed and restarted.

Every answer must be a correct report or a clear problem+json error (503/504); nothing lost,
nothing wrong, no 500. Afterwards a repeated upload is answered from the report database. The run
is bounded in time and requests, on loopback only.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

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
        send(gateway.url, "CHAOS-0", data["CHAOS-0"])
        after = send(gateway.url, "CHAOS-0", data["CHAOS-0"])
        assert after.status_code == 200 and after.json()["cached"] is True, "cache works again after restarts"
    finally:
        for process in (gateway, subtype, cell):
            process.stop()
        redis.stop()
