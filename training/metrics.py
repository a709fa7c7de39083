"""Classification metrics, temperature scaling and the ``unclassified`` threshold."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the validation negative log-likelihood (grid over log T)."""
    candidates = np.exp(np.linspace(np.log(0.25), np.log(8.0), 400))
    rows = np.arange(len(labels))
    nll = [-np.log(softmax(logits, t)[rows, labels] + 1e-12).mean() for t in candidates]
    return float(candidates[int(np.argmin(nll))])


def confidence_threshold(confidences: np.ndarray, max_unclassified_fraction: float) -> float:
    """Largest threshold on max-softmax that leaves at most that fraction of cells below it."""
    ordered = np.sort(confidences)
    allowed = int(np.floor(max_unclassified_fraction * len(ordered)))
    return float(ordered[allowed]) if allowed < len(ordered) else float(ordered[-1])


def apply_unclassified_rule(probabilities: np.ndarray, threshold: float, n_classes: int,
                            class_minimum: dict[int, float] | None = None) -> np.ndarray:
    """Class index per row, or ``n_classes`` (``unclassified``) where the top probability is below ``threshold``
    or, for a class in ``class_minimum``, below that class's own minimum."""
    best = probabilities.argmax(axis=1)
    top = probabilities.max(axis=1)
    floor = np.full(len(best), threshold, dtype=float)
    for index, minimum in (class_minimum or {}).items():
        floor = np.where(best == index, np.maximum(floor, minimum), floor)
    return np.where(top >= floor, best, n_classes)


def card_class_minimum(card: dict) -> dict[int, float]:
    """A cell model card's per-class probability minimum (``unclassified_rule.class_minimum``) by class index."""
    from shared.vocabulary import CELL_TYPES

    return {CELL_TYPES.index(k): float(v) for k, v in (card["unclassified_rule"].get("class_minimum") or {}).items()}


def card_unclassified_rule(card: dict):
    """The served labelling rule of a cell model card (``unclassified_rule``: threshold and per-class
    minimum) as a function: probabilities (n, classes) -> class index per row, ``len(CELL_TYPES)`` for
    ``unclassified``."""
    from shared.vocabulary import CELL_TYPES

    threshold, minimum = float(card["unclassified_rule"]["threshold"]), card_class_minimum(card)
    return lambda p: apply_unclassified_rule(p, threshold, len(CELL_TYPES), minimum)


def class_minimum_for_false_positives(probabilities: np.ndarray, labels: np.ndarray, threshold: float,
                                      target: int, negatives: np.ndarray, max_rate: float) -> float:
    """The smallest minimum probability for class ``target`` (at least ``threshold``) at which at most
    ``max_rate`` of the rows whose label is in ``negatives`` are labelled ``target``."""
    rows = np.isin(labels, negatives)
    called = rows & (probabilities.argmax(axis=1) == target)
    confidences = np.sort(probabilities[called, target])
    allowed = int(np.floor(max_rate * rows.sum()))
    if len(confidences) <= allowed:
        return float(threshold)
    return float(max(threshold, np.nextafter(confidences[len(confidences) - allowed - 1], 1.0)))


def macro_f1_present(per_class: dict) -> float:
    """The mean F1 over the classes with cells (``support`` > 0) of a ``classification_report``'s ``per_class``."""
    present = [c["f1"] for c in per_class.values() if c["support"] > 0]
    return sum(present) / len(present) if present else 0.0


