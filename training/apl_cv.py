"""The APL model and its honest evaluation: a per-cell head learned from patient labels
(multiple-instance learning, instance level), pooled per patient, and a small patient-level
logistic regression; repeated patient-level cross-validation with nested cross-fitting, so that
no patient's cells are ever scored by a head that saw them.

Kept free of TensorFlow and of file formats: ``training.train_apl`` feeds it and exports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from shared.apl import apl_features


# --- metrics ---------------------------------------------------------------------------------

def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outranks a random
    negative, ties counting one half (Mann-Whitney U / (n_pos * n_neg))."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    positives, negatives = score[y], score[~y]
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))


def sensitivity_specificity(y: np.ndarray, probability: np.ndarray, threshold: float) -> tuple[float, float]:
    """Alert when probability >= threshold."""
    y = np.asarray(y).astype(bool)
    alert = np.asarray(probability) >= threshold
    return float(alert[y].mean()), float((~alert[~y]).mean())


def threshold_for_sensitivity(y: np.ndarray, probability: np.ndarray, target: float) -> float:
    """The highest threshold at which at least ``target`` of the positives alert."""
    positives = np.sort(np.asarray(probability, dtype=np.float64)[np.asarray(y).astype(bool)])[::-1]
    if positives.size == 0:
        raise ValueError("no positives")
    needed = max(1, math.ceil(target * positives.size - 1e-9))
    return float(positives[needed - 1])


# --- the model -------------------------------------------------------------------------------

def _balanced_cell_weights(cell_patient: np.ndarray, is_apl: np.ndarray) -> np.ndarray:
    """Each patient weighs the same in total, and APL and other AML weigh the same."""
    cells_per_patient = np.bincount(cell_patient, minlength=len(is_apl)).astype(np.float64)
    per_class = np.array([(is_apl == 0).sum(), (is_apl == 1).sum()], dtype=np.float64)
    patient_weight = len(is_apl) / (2.0 * per_class[is_apl])
    weights = patient_weight[cell_patient] / cells_per_patient[cell_patient]
    return weights * len(weights) / weights.sum()


@dataclass
class CellHead:
    """Per-cell APL log-odds from the CNN embedding: standardisation + L2 logistic regression,
    every cell carrying its patient's label (naive multiple-instance learning)."""

    c: float = 0.01
    weights: np.ndarray | None = field(default=None, repr=False)  # folded: logit = x @ weights + bias
    bias: float = 0.0

    def fit(self, embeddings: np.ndarray, cell_patient: np.ndarray, is_apl: np.ndarray) -> "CellHead":
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=500))
        pipeline.fit(embeddings, is_apl[cell_patient],
                     logisticregression__sample_weight=_balanced_cell_weights(cell_patient, is_apl))
        scaler, regression = pipeline.steps[0][1], pipeline.steps[1][1]
        scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        self.weights = (regression.coef_[0] / scale).astype(np.float64)
        self.bias = float(regression.intercept_[0] - np.dot(scaler.mean_ / scale, regression.coef_[0]))
        return self

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings.astype(np.float64) @ self.weights + self.bias


def patient_feature_rows(cell_logits: np.ndarray, cell_patient: np.ndarray, counts: list[dict],
                         top_fraction: float) -> list[dict[str, float]]:
    """Every ``shared.apl`` feature of each patient (``cell_patient`` numbers patients as ``counts``)."""
    return [apl_features(cell_logits[cell_patient == patient], patient_counts, top_fraction)
            for patient, patient_counts in enumerate(counts)]


def feature_matrix(rows: list[dict[str, float]], names: list[str]) -> np.ndarray:
    return np.array([[row[name] for name in names] for row in rows], dtype=np.float64)


def patient_feature_matrix(cell_logits: np.ndarray, cell_patient: np.ndarray, counts: list[dict],
                           names: list[str], top_fraction: float) -> np.ndarray:
    return feature_matrix(patient_feature_rows(cell_logits, cell_patient, counts, top_fraction), names)


