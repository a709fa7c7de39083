"""Locust load test of the cell endpoint (loopback only, bounded users and time).

    .venv/bin/locust -f tests/load/locustfile.py --headless --host http://127.0.0.1:8001 \
        -u 32 -r 8 -t 60s --only-summary

``CELLS_PER_REQUEST`` (default 1) sets how many images each request carries; images
are the full-size originals from ../shared/data/pbc_fullsize. ``make load-cells``
runs the command above.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from urllib.parse import urlparse

from locust import HttpUser, between, events, task

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers.images import fullsize_images  # noqa: E402

IMAGES = [(path.name, path.read_bytes()) for _, path in fullsize_images()]
PER_REQUEST = int(os.environ.get("CELLS_PER_REQUEST", "1"))


@events.test_start.add_listener
def _loopback_only(environment, **_):
    host = urlparse(environment.host or "").hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load-test {host}: loopback only")


class CellClient(HttpUser):
    wait_time = between(0, 0.01)

    @task
    def classify(self):
        batch = random.sample(IMAGES, PER_REQUEST) if PER_REQUEST <= len(IMAGES) else random.choices(IMAGES, k=PER_REQUEST)
        files = [("images", (name, data, "image/jpeg")) for name, data in batch]
        with self.client.post("/v1/classify", files=files, name=f"/v1/classify x{PER_REQUEST}",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            elif len(response.json()["results"]) != PER_REQUEST:
                response.failure("wrong number of results")
