"""Subtype model 2.1.x: the DeepAPL patients are extra AML examples for stage 1 only, and the CV stays
patient-level (each patient in one test fold per repeat, DeepAPL patients in every fold)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from shared.vocabulary import LEUKOCYTE_TYPES
from tests.helpers.images import DEEPAPL_DIR

pytest.importorskip("imblearn")
pytest.importorskip("sklearn")

from training import train_subtype  # noqa: E402
from training.deepapl_dataset import EXPERT_CLASS_LABELS, verified_cells  # noqa: E402
from training.subtype_data import feature_matrix, load_deepapl_differentials, load_patients  # noqa: E402


@pytest.fixture(scope="module")
def cohort():
    patients = load_patients()
    extra = load_deepapl_differentials(DEEPAPL_DIR)
    return patients, extra, train_subtype.make_cohort(patients, extra)


def test_deepapl_differentials_come_from_the_verified_cells(cohort):
    _, extra, _ = cohort
    assert len(extra.ids) == 82 and int(extra.is_apl.sum()) == 22
    # recount one patient by hand from cells.csv through the cell model's mapping
    pid = extra.ids[0]
    expected = Counter(EXPERT_CLASS_LABELS[c.expert_class] for c in verified_cells(DEEPAPL_DIR)
                       if c.patient_id == pid and EXPERT_CLASS_LABELS[c.expert_class] is not None)
    counts = extra.counts[0]
    assert {k: v for k, v in counts.items() if v} == {k: float(v) for k, v in expected.items()}
    leukocytes = np.array([counts[t] for t in LEUKOCYTE_TYPES])
    np.testing.assert_allclose(extra.fractions[0], leukocytes / leukocytes.sum())
    assert counts["unclassified"] == 0, "the technologists' labels have no 'cannot place' class"


def test_deepapl_rows_enter_stage_1_only(cohort, monkeypatch):
    patients, extra, c = cohort
    seen: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}

    def fake_fit(name, seed, x, y, sample_weight=None):
        if name == "logistic_regression":
            seen[len(seen)] = (x, y, sample_weight)
        return object()

    monkeypatch.setattr(train_subtype, "fit_member", fake_fit)
    fitted = train_subtype.fit_stages(c.fractions, c.labels, copies=1, seed=0, extra_weight=2.0)
    assert set(fitted) == {"aml_vs_control", "subtype"}
    (x1, y1, w1), (x2, y2, w2) = seen[0], seen[1]
    deepapl_rows = {tuple(r) for r in feature_matrix(extra.fractions)}
    mll_aml_rows = {tuple(r) for r in feature_matrix(patients.fractions[patients.labels > 0])}
    stage1_rows, stage2_rows = {tuple(r) for r in x1}, {tuple(r) for r in x2}
    assert deepapl_rows <= stage1_rows, "every DeepAPL patient is an example of stage 1"
    assert not deepapl_rows & stage2_rows, "no DeepAPL patient reaches stage 2"
    assert mll_aml_rows <= stage2_rows
    clean = len(x1) // 2  # the patients' own rows (after SMOTE), then one simulated copy of each
    is_deepapl = np.array([tuple(r) in deepapl_rows for r in x1[:clean]])
    assert is_deepapl.sum() == len(extra.ids)
    assert (y1[:clean][is_deepapl] == 1).all(), "DeepAPL patients are AML for stage 1"
    assert w1 is not None and np.array_equal(w1[:clean], np.where(is_deepapl, 2.0, 1.0))
    assert np.array_equal(w1[clean:], w1[:clean]), "a simulated copy weighs what its patient weighs"
    assert w2 is None and set(np.unique(y2)) == {0, 1, 2, 3}
    # without DeepAPL weight the rows are unweighted, as in 2.0.0
    assert train_subtype.stage_inputs(c.fractions, c.labels, 1.0)["aml_vs_control"][2] is None


def test_cv_keeps_each_patient_in_one_fold(cohort):
    patients, extra, c = cohort
    assert len(set(c.ids)) == len(c.ids) == len(patients.ids) + len(extra.ids)
    repeats = 2
    splits = train_subtype.cv_splits(c, repeats=repeats, seed=11)
    assert len(splits) == 5 * repeats
    for r in range(repeats):
        tested = Counter()
        for train, test in splits[5 * r: 5 * r + 5]:
            assert not set(train) & set(test)
            assert len(train) + len(test) == len(c.ids)
            tested.update(c.ids[i] for i in test)
            assert c.extra[test].sum() >= 10 and c.is_apl[test].sum() >= 2, "every fold holds DeepAPL patients"
            assert (c.labels[test] == 0).sum() >= 8, "and MLL controls"
        assert set(tested.values()) == {1} and len(tested) == len(c.ids)


def test_stage_1_has_its_own_voting_weights():
    """2.1.1: stage 1 votes with STAGE1_WEIGHTS, stage 2 with ENSEMBLE_WEIGHTS, in training and in the card."""
    import json

    from services.subtype.ensemble import CARD_FILE
    from training.subtype_members import MEMBERS

    stage1 = {m: np.array([0.2, 0.9]) for m in MEMBERS}
    stage1["logistic_regression"] = np.array([0.8, 0.1])
    stage2 = {m: np.full((2, 4), 0.25) for m in MEMBERS}
    p = train_subtype.vote(stage1, stage2, train_subtype.ENSEMBLE_WEIGHTS, train_subtype.STAGE1_WEIGHTS)
    w = np.array([train_subtype.STAGE1_WEIGHTS[m] for m in MEMBERS])
    expected = np.average([stage1[m] for m in MEMBERS], axis=0, weights=w)
    np.testing.assert_allclose(1.0 - p[:, 0], expected)
    card = json.loads((train_subtype.DEFAULT_OUT / CARD_FILE).read_text())
    assert card["stages"]["aml_vs_control"]["weights"] == train_subtype.STAGE1_WEIGHTS
    assert card["stages"]["subtype"]["weights"] == train_subtype.ENSEMBLE_WEIGHTS
    assert card["cross_validation_stage1_weights"]["rule_picks"] == train_subtype.STAGE1_WEIGHTS["logistic_regression"]