def cells_of(cell_patient: np.ndarray, patients: np.ndarray, n_patients: int) -> tuple[np.ndarray, np.ndarray]:
    """The mask of the cells of ``patients`` and, for those cells, their patient numbered by position in
    ``patients`` (0 .. len(patients) - 1)."""
    position = -np.ones(n_patients, dtype=int)
    position[patients] = np.arange(len(patients))
    mask = np.isin(cell_patient, patients)
    return mask, position[cell_patient[mask]]


def patient_model(c: float = 1.0):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))


def cross_fitted_logits(embeddings, cell_patient, is_apl, c: float, folds: int, seed: int) -> np.ndarray:
    """Every cell's logit from a head that did not see its patient (k-fold over patients)."""
    logits = np.zeros(len(cell_patient))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(np.zeros(len(is_apl)), is_apl):
        train_cells, train_patient = cells_of(cell_patient, train, len(is_apl))
        head = CellHead(c).fit(embeddings[train_cells], train_patient, is_apl[train])
        test_cells = np.isin(cell_patient, test)
        logits[test_cells] = head.logits(embeddings[test_cells])
    return logits


@dataclass
class CvResult:
    configurations: dict[str, list[str]]
    oof: dict[str, np.ndarray]  # configuration -> (repeats, patients) out-of-fold probabilities
    fold_auroc: dict[str, list[float]] = field(default_factory=dict)  # per repeat

    def summary(self, is_apl: np.ndarray) -> dict:
        out = {}
        for name, probabilities in self.oof.items():
            per_repeat = [auroc(is_apl, p) for p in probabilities]
            out[name] = {"features": self.configurations[name], "auroc_mean": round(float(np.mean(per_repeat)), 4),
                         "auroc_sd": round(float(np.std(per_repeat)), 4),
                         "auroc_min": round(float(np.min(per_repeat)), 4),
                         "auroc_max": round(float(np.max(per_repeat)), 4)}
        return out


def repeated_cv(embeddings: np.ndarray, cell_patient: np.ndarray, is_apl: np.ndarray, counts: list[dict],
                configurations: dict[str, list[str]], *, head_c: float, top_fraction: float, folds: int = 5,
                repeats: int = 5, inner_folds: int = 5, seed: int = 20261128, progress=print) -> CvResult:
    """Out-of-fold APL probabilities for every patient, per repeat and configuration.

    Outer split by patient (stratified); inside each outer training set the head is cross-fitted
    (``inner_folds``) so the patient model learns from logits of unseen patients, as it will see in
    service; the outer test patients are scored by a head fitted on all outer training patients."""
    oof = {name: np.zeros((repeats, len(is_apl))) for name in configurations}
    for repeat in range(repeats):
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed + repeat)
        for fold, (train, test) in enumerate(splitter.split(np.zeros(len(is_apl)), is_apl)):
            train_cells, train_patient = cells_of(cell_patient, train, len(is_apl))
            inner = cross_fitted_logits(embeddings[train_cells], train_patient, is_apl[train], head_c,
                                        inner_folds, seed + 1000 * repeat + fold)
            head = CellHead(head_c).fit(embeddings[train_cells], train_patient, is_apl[train])
            test_cells, test_patient = cells_of(cell_patient, test, len(is_apl))
            train_rows = patient_feature_rows(inner, train_patient, [counts[p] for p in train], top_fraction)
            test_rows = patient_feature_rows(head.logits(embeddings[test_cells]), test_patient,
                                             [counts[p] for p in test], top_fraction)
            for name, names in configurations.items():
                x_train, x_test = feature_matrix(train_rows, names), feature_matrix(test_rows, names)
                model = patient_model().fit(x_train, is_apl[train])
                oof[name][repeat, test] = model.predict_proba(x_test)[:, 1]
            progress(f"  repeat {repeat + 1}/{repeats} fold {fold + 1}/{folds}")
    return CvResult(configurations, oof)
