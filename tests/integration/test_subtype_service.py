"""The subtype service as a real uvicorn process over HTTP."""

from __future__ import annotations

import json
import math
import shutil

import httpx
import pytest

from shared.subtypes import PATIENT_CLASSES
from services.subtype.settings import DEFAULT_MODEL_DIR
from tests.helpers.processes import start_subtype_service

pytestmark = pytest.mark.integration

AML_LIKE = {"neutrophil": 10, "lymphocyte": 20, "monocyte": 5, "blast": 65, "smudge": 13}
CONTROL_LIKE = {"neutrophil": 61, "lymphocyte": 28, "monocyte": 7, "eosinophil": 3, "basophil": 1, "platelet": 40}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    process = start_subtype_service(tmp_path_factory.mktemp("subtype"), SUBTYPE_MAX_BATCH_ITEMS="50")
    yield process
    process.stop()


def predict(url: str, body) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", json=body, timeout=30)


def test_predict_one_patient(service):
    response = predict(service.url, {"counts": AML_LIKE})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["probabilities"]) == set(PATIENT_CLASSES)
    assert body["prediction"] in PATIENT_CLASSES and body["prediction"] != "control"
    assert body["aml_probability"] > 0.9
    assert body["model"]["name"] == "aml-subtype-ensemble" and len(body["model"]["sha256"]) == 64
    assert body["features"]["log_frac_blast"] == pytest.approx(math.log(0.65 + 0.005))
    assert body["features"]["log_frac_unclassified"] == pytest.approx(math.log(0.005))
    assert body["per_100_leukocytes"]["smudge"] == pytest.approx(13.0), "smudge cells are not leukocytes"
    assert body["model"]["version"] == "2.1.1"
    assert body["warnings"] == []

    control = predict(service.url, {"counts": CONTROL_LIKE}).json()
    assert control["prediction"] == "control"
    assert control["per_100_leukocytes"]["platelet"] == pytest.approx(40.0)


def test_few_leukocytes_answer_with_a_warning(service):
    body = predict(service.url, {"counts": {"neutrophil": 20, "blast": 10, "smudge": 40}}).json()
    assert any("unreliable" in w for w in body["warnings"])


def test_batch_in_order(service):
    items = [{"counts": AML_LIKE}, {"counts": CONTROL_LIKE}, {"counts": AML_LIKE}]
    response = httpx.post(f"{service.url}/v1/predict:batch", json=items, timeout=30)
    assert response.status_code == 200
    answers = response.json()
    assert [a["prediction"] == "control" for a in answers] == [False, True, False]
    assert answers[0] == answers[2]


@pytest.mark.parametrize("body,needle", [
    ({"counts": {"myeloblast": 3}}, "counts.myeloblast"),
    ({"counts": {"neutrophil": -1}}, "greater than or equal to 0"),
    ({"counts": {"neutrophil": 1.5}}, "valid integer"),
    ({"counts": {"neutrophil": "12"}}, "valid integer"),
    ({"counts": {"neutrophil": True}}, "valid integer"),
    ({"counts": {"platelet": 30, "erythroblast": 2, "smudge": 5}}, "no leukocytes"),
    ({"counts": {}}, "no leukocytes"),
    ({}, "counts"),
    ({"counts": {"neutrophil": 3}, "extra": 1}, "extra"),
    ([1, 2], "dict"),
])
def test_bad_input_is_a_clear_422(service, body, needle):
    response = predict(service.url, body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert needle in response.json()["detail"]


def test_bad_batches(service):
    assert httpx.post(f"{service.url}/v1/predict:batch", json=[], timeout=10).status_code == 422
    too_many = httpx.post(f"{service.url}/v1/predict:batch", json=[{"counts": AML_LIKE}] * 51, timeout=10)
    assert too_many.status_code == 413
    one_bad = httpx.post(f"{service.url}/v1/predict:batch",
                         json=[{"counts": AML_LIKE}, {"counts": {"platelet": 3}}], timeout=10)
    assert one_bad.status_code == 422 and "item 1" in one_bad.json()["detail"]
    assert httpx.post(f"{service.url}/v1/predict", content=b"{not json",
                      headers={"content-type": "application/json"}, timeout=10).status_code == 422


def test_model_health_metrics(service):
    card = httpx.get(f"{service.url}/v1/model", timeout=10).json()
    assert card["classes"] == list(PATIENT_CLASSES)
    assert "cross_validation" in card
    assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{service.url}/readyz", timeout=10).json()["ready"] is True
    predict(service.url, {"counts": AML_LIKE})
    metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
    assert 'subtype_requests_total{endpoint="predict",outcome="ok"}' in metrics
    assert "subtype_inference_seconds_bucket" in metrics


def test_service_refuses_to_start_with_a_tampered_model(tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir)
    card = json.loads((model_dir / "model_card.json").read_text())
    victim = model_dir / card["stages"]["aml_vs_control"]["members"]["random_forest"]["file"]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(RuntimeError, match="sha256"):
        start_subtype_service(tmp_path, SUBTYPE_MODEL_DIR=str(model_dir))
