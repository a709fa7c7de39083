"""Patients, labels and the counting-noise simulation for the subtype model."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.differential import FEATURE_NAMES, LEUKOCYTE_TYPES, expert_counts, features
from shared.subtypes import CONTROL, SUBTYPES
from shared.vocabulary import CELL_LABELS

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aml_patients" / "expert_differentials.csv"


@dataclass(frozen=True)
class Patients:
    ids: list[str]
    fractions: np.ndarray  # (n, len(LEUKOCYTE_TYPES)) leukocyte fractions in LEUKOCYTE_TYPES order
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


@dataclass(frozen=True)
class ExtraAMLPatients:
    """AML patients of another cohort whose genetic subtype is unknown (APL apart): extra AML examples for
    stage 1 (AML vs control) only."""
    ids: list[str]
    fractions: np.ndarray  # (n, len(LEUKOCYTE_TYPES)) leukocyte fractions in LEUKOCYTE_TYPES order
    counts: list[dict[str, float]]  # verified expert counts over the vocabulary (non-leukocytes included)
    is_apl: np.ndarray  # (n,) bool


def load_deepapl_differentials(root: Path) -> ExtraAMLPatients:
    """The DeepAPL discovery patients' differentials from the technologists' verified labels.

    Each verified single-class cell counts under its vocabulary label (``training.deepapl_dataset``'s
    ``EXPERT_CLASS_LABELS``, the mapping the cell model was trained with); unverified cells, cells filed under
    two classes and classes without a label (plasma cells, prolymphocyte) are not counted. Erythroblasts,
    platelets and smudge cells are counted but, as everywhere, are not part of the leukocyte differential."""
    from training.deepapl_dataset import read_patients, verified_cells  # noqa: PLC0415 (only when asked for)

    apl = read_patients(root)
    counts = {pid: {label: 0.0 for label in CELL_LABELS} for pid in sorted(apl)}
    for cell in verified_cells(root):
        if cell.label is not None:
            counts[cell.patient_id][cell.label] += 1.0
    ids, fractions, rows = [], [], []
    for pid, patient_counts in counts.items():
        vector = np.array([patient_counts[t] for t in LEUKOCYTE_TYPES], dtype=np.float64)
        if vector.sum() <= 0:
            continue  # no verified leukocyte: no differential
        ids.append(pid)
        rows.append(patient_counts)
        fractions.append(vector / vector.sum())
    return ExtraAMLPatients(ids, np.array(fractions), rows, np.array([apl[pid] for pid in ids], dtype=bool))


def feature_matrix(count_rows: np.ndarray) -> np.ndarray:
    """(n, len(LEUKOCYTE_TYPES)) counts (or fractions) in LEUKOCYTE_TYPES order -> (n, len(FEATURE_NAMES)) float32."""
    out = np.empty((len(count_rows), len(FEATURE_NAMES)), dtype=np.float32)
    for i, row in enumerate(count_rows):
        out[i] = list(features(dict(zip(LEUKOCYTE_TYPES, row))).values())
    return out


# Where a CNN's count of one leukocyte type leaks to its look-alikes (truth, seen): base rates, scaled
# by a random strength per simulated patient. Vocabulary 2.0: blasts look like lymphocytes (large,
# agranular), monocytes and promyelocytes, and the CNN's low-confidence cells become ``unclassified``;
# promyelocytes sit between blasts and the later granulocyte precursors (``ig``: myelocytes,
# metamyelocytes), which in turn look like band neutrophils. ``unclassified`` in the expert counts is
# only pb_other (few cells of varied kinds).
LOOK_ALIKES: dict[tuple[str, str], float] = {
    ("blast", "lymphocyte"): 0.04, ("blast", "monocyte"): 0.02, ("blast", "unclassified"): 0.02,
    ("blast", "promyelocyte"): 0.02,
    ("promyelocyte", "blast"): 0.03, ("promyelocyte", "ig"): 0.03, ("promyelocyte", "unclassified"): 0.01,
    ("ig", "promyelocyte"): 0.02, ("ig", "neutrophil"): 0.03, ("ig", "monocyte"): 0.02,
    ("neutrophil", "ig"): 0.02, ("eosinophil", "neutrophil"): 0.02, ("basophil", "lymphocyte"): 0.02,
    ("monocyte", "lymphocyte"): 0.02, ("monocyte", "ig"): 0.01, ("monocyte", "blast"): 0.02,
    ("monocyte", "unclassified"): 0.01,
    ("lymphocyte", "monocyte"): 0.01, ("lymphocyte", "blast"): 0.01, ("lymphocyte", "unclassified"): 0.005,
    ("unclassified", "blast"): 0.03, ("unclassified", "lymphocyte"): 0.02, ("unclassified", "monocyte"): 0.02,
}
# Leukocytes a CNN calls ``smudge`` (or another non-leukocyte) drop out of the differential: fragile
# blasts and lymphocytes are the usual smudge cells.
LOST_FROM_DIFFERENTIAL: dict[str, float] = {"blast": 0.01, "lymphocyte": 0.005}


def _neighbour_confusion() -> tuple[np.ndarray, np.ndarray]:
    """(leaks, losses): leaks[truth, seen] between leukocyte types and losses[truth] out of the differential."""
    index = {t: i for i, t in enumerate(LEUKOCYTE_TYPES)}
    matrix = np.zeros((len(LEUKOCYTE_TYPES), len(LEUKOCYTE_TYPES)))
    for (truth, seen), rate in LOOK_ALIKES.items():
        matrix[index[truth], index[seen]] = rate
    losses = np.zeros(len(LEUKOCYTE_TYPES))
    for truth, rate in LOST_FROM_DIFFERENTIAL.items():
        losses[index[truth]] = rate
    return matrix, losses


LEAKS, LOSSES = _neighbour_confusion()


def simulate_cnn_counts(fractions: np.ndarray, rng: np.random.Generator, total_range=(100, 500),
                        max_leak_scale: float = 2.0) -> np.ndarray:
    """Counts a CNN might report: look-alike confusion (and loss to smudge) of random strength, then
    multinomial sampling of 100-500 leukocytes. ``fractions`` (n, len(LEUKOCYTE_TYPES)) -> counts, same shape."""
    out = np.empty_like(fractions)
    for i, p in enumerate(fractions):
        scale = rng.uniform(0.0, max_leak_scale)
        leak, loss = LEAKS * scale, LOSSES * scale
        confusion = leak + np.diag(1.0 - leak.sum(axis=1) - loss)
        seen = p @ confusion
        out[i] = rng.multinomial(int(rng.integers(total_range[0], total_range[1] + 1)), seen / seen.sum())
    return out
