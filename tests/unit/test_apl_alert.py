"""The APL alert's serving side (issue 10) on small real ONNX artifacts in the contract's format: the
cell service's head in the CNN's batch, the subtype service's assessment and its checks, the gateway's
report fields, and the FHIR/HL7 critical flag exactly at the threshold."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

pytest.importorskip("onnx")

from gateway import apl as gateway_apl  # noqa: E402
from gateway.fhir import to_diagnostic_report  # noqa: E402
from gateway.hl7 import to_oru_r01  # noqa: E402
from services.cell_classifier.inference import CellModel, ModelIntegrityError  # noqa: E402
from services.subtype.apl import AplModel  # noqa: E402
from services.subtype.ensemble import ModelIntegrityError as SubtypeIntegrityError  # noqa: E402
from shared.apl import feature_row  # noqa: E402
from shared.schemas import PatientReport, SubtypeRequest  # noqa: E402
from tests.helpers.apl_artifacts import (CELL_MODEL_DIR, FEATURES, cell_model_dir_with_head,  # noqa: E402
                                         subtype_model_dir_with_apl, write_patient_model)
from tests.helpers.reports import sample_report  # noqa: E402
from tests.helpers.hl7 import obx_by_code  # noqa: E402

HEAD_SHA = "c" * 64
COUNTS = {"promyelocyte": 12, "blast": 30, "neutrophil": 40, "lymphocyte": 18}
LOGITS = [0.5, 2.0, -1.0, 3.5, 0.0, 1.25, -0.5, 2.75] * 5


@pytest.fixture(scope="module")
def cell_dir(tmp_path_factory):
    return cell_model_dir_with_head(tmp_path_factory.mktemp("apl-cell") / "model")


def _rewrite_card(directory, **changes):
    path = directory / "model_card.json"
    card = json.loads(path.read_text())
    card["apl_cell_head"].update(changes)
    path.write_text(json.dumps(card))


def test_cell_head_runs_on_the_embeddings_of_the_same_cnn_run(cell_dir):
    model = CellModel(cell_dir, "cpu", variant="float")
    assert model.info["apl_head"]["name"] == "test-apl-cell-head" and len(model.info["apl_head"]["sha256"]) == 64
    images = np.random.default_rng(1).integers(0, 256, (6, 112, 112, 3), dtype=np.uint8)
    out = model.infer(images)
    probabilities, embeddings = model.session.run(["probabilities", "embedding"], {model.input_name: images})
    np.testing.assert_array_equal(out[:, :-1], probabilities)
    np.testing.assert_array_equal(out[:, :-1], model.predict(images))
    expected = model.apl_head.session.run(None, {"embedding": embeddings})[0]
    np.testing.assert_allclose(out[:, -1], expected, rtol=1e-6)
    assert out.dtype == np.float32 and out.shape == (6, probabilities.shape[1] + 1)
    probabilities_0, logit_0 = CellModel.split(out[0])
    assert logit_0 == pytest.approx(float(expected[0]), rel=1e-6) and probabilities_0.shape == probabilities[0].shape
    int8 = CellModel(cell_dir, "cpu", variant="int8")
    assert int8.info["apl_head"] == model.info["apl_head"] and np.isfinite(int8.infer(images)[:, -1]).all()


def test_cell_model_without_head_gives_null_logits(tmp_path):
    card = json.loads((CELL_MODEL_DIR / "model_card.json").read_text())
    card.pop("apl_cell_head", None)  # a model directory from before the APL alert
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    (tmp_path / card["file"]).write_bytes((CELL_MODEL_DIR / card["file"]).read_bytes())
    model = CellModel(tmp_path, "cpu", variant="float")
    assert model.info["apl_head"] is None
    out = model.infer(np.full((2, 112, 112, 3), 180, dtype=np.uint8))
    assert CellModel.split(out[0])[1] is None and out.shape == (2, len(card["class_order"]) + 1)


def test_cell_head_refused_on_tampered_file_or_other_cnn(tmp_path):
    tampered = cell_model_dir_with_head(tmp_path / "tampered")
    (tampered / "apl_cell_head.onnx").write_bytes((tampered / "apl_cell_head.onnx").read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        CellModel(tampered, "cpu")
    other = cell_model_dir_with_head(tmp_path / "other")
    _rewrite_card(other, cell_model_sha256="0" * 64)
    with pytest.raises(ModelIntegrityError, match="trained on the cell model"):
        CellModel(other, "cpu")


# --- subtype service ---------------------------------------------------------------------------

def _apl_model(tmp_path, threshold: float = 0.5, min_cells: int = 20) -> AplModel:
    directory = tmp_path / "subtype"
    directory.mkdir(exist_ok=True)
    write_patient_model(directory / "apl_patient.onnx", [0.8, 0.7, 0.3, 0.2], 0.0)
    from shared.hashing import file_sha256
    card = {"name": "test-apl-alert", "version": "0.0.1", "file": "apl_patient.onnx",
            "sha256": file_sha256(directory / "apl_patient.onnx"), "features": FEATURES,
            "pooling": {"top_fraction": 0.25}, "threshold": threshold, "cell_head_sha256": HEAD_SHA,
            "min_cells": min_cells, "cv": {}}
    (directory / "apl_card.json").write_text(json.dumps(card))
    return AplModel(directory)


def test_probability_is_the_logistic_regression_of_the_shared_feature_row(tmp_path):
    model = _apl_model(tmp_path)
    assessment, warnings = model.assess(LOGITS, HEAD_SHA, COUNTS)
    row = feature_row(model.card, LOGITS, COUNTS)
    expected = 1 / (1 + math.exp(-sum(w * x for w, x in zip([0.8, 0.7, 0.3, 0.2], row))))
    assert assessment.probability == pytest.approx(expected, abs=1e-6)
    assert list(assessment.features) == FEATURES and assessment.n_cells == len(LOGITS)
    assert assessment.model.name == "test-apl-alert" and warnings == []


def test_alert_exactly_at_the_threshold_and_fhir_hl7_critical_with_it(tmp_path):
    probability = _apl_model(tmp_path).assess(LOGITS, HEAD_SHA, COUNTS)[0].probability
    cases = {"below": (np.nextafter(probability, 1.0), False),  # probability just below the threshold
             "at": (probability, True),
             "above": (np.nextafter(probability, 0.0), True)}
    for name, (threshold, alert) in cases.items():
        assessment, _ = _apl_model(tmp_path, threshold=float(threshold)).assess(LOGITS, HEAD_SHA, COUNTS)
        assert assessment.alert is alert, name
        cells = [{"filename": f"c{i}.jpg", "sha256": f"{i:064x}", "apl_logit": v} for i, v in enumerate(LOGITS)]
        fields = gateway_apl.report_fields({"apl": assessment.model_dump()}, cells)
        report = sample_report().model_copy(update=fields)
        resource = to_diagnostic_report(report)
        from fhir.resources.R4B.diagnosticreport import DiagnosticReport
        DiagnosticReport.model_validate(resource)
        observation = next(o for o in resource["contained"] if o.get("id") == "apl-probability")
        assert observation["valueQuantity"]["unit"] == "%"
        assert observation["valueQuantity"]["value"] == pytest.approx(100 * probability, abs=0.01)
        codes = [c["code"] for i in observation.get("interpretation", []) for c in i["coding"]]
        assert codes == (["AA"] if alert else []), name
        assert ("urgent confirmation of PML::RARA" in resource["conclusion"]) is alert, name
        obx = obx_by_code(to_oru_r01(report))["apl-probability"]
        assert obx[8] == ("AA" if alert else "N"), name


def test_fhir_conclusion_keeps_the_existing_content(tmp_path):
    report = sample_report().model_copy(update={"apl_probability": 0.93, "apl_alert": True, "apl_threshold": 0.4,
                                                "warnings": ["a warning"]})
    conclusion = to_diagnostic_report(report)["conclusion"]
    assert conclusion.startswith("Suspected acute promyelocytic leukaemia (APL probability 93 %): urgent "
                                 "confirmation of PML::RARA")
    assert "Model prediction: PML_RARA" in conclusion and "a warning" in conclusion
    plain = to_diagnostic_report(sample_report())
    assert not any(o.get("id") == "apl-probability" for o in plain["contained"]), "no APL model: no Observation"


def test_other_cell_head_gives_no_assessment_but_a_warning(tmp_path):
    model = _apl_model(tmp_path)
    assessment, warnings = model.assess(LOGITS, "d" * 64, COUNTS)
    assert assessment is None and len(warnings) == 1 and "different APL model versions" in warnings[0]
    assert model.assess(LOGITS, None, COUNTS)[0] is None
    assert model.assess(None, HEAD_SHA, COUNTS) == (None, [])


def test_few_cells_still_assessed_with_a_warning(tmp_path):
    assessment, warnings = _apl_model(tmp_path, min_cells=100).assess(LOGITS, HEAD_SHA, COUNTS)
    assert assessment is not None and any("unreliable" in w for w in warnings)


def test_apl_model_refuses_a_tampered_file_or_bad_card(tmp_path):
    model = _apl_model(tmp_path)
    path = tmp_path / "subtype" / "apl_patient.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(SubtypeIntegrityError, match="sha256"):
        AplModel(tmp_path / "subtype")
    assert model is not None
    assert AplModel.load(tmp_path / "nothing-here") is None


@pytest.mark.parametrize("logits", [[1.0, float("nan")], [float("inf")], [-float("inf"), 0.0], [], [1e7]])
def test_subtype_request_refuses_non_finite_or_empty_logits(logits):
    with pytest.raises(ValidationError):
        SubtypeRequest(counts={"blast": 3}, apl_cell_logits=logits, apl_cell_head_sha256=HEAD_SHA)
    with pytest.raises(ValidationError):
        SubtypeRequest(counts={"blast": 3}, apl_cell_logits=[0.0], apl_cell_head_sha256="not-a-sha")


def test_subtype_service_answers_422_to_nan_and_warns_on_another_head(tmp_path):
    from fastapi.testclient import TestClient

    from services.subtype.app import create_app
    from services.subtype.settings import SubtypeServiceSettings

    directory = subtype_model_dir_with_apl(tmp_path / "model", HEAD_SHA, min_cells=5)
    with TestClient(create_app(SubtypeServiceSettings(model_dir=directory))) as client:
        body = '{"counts": {"blast": 30, "neutrophil": 10}, "apl_cell_logits": [1.0, NaN], ' \
               f'"apl_cell_head_sha256": "{HEAD_SHA}"}}'
        response = client.post("/v1/predict", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        for logits in ("[1e400]", "[Infinity]", "[]", "[1.0, \"x\"]"):
            bad = client.post("/v1/predict", content='{"counts": {"blast": 3}, "apl_cell_logits": ' + logits + "}",
                              headers={"Content-Type": "application/json"})
            assert bad.status_code == 422, logits
        ok = client.post("/v1/predict", json={"counts": COUNTS, "apl_cell_logits": LOGITS,
                                              "apl_cell_head_sha256": HEAD_SHA}).json()
        assert 0 <= ok["apl"]["probability"] <= 1 and ok["apl"]["alert"] is (ok["apl"]["probability"] >= 0.5)
        other = client.post("/v1/predict", json={"counts": COUNTS, "apl_cell_logits": LOGITS,
                                                 "apl_cell_head_sha256": "e" * 64}).json()
        assert other["apl"] is None and any("APL" in w for w in other["warnings"])
        assert client.post("/v1/predict", json={"counts": COUNTS}).json()["apl"] is None
        batch = client.post("/v1/predict:batch", json=[{"counts": COUNTS, "apl_cell_logits": LOGITS,
                                                        "apl_cell_head_sha256": HEAD_SHA}, {"counts": COUNTS}]).json()
        assert batch[0]["apl"]["probability"] == pytest.approx(ok["apl"]["probability"]) and batch[1]["apl"] is None
        ready = client.get("/readyz").json()
        assert ready["checks"]["apl"] is True and ready["checks"]["apl_model"]["name"] == "test-apl-alert"
        assert client.get("/v1/model").json()["apl"]["cell_head_sha256"] == HEAD_SHA
        metrics = client.get("/metrics").text
        assert "subtype_apl_assessments_total" in metrics


# --- gateway --------------------------------------------------------------------------------

def test_top_cells_highest_first_one_per_image():
    cells = [{"filename": f"c{i}.jpg", "sha256": f"{i % 12:064x}", "apl_logit": float(i % 12)} for i in range(30)]
    top = gateway_apl.top_cells(cells)
    assert [c.apl_logit for c in top] == [11.0, 10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]
    assert len({c.sha256 for c in top}) == 10
    assert gateway_apl.top_cells([{"filename": "a", "sha256": "0" * 64, "apl_logit": None}]) == []


def test_subtype_request_carries_logits_only_with_a_head_and_every_cell():
    cells = [{"apl_logit": 1.0}, {"apl_logit": -2.0}]
    assert gateway_apl.subtype_request({"blast": 2}, cells, HEAD_SHA) == {
        "counts": {"blast": 2}, "apl_cell_logits": [1.0, -2.0], "apl_cell_head_sha256": HEAD_SHA}
    assert gateway_apl.subtype_request({"blast": 2}, cells, None) == {"counts": {"blast": 2}}
    assert gateway_apl.subtype_request({"blast": 2}, cells + [{"apl_logit": None}], HEAD_SHA) == {"counts": {"blast": 2}}


def test_disagreement_warnings():
    assert "disagrees with the subtype prediction NPM1: confirm PML::RARA" in \
        gateway_apl.disagreement_warnings("NPM1", 0.9, True)[0]
    assert "did not fire" in gateway_apl.disagreement_warnings("PML_RARA", 0.1, False)[0]
    assert gateway_apl.disagreement_warnings("PML_RARA", 0.9, True) == []
    assert gateway_apl.disagreement_warnings("NPM1", 0.1, False) == []
    assert gateway_apl.disagreement_warnings("PML_RARA", None, None) == []


def test_old_reports_without_apl_fields_still_load():
    body = sample_report().model_dump()
    for key in ("apl_probability", "apl_alert", "apl_threshold", "apl_top_cells"):
        body.pop(key)
    report = PatientReport(**body)
    assert report.apl_probability is None and report.apl_top_cells == [] and report.models.apl_cell_head is None


def test_rules_hash_changes_with_the_threshold_and_features_not_the_file(tmp_path):
    """A threshold retuned in the card alone is another APL model for a stored report (``rules_sha256``)."""
    usual = _apl_model(tmp_path).identity
    stricter = _apl_model(tmp_path, threshold=0.9).identity
    assert usual.sha256 == stricter.sha256 and usual.rules_sha256 != stricter.rules_sha256
    assert _apl_model(tmp_path, min_cells=1).identity.rules_sha256 != usual.rules_sha256
    assert _apl_model(tmp_path).identity.rules_sha256 == usual.rules_sha256