def classification_report(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    ``predicted`` may hold ``len(class_names)`` for ``unclassified``: it counts as wrong. Macro-F1 averages
    over the classes the split has cells of (cards before 2026-12-07 averaged over all classes, so a split
    without blasts or smudge cells, such as PBC's, counted two F1 of 0: 0.767 for 2.3.0's PBC test split,
    0.938 over its 9 classes present).
    """
    known = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=known, zero_division=0
    )
    per_class = {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                 for name, p, r, f, s in zip(class_names, precision, recall, f1, support)}
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": macro_f1_present(per_class),
        "unclassified_fraction": float(np.mean(predicted == len(class_names))),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=known + [len(class_names)]).tolist(),
    }


NORMAL_TYPES: tuple[str, ...] = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
                                 "neutrophil", "platelet")
"""The 8 PBC cell types: the cells that must not be called blasts."""


def leukaemia_summary(labels: np.ndarray, predicted: np.ndarray) -> dict:
    """What a lab reading leukaemic blood needs from the cell step, on label indices over ``CELL_TYPES``
    (``len(CELL_TYPES)`` = unclassified):

    - ``accuracy_9``: accuracy over the 8 PBC types + blast (smudge cells not counted), scored in the 8-type
      vocabulary: ``promyelocyte`` counts as ``ig`` both ways (a true ig labelled promyelocyte is right, and a
      true promyelocyte labelled ig), and a promyelocyte labelled ``blast`` is right too (abnormal
      promyelocytes are blast equivalents);
    - ``blast_recall``: expert blasts labelled ``blast``; ``blast_flagged``: labelled ``blast`` or
      ``unclassified``;
    - ``normal_called_blast``: share of the 8 normal types labelled ``blast``.
    """
    from shared.vocabulary import CELL_TYPES

    index = {name: i for i, name in enumerate(CELL_TYPES)}
    unclassified, blast = len(CELL_TYPES), index["blast"]
    normal = np.isin(labels, [index[n] for n in NORMAL_TYPES])
    is_blast = labels == blast
    is_promyelocyte = labels == index["promyelocyte"]
    counted = normal | is_blast | is_promyelocyte
    is_ig = labels == index["ig"]
    right = ((predicted == labels) | (is_promyelocyte & np.isin(predicted, [index["ig"], blast]))
             | (is_ig & (predicted == index["promyelocyte"])))
    return {
        "n_counted": int(counted.sum()),
        "accuracy_9": float(right[counted].mean()) if counted.any() else float("nan"),
        "n_blasts": int(is_blast.sum()),
        "blast_recall": float((predicted[is_blast] == blast).mean()) if is_blast.any() else float("nan"),
        "blast_flagged": float(np.isin(predicted[is_blast], [blast, unclassified]).mean()) if is_blast.any()
        else float("nan"),
        "n_normal": int(normal.sum()),
        "normal_called_blast": float((predicted[normal] == blast).mean()) if normal.any() else float("nan"),
    }


def leukaemia_counts(summary: dict) -> str:
    """A ``leukaemia_summary`` as the counts an adoption rule is written in (its rates times their cell
    numbers, exact), e.g. ``876 of 998 right, 179 of 200 blasts flagged, 17 of 791 normal called blast``;
    the blast figures are left out where there are no blasts (PBC)."""
    def count(rate: str, n: str) -> str:
        return f"{round(summary[rate] * summary[n])} of {summary[n]}"

    parts = [f"{count('accuracy_9', 'n_counted')} right"] if summary["n_counted"] else []
    if summary["n_blasts"]:
        parts.append(f"{count('blast_flagged', 'n_blasts')} blasts flagged")
    if summary["n_normal"]:
        parts.append(f"{count('normal_called_blast', 'n_normal')} normal called blast")
    return ", ".join(parts)


LEUKAEMIA_RATES: tuple[str, ...] = ("accuracy_9", "blast_flagged", "normal_called_blast")
"""The leukaemia-view rates the issue sets targets for; intervals are given for these."""


def patient_bootstrap_intervals(labels: np.ndarray, predicted: np.ndarray, patients: np.ndarray,
                                repeats: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile intervals of the ``LEUKAEMIA_RATES`` when the *patients* are resampled with replacement
    (all of a drawn patient's cells come along): the spread a new set of patients of the same size would
    show, which is what matters when a few patients hold most of the errors. ``{rate: [low, high]}`` plus
    ``patients`` and ``repeats``; a resample without blasts or normal cells does not count for that rate."""
    rng = np.random.default_rng(seed)
    ids, inverse = np.unique(np.asarray(patients), return_inverse=True)
    rows_of = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    draws: dict[str, list[float]] = {name: [] for name in LEUKAEMIA_RATES}
    for _ in range(repeats):
        rows = np.concatenate([rows_of[i] for i in rng.integers(0, len(ids), len(ids))])
        summary = leukaemia_summary(labels[rows], predicted[rows])
        for name in LEUKAEMIA_RATES:
            if not np.isnan(summary[name]):
                draws[name].append(summary[name])
    tail = (1.0 - level) / 2.0
    return {"patients": int(len(ids)), "repeats": int(repeats), "level": level,
            **{name: [float(np.quantile(v, tail)), float(np.quantile(v, 1.0 - tail))] if v else None
               for name, v in draws.items()}}
