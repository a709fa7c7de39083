"""The APL alert's training code: metrics against known answers, the CV on a small synthetic patient
set (no patient in two folds' training and test), the shared features, and ONNX vs scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.apl import FEATURES, apl_features, feature_row, pooled_logits
from tests.conftest import require_training_stack


def test_auroc_known_answers():
    from training.apl_cv import auroc

    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    # one positive ranked below one of two negatives: 3 of 4 pairs right
    assert auroc([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]) == 0.75
    assert auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    with pytest.raises(ValueError):
        auroc([1, 1], [0.2, 0.3])


def test_sensitivity_specificity_and_threshold_choice():
    from training.apl_cv import sensitivity_specificity, threshold_for_sensitivity

    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05, 0.5])
    assert sensitivity_specificity(y, p, 0.6) == (0.75, 0.8)  # >= alerts: 0.6 counts
    assert threshold_for_sensitivity(y, p, 0.75) == 0.6
    assert threshold_for_sensitivity(y, p, 0.9) == 0.3  # 4 of 4 needed
    assert threshold_for_sensitivity(y, p, 1.0) == 0.3
    assert threshold_for_sensitivity(y, p, 0.5) == 0.8


def test_pooling_and_features():
    assert pooled_logits([1.0, 2.0, 3.0, 4.0], 0.25) == (2.5, 4.0)
    assert pooled_logits([1.0, 2.0, 3.0, 4.0, 5.0], 0.25) == (3.0, 4.5)  # ceil(1.25) = 2 cells
    assert pooled_logits([-2.0], 0.1) == (-2.0, -2.0)
    with pytest.raises(ValueError):
        pooled_logits([], 0.25)
    with pytest.raises(ValueError):
        pooled_logits([1.0, float("nan")], 0.25)
    values = apl_features([0.0, 1.0], {"promyelocyte": 9, "blast": 0, "lymphocyte": 10, "smudge": 50})
    assert set(values) == set(FEATURES)
    assert values["promyelocyte_log_fraction"] == pytest.approx(np.log(9.5 / 20.0))  # smudge is no leukocyte
    assert values["blast_log_fraction"] == pytest.approx(np.log(0.5 / 20.0))
    card = {"features": ["promyelocyte_log_fraction", "mean_cell_logit"], "pooling": {"top_fraction": 0.5}}
    assert feature_row(card, [0.0, 1.0], {"promyelocyte": 9, "lymphocyte": 10}) == \
        [pytest.approx(np.log(9.5 / 20.0)), 0.5]
    with pytest.raises(ValueError):
        feature_row({"features": ["age"]}, [0.0], {})


def _synthetic_patients(n_patients=24, cells=30, width=8, seed=0):
    """Patients whose cells carry a weak APL direction in the first embedding dimension."""
    rng = np.random.default_rng(seed)
    is_apl = np.array([1] * (n_patients // 3) + [0] * (n_patients - n_patients // 3))
    cell_patient = np.repeat(np.arange(n_patients), cells)
    embeddings = rng.normal(size=(len(cell_patient), width)).astype(np.float32)
    # a third of an APL patient's cells are abnormal promyelocytes that stand out in dimension 0
    abnormal = (is_apl[cell_patient] == 1) & (rng.random(len(cell_patient)) < 0.35)
    embeddings[abnormal, 0] += 3.0
    counts = [{"promyelocyte": int(rng.integers(0, 5)), "neutrophil": 50} for _ in range(n_patients)]
    return embeddings, cell_patient, is_apl, counts


def test_repeated_cv_learns_the_signal_and_scores_every_patient_out_of_fold():
    pytest.importorskip("sklearn")
    from training.apl_cv import auroc, repeated_cv

    embeddings, cell_patient, is_apl, counts = _synthetic_patients()
    result = repeated_cv(embeddings, cell_patient, is_apl, counts, {"mean": ["mean_cell_logit"]},
                         head_c=1.0, top_fraction=0.25, folds=3, repeats=2, inner_folds=3, progress=lambda _: None)
    oof = result.oof["mean"]
    assert oof.shape == (2, len(is_apl))
    assert np.all((oof > 0) & (oof < 1))  # every patient was scored in every repeat
    assert all(auroc(is_apl, row) > 0.9 for row in oof)
    summary = result.summary(is_apl)["mean"]
    assert summary["auroc_min"] <= summary["auroc_mean"] <= summary["auroc_max"]


def test_cv_has_no_signal_when_labels_are_shuffled():
    """The nested scheme cannot leak: with labels unrelated to the cells, out-of-fold AUROC stays near chance."""
    pytest.importorskip("sklearn")
    from training.apl_cv import auroc, repeated_cv

    embeddings, cell_patient, is_apl, counts = _synthetic_patients(n_patients=30, seed=1)
    embeddings[:, 0] = np.random.default_rng(2).normal(size=len(embeddings))  # remove the signal
    result = repeated_cv(embeddings, cell_patient, is_apl, counts, {"mean": ["mean_cell_logit"]},
                         head_c=1.0, top_fraction=0.25, folds=3, repeats=3, inner_folds=3, progress=lambda _: None)
    assert np.mean([auroc(is_apl, row) for row in result.oof["mean"]]) < 0.75


def test_cell_head_folds_the_scaler_and_balances_patients():
    pytest.importorskip("sklearn")
    from training.apl_cv import CellHead, _balanced_cell_weights

    embeddings, cell_patient, is_apl, _ = _synthetic_patients()
    weights = _balanced_cell_weights(cell_patient, is_apl)
    per_patient = np.bincount(cell_patient, weights=weights)
    assert per_patient[is_apl == 1].sum() == pytest.approx(per_patient[is_apl == 0].sum())
    head = CellHead(1.0).fit(embeddings, cell_patient, is_apl)
    logits = head.logits(embeddings)
    assert logits[is_apl[cell_patient] == 1].mean() > logits[is_apl[cell_patient] == 0].mean()


def test_exported_onnx_agrees_with_scikit_learn(tmp_path):
    require_training_stack()
    import onnxruntime as ort

    from training.apl_cv import CellHead, patient_model
    from training.train_apl import head_onnx, patient_onnx

    embeddings, cell_patient, is_apl, _ = _synthetic_patients()
    head = CellHead(1.0).fit(embeddings, cell_patient, is_apl)
    session = ort.InferenceSession(head_onnx(head, embeddings.shape[1]), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["apl_logit"], {"embedding": embeddings})[0]
    assert onnx_logits.shape == (len(embeddings),)
    np.testing.assert_allclose(onnx_logits, head.logits(embeddings), atol=1e-4)
    x = np.random.default_rng(0).normal(size=(40, 2))
    model = patient_model().fit(x, (x[:, 0] > 0).astype(int))
    session = ort.InferenceSession(patient_onnx(model, 2), providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"features": x.astype(np.float32)})[0]
    np.testing.assert_allclose(probabilities[:, 1], model.predict_proba(x)[:, 1], atol=1e-5)
    # the same model gives the same bytes (a rerun of make train-apl leaves committed files unchanged)
    assert patient_onnx(model, 2) == patient_onnx(model, 2)
    assert head_onnx(head, embeddings.shape[1]) == head_onnx(head, embeddings.shape[1])


def test_subtype_members_export_the_same_bytes_for_the_same_model(tmp_path):
    require_training_stack()
    from training.subtype_members import fit_member, to_onnx

    x = np.random.default_rng(1).normal(size=(60, 3))
    y = np.arange(60) % 3
    for name in ("logistic_regression", "random_forest", "xgboost"):
        model = fit_member(name, 0, x, y)
        to_onnx(name, model, 3, tmp_path / "a.onnx")
        to_onnx(name, model, 3, tmp_path / "b.onnx")
        assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes(), name


def test_committed_head_matches_its_card_and_the_cell_model():
    """The committed per-cell head reads the committed cell model's embedding (hashes in the cards)."""
    from services.cell_classifier.settings import DEFAULT_MODEL_DIR
    from shared.hashing import file_sha256
    from tests.helpers.processes import REPO_ROOT

    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    if "apl_cell_head" not in card:
        pytest.fail("the cell model card has no apl_cell_head (run make train-apl)")
    head = card["apl_cell_head"]
    assert file_sha256(DEFAULT_MODEL_DIR / head["file"]) == head["sha256"]
    assert head["cell_model_sha256"] == card["sha256"]
    apl_card = json.loads((REPO_ROOT / "services" / "subtype" / "model" / "apl_card.json").read_text())
    assert apl_card["cell_head_sha256"] == head["sha256"]
    assert file_sha256(REPO_ROOT / "services" / "subtype" / "model" / apl_card["file"]) == apl_card["sha256"]
    assert 0.0 < apl_card["threshold"] < 1.0


