"""Patients, labels and the counting-noise simulation for the subtype model."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.differential import FEATURE_NAMES, LEUKOCYTE_TYPES, expert_counts, features
from shared.subtypes import CONTROL, SUBTYPES

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aml_patients" / "expert_differentials.csv"


@dataclass(frozen=True)
class Patients:
    ids: list[str]
    fractions: np.ndarray  # (n, 7) leukocyte fractions in LEUKOCYTE_TYPES order
    counts: list[dict[str, float]]  # expert counts over the vocabulary
    labels: np.ndarray  # (n,) 0 = control, 1.. = SUBTYPES index + 1


def csv_path() -> Path:
    return Path(os.environ.get("AML_PATIENTS_CSV", DEFAULT_CSV))


def load_patients(path: Path | None = None) -> Patients:
    classes = (CONTROL,) + SUBTYPES
    ids, fractions, counts, labels = [], [], [], []
    with open(path or csv_path(), newline="") as handle:
        for row in csv.DictReader(handle):
            patient_counts = expert_counts(row)
            vector = np.array([patient_counts[t] for t in LEUKOCYTE_TYPES], dtype=np.float64)
            ids.append(row["patient_id"])
            counts.append(patient_counts)
            fractions.append(vector / vector.sum())
            labels.append(classes.index(row["subtype"]))
    return Patients(ids, np.array(fractions), counts, np.array(labels))


def feature_matrix(count_rows: np.ndarray) -> np.ndarray:
    """(n, 7) counts (or fractions) in LEUKOCYTE_TYPES order -> (n, len(FEATURE_NAMES)) float32."""
    out = np.empty((len(count_rows), len(FEATURE_NAMES)), dtype=np.float32)
    for i, row in enumerate(count_rows):
        out[i] = list(features(dict(zip(LEUKOCYTE_TYPES, row))).values())
    return out


def _neighbour_confusion() -> np.ndarray:
    """Where a CNN's count of one leukocyte type leaks to its look-alikes (rows: truth)."""
    index = {t: i for i, t in enumerate(LEUKOCYTE_TYPES)}
    leaks = {
        ("neutrophil", "ig"): 0.02, ("ig", "neutrophil"): 0.03, ("ig", "monocyte"): 0.02,
        ("monocyte", "lymphocyte"): 0.02, ("monocyte", "ig"): 0.01, ("lymphocyte", "monocyte"): 0.01,
        ("eosinophil", "neutrophil"): 0.02, ("basophil", "lymphocyte"): 0.02,
        ("unclassified", "lymphocyte"): 0.05, ("unclassified", "monocyte"): 0.03, ("unclassified", "ig"): 0.02,
        ("lymphocyte", "unclassified"): 0.01, ("monocyte", "unclassified"): 0.02,
    }
    matrix = np.zeros((len(LEUKOCYTE_TYPES), len(LEUKOCYTE_TYPES)))
    for (truth, seen), rate in leaks.items():
        matrix[index[truth], index[seen]] = rate
    return matrix


LEAKS = _neighbour_confusion()


def simulate_cnn_counts(fractions: np.ndarray, rng: np.random.Generator, total_range=(100, 500),
                        max_leak_scale: float = 2.0) -> np.ndarray:
    """Counts a CNN might report: look-alike confusion of random strength, then multinomial sampling
    of 100-500 cells. ``fractions`` (n, 7) -> counts (n, 7)."""
    out = np.empty_like(fractions)
    for i, p in enumerate(fractions):
        leak = LEAKS * rng.uniform(0.0, max_leak_scale)
        confusion = leak + np.diag(1.0 - leak.sum(axis=1))
        seen = p @ confusion
        out[i] = rng.multinomial(int(rng.integers(total_range[0], total_range[1] + 1)), seen / seen.sum())
    return out
