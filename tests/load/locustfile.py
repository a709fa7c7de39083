"""Locust scenarios (loopback only; bounded users and time are given on the command line).

Cell endpoint (CellClient; CELLS_PER_REQUEST images per request, default 1):
    .venv/bin/locust -f tests/load/locustfile.py CellClient --headless --host http://127.0.0.1:8001 \\
        -u 32 -r 8 -t 60s --only-summary
Patient classification through the gateway (GatewayPatient; PATIENT_IMAGES per patient,
default 32; AML_API_KEY with the classify scope; every request a new patient id with
re-encoded images, so nothing is served from the cache):
    AML_API_KEY=... .venv/bin/locust -f tests/load/locustfile.py GatewayPatient --headless \\
        --host http://127.0.0.1:8000 -u 8 -r 4 -t 60s --only-summary
If the cell service has INTERNAL_TOKEN set, export the same INTERNAL_TOKEN here.
``make load`` runs all scenarios at 1, 8, 32 and 64 users and writes docs/load_report.md.
"""

from __future__ import annotations

import io
import itertools
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from locust import HttpUser, between, events, task
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.common import SHED_SUFFIX  # noqa: E402
from tests.helpers.images import fullsize_images  # noqa: E402

IMAGES = [(path.name, path.read_bytes()) for _, path in fullsize_images()]
CELLS_PER_REQUEST = int(os.environ.get("CELLS_PER_REQUEST", "1"))
PATIENT_IMAGES = int(os.environ.get("PATIENT_IMAGES", "32"))
_variant = itertools.count()


@events.test_start.add_listener
def _loopback_only(environment, **_):
    host = urlparse(environment.host or "").hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load-test {host}: loopback only")


def _fresh_images(n: int) -> list[tuple[str, bytes]]:
    """``n`` images never sent before (re-encoded at a varying quality), so no cache can answer."""
    out = []
    for name, data in random.sample(IMAGES, min(n, len(IMAGES))):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=70 + next(_variant) % 25, comment=uuid.uuid4().hex.encode())
        out.append((name, buffer.getvalue()))
    return out


def _judge(response, complete: Callable[[dict], bool], incomplete: str) -> None:
    """Marks the answer: 200 whose body is ``complete`` succeeds; any other status fails, except
    503, which is load shedding, not a fault: reported under its own name, so that the latency of
    accepted requests is measured apart from the fast refusals; the user then waits Retry-After."""
    if response.status_code == 503:
        response.request_meta["name"] += SHED_SUFFIX
        response.failure("HTTP 503 (load shed)")
        time.sleep(min(float(response.headers.get("Retry-After", 1)), 5.0))  # a well-behaved client backs off
    elif response.status_code != 200:
        response.failure(f"HTTP {response.status_code}")
    elif not complete(response.json()):
        response.failure(incomplete)


class CellClient(HttpUser):
    wait_time = between(0, 0.01)

    def on_start(self):
        token = os.environ.get("INTERNAL_TOKEN")
        if token:
            self.client.headers["X-Internal-Token"] = token

    @task
    def classify(self):
        if CELLS_PER_REQUEST <= len(IMAGES):
            batch = random.sample(IMAGES, CELLS_PER_REQUEST)
        else:
            batch = random.choices(IMAGES, k=CELLS_PER_REQUEST)
        files = [("images", (name, data, "image/jpeg")) for name, data in batch]
        with self.client.post("/v1/classify", files=files, name=f"/v1/classify x{CELLS_PER_REQUEST}",
                              catch_response=True) as response:
            _judge(response, lambda body: len(body["results"]) == CELLS_PER_REQUEST, "wrong number of results")


class GatewayPatient(HttpUser):
    wait_time = between(0, 0.05)

    def on_start(self):
        self.client.headers["X-API-Key"] = os.environ.get("AML_API_KEY", "")

    @task
    def classify_patient(self):
        files = [("images", (name, data, "image/jpeg")) for name, data in _fresh_images(PATIENT_IMAGES)]
        patient = f"LOAD-{uuid.uuid4().hex[:12]}"
        with self.client.post(f"/patients/{patient}/classify", files=files, name="/patients/{id}/classify",
                              catch_response=True) as response:
            _judge(response, lambda body: body["n_images"] == len(files), "wrong number of images in the report")
