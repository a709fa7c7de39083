"""The gateway spreads one patient's chunks over several cell-service replicas (CELL_URL lists them)."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.cell_metrics import cell_images_classified
from tests.helpers.images import fullsize_images
from tests.helpers.processes import start_cell_service, start_gateway
from tests.helpers.uploads import classified

pytestmark = pytest.mark.integration


def test_one_patient_spreads_over_two_cell_services(tmp_path, cell_service, subtype_service):
    second = start_cell_service(tmp_path, CELL_DECODE_WORKERS="1", CELL_INFERENCE_THREADS="1")
    gateway = None
    try:
        # a stopped third address too: the gateway skips it and still answers
        gateway = start_gateway(tmp_path, f"{cell_service.url}, {second.url},http://127.0.0.1:9/", subtype_service.url,
                                CHUNK_SIZE="4", CHUNK_CONCURRENCY="2")
        before = {url: cell_images_classified(url) for url in (cell_service.url, second.url)}
        files = [(path.name, path.read_bytes()) for _, path in fullsize_images()[:24]]
        assert classified(gateway.url, "P-replicas-1", files)["n_images"] == 24
        done = {url: cell_images_classified(url) - before[url] for url in before}
        assert sum(done.values()) == 24, done
        assert all(n >= 4 for n in done.values()), f"both replicas should get chunks: {done}"
        ready = httpx.get(f"{gateway.url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["checks"]["cell"] is True
    finally:
        if gateway is not None:
            gateway.stop()
        second.stop()
