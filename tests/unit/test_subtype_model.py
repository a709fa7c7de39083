"""The committed subtype artifacts: integrity, recorded predictions, probability consistency."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.subtype.ensemble import ModelIntegrityError, SubtypeEnsemble
from services.subtype.predictor import NoLeukocytes, SubtypePredictor
from services.subtype.settings import DEFAULT_MODEL_DIR
from shared.subtypes import PATIENT_CLASSES, SUBTYPES
from shared.vocabulary import CELL_LABELS
from training.subtype_data import feature_matrix, load_patients


@pytest.fixture(scope="module")
def predictor() -> SubtypePredictor:
    return SubtypePredictor(SubtypeEnsemble(DEFAULT_MODEL_DIR))


def test_committed_models_reproduce_the_recorded_predictions(predictor):
    """A wrong or stale artifact (or feature code) changes these numbers."""
    recorded = json.loads((DEFAULT_MODEL_DIR / "reference_predictions.json").read_text())
    assert recorded["classes"] == list(PATIENT_CLASSES)
    patients = load_patients()
    assert len(patients.ids) == 151
    now = predictor.ensemble.predict(feature_matrix(patients.fractions))
    expected = np.array([recorded["patients"][pid] for pid in patients.ids])
    assert np.abs(now - expected).max() < 1e-5


@pytest.mark.parametrize("victim", ["aml_vs_control.xgboost.onnx", "subtype.catboost.onnx", "model_card.json"])
def test_a_tampered_artifact_is_refused(tmp_path, victim):
    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path, dirs_exist_ok=True)
    target = tmp_path / victim
    if victim == "model_card.json":
        card = json.loads(target.read_text())
        card["stages"]["subtype"]["members"]["neural_net"]["sha256"] = "0" * 64
        target.write_text(json.dumps(card))
    else:
        target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError):
        SubtypeEnsemble(tmp_path)


counts_strategy = st.dictionaries(st.sampled_from(CELL_LABELS), st.integers(0, 5000), min_size=1)


@given(counts_strategy)
@settings(max_examples=150, deadline=None)
def test_any_valid_counts_give_consistent_probabilities(predictor, counts):
    leukocytes = sum(v for k, v in counts.items() if k not in ("erythroblast", "platelet"))
    if leukocytes == 0:
        with pytest.raises(NoLeukocytes):
            predictor.predict_many([counts])
        return
    answer = predictor.predict_many([counts])[0]
    p = answer.probabilities
    assert sum(p.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in p.values())
    assert p["control"] == pytest.approx(1.0 - answer.aml_probability, abs=1e-6)
    assert sum(p[s] for s in SUBTYPES) == pytest.approx(answer.aml_probability, abs=1e-6)
    assert answer.prediction == max(p, key=p.get)
    assert bool(answer.warnings) == (leukocytes < 50)