def test_alert_threshold_is_the_most_sensitive_that_keeps_specificity():
    require_training_stack()
    from training.train_apl import choose_threshold

    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    oof = np.array([[0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05, 0.5]])
    # all 4 APL at >= 0.3 costs 2 of 5 others (spec 0.6 < 0.65); 3 of 4 at 0.6 keeps spec 0.8
    chosen = choose_threshold(y, oof, 0.5, 0.65)
    assert chosen["threshold"] == pytest.approx((0.6 + 0.5) / 2)  # halfway to the next lower probability
    assert (chosen["cv_sensitivity"], chosen["cv_specificity"]) == (0.75, 0.8)
    # no threshold keeps both: the highest one with the sensitivity floor
    chosen = choose_threshold(y, oof, 1.0, 0.65)
    assert chosen["threshold"] == pytest.approx((0.3 + 0.2) / 2)
    assert chosen["cv_sensitivity"] == 1.0 and "no threshold" in chosen["rule"]


def test_int8_agreement_scores_each_patient_through_both_cell_models():
    """The alert on the int8 cell model (what the service runs on CPU) vs on the float one, for real cells of
    four DeepAPL patients; no check where the int8 file was made from another float model."""
    require_training_stack()
    from services.cell_classifier.settings import DEFAULT_MODEL_DIR
    from training import apl_cv, deepapl_dataset
    from training.apl_cohort import Cohort, counts_by_patient, read_patients, run_model
    from training.train_apl import int8_agreement

    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    if "int8" not in (card.get("serving_variants") or {}).get("files", {}):
        pytest.skip("no int8 variant committed")
    images = deepapl_dataset.data_dir() / "images"
    diagnosis = read_patients(deepapl_dataset.data_dir())
    chosen = sorted(p for p in diagnosis if diagnosis[p])[:2] + sorted(p for p in diagnosis if not diagnosis[p])[:2]
    files, owner = [], []
    for index, patient in enumerate(chosen):
        for path in sorted((images / patient).iterdir())[:12]:
            files.append(f"{patient}/{path.name}")
            owner.append(index)
    probabilities, embeddings = run_model(DEFAULT_MODEL_DIR / card["file"], [images / f for f in files])
    owner = np.array(owner)
    counts = counts_by_patient(card, probabilities, owner, len(chosen))
    assert [sum(c.values()) for c in counts] == [12] * len(chosen)
    is_apl = np.array([diagnosis[p] for p in chosen])
    cohort = Cohort(chosen, is_apl, files, owner, embeddings, probabilities, counts)
    names = ["mean_cell_logit", "promyelocyte_log_fraction"]
    head = apl_cv.CellHead(0.1).fit(embeddings, owner, is_apl)
    x = apl_cv.patient_feature_matrix(head.logits(embeddings), owner, counts, names, 0.25)
    patient = apl_cv.patient_model().fit(x, is_apl)

    check = int8_agreement(cohort, images, card, DEFAULT_MODEL_DIR, head, patient, names, 0.25, 0.5)
    assert check["patients"] == 4
    assert check["int8_sha256"] == card["serving_variants"]["files"]["int8"]["sha256"]
    assert 0 <= check["alert_disagreements"] <= 4
    assert check["alerts"]["float"] == int((patient.predict_proba(x)[:, 1] >= 0.5).sum())
    assert 0.0 <= check["mean_abs_probability_difference"] <= check["max_abs_probability_difference"] < 0.5
    assert check["max_abs_probability_difference"] > 0.0  # int8 answers differ a little: both models ran

    stale = json.loads(json.dumps(card))
    stale["serving_variants"]["files"]["int8"]["float_sha256"] = "0" * 64
    assert int8_agreement(cohort, images, stale, DEFAULT_MODEL_DIR, head, patient, names, 0.25, 0.5) is None
