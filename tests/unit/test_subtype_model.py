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
from shared.differential import FEATURE_NAMES
from shared.vocabulary import CELL_LABELS, LEUKOCYTE_TYPES, NON_LEUKOCYTE_TYPES, VOCABULARY_VERSION
from training.subtype_data import LEAKS, LOSSES, feature_matrix, load_patients, simulate_cnn_counts


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


def test_the_committed_model_speaks_vocabulary_2(predictor):
    card = predictor.ensemble.card
    assert card["version"] == "2.1.1"
    assert card["feature_names"] == list(FEATURE_NAMES) and len(FEATURE_NAMES) == len(LEUKOCYTE_TYPES) == 9
    assert card["features"]["leukocyte_types"] == list(LEUKOCYTE_TYPES)
    assert card["features"]["vocabulary"] == VOCABULARY_VERSION
    answer = predictor.predict_many([{"blast": 60, "promyelocyte": 5, "lymphocyte": 35, "smudge": 20}])[0]
    assert set(answer.features) == set(FEATURE_NAMES)
    assert answer.per_100_leukocytes == {"erythroblast": 0.0, "platelet": 0.0, "smudge": 20.0}


def test_simulated_cnn_counts_confuse_the_new_categories():
    index = {t: i for i, t in enumerate(LEUKOCYTE_TYPES)}
    for truth, seen in [("blast", "lymphocyte"), ("blast", "monocyte"), ("blast", "unclassified"),
                        ("promyelocyte", "ig"), ("promyelocyte", "blast"), ("ig", "promyelocyte")]:
        assert LEAKS[index[truth], index[seen]] > 0, (truth, seen)
    assert (LEAKS.sum(axis=1) + LOSSES).max() < 0.5, "at twice the base rates every type stays mostly itself"
    blasts_only = np.zeros((1, len(LEUKOCYTE_TYPES)))
    blasts_only[0, index["blast"]] = 1.0
    counts = simulate_cnn_counts(np.repeat(blasts_only, 200, axis=0), np.random.default_rng(0))
    assert counts.shape == (200, 9) and (counts.sum(axis=1) >= 100).all()
    assert 0.6 < counts[:, index["blast"]].sum() / counts.sum() < 1.0
    assert counts[:, index["lymphocyte"]].sum() > 0 and counts[:, index["neutrophil"]].sum() == 0


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
    leukocytes = sum(v for k, v in counts.items() if k not in NON_LEUKOCYTE_TYPES)
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
    few = any("leukocytes counted" in w for w in answer.warnings)
    split = any("AML is more likely than not" in w for w in answer.warnings)
    assert few == (leukocytes < 50)
    assert split == (answer.prediction == "control" and answer.aml_probability >= 0.5)
    assert len(answer.warnings) == few + split


def test_rules_hash_follows_the_cards_decisions_not_its_figures():
    """2.1.0 and 2.1.1 shared every member file and differed in stage 1's weights only: the weights, the
    classes, the members and the leukocyte minimum change ``rules_sha256``; the card's CV figures do not."""
    from services.subtype.ensemble import rules_sha256

    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    base = rules_sha256(card)
    assert SubtypeEnsemble(DEFAULT_MODEL_DIR).info["rules_sha256"] == base

    def edited(change) -> str:
        copy = json.loads(json.dumps(card))
        change(copy)
        return rules_sha256(copy)

    assert edited(lambda c: c["stages"]["aml_vs_control"]["weights"].update(logistic_regression=1.0)) != base
    assert edited(lambda c: c["stages"]["subtype"]["weights"].update(xgboost=2.0)) != base
    assert edited(lambda c: c["stages"]["subtype"]["members"].pop("xgboost")) != base
    assert edited(lambda c: c.update(min_leukocytes=c["min_leukocytes"] + 1)) != base
    assert edited(lambda c: c.update(cross_validation={"macro_f1": 0.0})) == base


def test_control_predicted_while_aml_is_more_likely_than_not_is_warned():
    """The prediction is the most probable of the 5 classes: P(control) 0.31 beats each subtype when P(AML)
    0.69 is split four ways. The answer keeps the prediction and says that AML is more likely than not."""
    class Split:
        card = {"min_leukocytes": 1}
        info = {"name": "split", "version": "0", "sha256": "0" * 64}

        def __init__(self, p):
            self.p = p

        def predict(self, x):
            return np.array([self.p] * len(x))

    counts = {label: 0 for label in CELL_LABELS} | {"neutrophil": 50, "blast": 50}
    split = SubtypePredictor(Split([0.31, 0.18, 0.17, 0.17, 0.17])).predict_many([counts])[0]
    assert split.prediction == "control" and split.aml_probability == pytest.approx(0.69)
    assert any("AML is more likely than not" in w for w in split.warnings)
    clear = SubtypePredictor(Split([0.8, 0.05, 0.05, 0.05, 0.05])).predict_many([counts])[0]
    assert clear.prediction == "control" and not clear.warnings
