"""GATEWAY_MAX_IMAGE_BYTES: one image over it is the client's 413, naming the file, before any cell service is
called (it was forwarded, and the cell service's refusal came back as a misleading 502)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.helpers.keys import API_KEYS_JSON, AUTH


def test_an_image_over_the_gateways_per_image_limit_is_413_naming_it(tmp_path):
    audit_path = tmp_path / "audit.jsonl"
    settings = GatewaySettings(API_KEYS=API_KEYS_JSON, DATABASE_URL=f"sqlite:///{tmp_path / 'reports.db'}",
                               AUDIT_LOG_PATH=str(audit_path), CELL_URL="http://127.0.0.1:9",
                               SUBTYPE_URL="http://127.0.0.1:9", GATEWAY_MAX_IMAGE_BYTES="1000")
    files = [("images", ("ok.jpg", b"a" * 100, "image/jpeg")), ("images", ("huge.tif", b"b" * 1001, "image/tiff"))]
    with TestClient(create_app(settings)) as client:
        answer = client.post("/patients/P-1/classify", headers=AUTH, files=files)
    assert answer.status_code == 413, answer.text  # no cell service listens: any call to one would be 502/503
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["detail"] == "image 'huge.tif' is larger than the limit of 1000 bytes per image"
    assert [json.loads(line)["outcome"] for line in audit_path.read_text().splitlines()
            if json.loads(line).get("endpoint") == "classify"] == [413]


def test_the_default_per_image_limit(monkeypatch):
    monkeypatch.delenv("GATEWAY_MAX_IMAGE_BYTES", raising=False)
    assert GatewaySettings().max_image_bytes == 50 * 1024 * 1024, "the cell service's own limit (CELL_MAX_IMAGE_BYTES)"
