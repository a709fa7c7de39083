"""CELL_MODEL_VARIANT through a real service process: /v1/model and every answer say which file runs."""

from __future__ import annotations

import json

import httpx
import pytest

from services.cell_classifier.settings import DEFAULT_MODEL_DIR
from tests.helpers.images import fullsize_images
from tests.helpers.processes import start_cell_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())


@pytest.mark.parametrize("variant", ["float", "int8", "auto"])
def test_service_reports_the_variant_and_provider_it_runs(tmp_path, card, variant):
    service = start_cell_service(tmp_path, CELL_MODEL_VARIANT=variant, CELL_DECODE_WORKERS="1",
                                 CELL_INFERENCE_THREADS="1")
    try:
        expected = card["serving_variants"]["default"] if variant == "auto" else variant
        entry = card["serving_variants"]["files"].get(expected, {"file": card["file"], "sha256": card["sha256"]})
        served = httpx.get(f"{service.url}/v1/model", timeout=10).json()
        assert served["variant"] == expected
        assert served["provider"] == "CPUExecutionProvider"
        assert (served["file"], served["sha256"]) == (entry["file"], entry["sha256"])
        assert served["serving_variants"]["files"]["int8"]["sha256"] == card["serving_variants"]["files"]["int8"]["sha256"]
        name, path = fullsize_images()[0][0], fullsize_images()[0][1]
        answer = httpx.post(f"{service.url}/v1/classify", timeout=30,
                            files=[("images", (path.name, path.read_bytes(), "image/jpeg"))]).json()
        assert answer["model"]["variant"] == expected
        assert answer["model"]["sha256"] == served["sha256"], "the gateway's cache key is the running file's hash"
        assert answer["results"][0]["label"] == name
    finally:
        service.stop()


def test_unknown_variant_stops_the_service_with_a_clear_message(tmp_path):
    with pytest.raises(RuntimeError, match="CELL_MODEL_VARIANT"):
        start_cell_service(tmp_path, CELL_MODEL_VARIANT="fp16")
