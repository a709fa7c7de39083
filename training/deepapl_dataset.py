"""The DeepAPL discovery cohort (Johns Hopkins, 82 AML/APL patients) as labelled cells, split by patient.

Only images a technologist verified with exactly one class are labelled data; unverified
images and images filed under two classes are left out. CellaVision's classes map onto
vocabulary 2.0 by ``EXPERT_CLASS_LABELS``; the classes mapped to ``None`` (plasma cells,
a single prolymphocyte) have no label of their own: they are kept apart as cells the model
never saw (``held_out_cells``), to check that the ``unclassified`` rule catches them.

Licence: copyright The Johns Hopkins University, published to replicate the paper's results;
research use only (see ../shared/data/README.md).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from shared.preprocessing import DEFAULT_DECODER
from shared.vocabulary import CELL_TYPES
from training.pbc_dataset import Split, load_arrays

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "deepapl_discovery"
SPLIT_SEED = 20261128
VALIDATION_PATIENTS = 10
TEST_PATIENTS = 14

EXPERT_CLASS_LABELS: dict[str, str | None] = {
    "Blast, no lineage spec": "blast",
    "Promonocyte": "blast",
    "Promyelocyte": "promyelocyte",
    "Myelocyte": "ig",
    "Metamyelocyte": "ig",
    "Segmented neutrophils": "neutrophil",
    "Band neutrophils": "neutrophil",
    "Eosinophils": "eosinophil",
    "Basophil": "basophil",
    "Monocyte": "monocyte",
    "Lymphocyte": "lymphocyte",
    "Lymphocyte, variant": "lymphocyte",
    "Erythroblast": "erythroblast",
    "Giant thrombocyte": "platelet",
    "Thrombocyte aggregation": "platelet",
    "Smudge cells": "smudge",
    "Plasma cells": None,
    "Prolymphocyte": None,
}


@dataclass(frozen=True)
class Cell:
    path: Path
    patient_id: str
    expert_class: str
    label: str | None


def data_dir() -> Path:
    return Path(os.environ.get("DEEPAPL_DIR", DEFAULT_DATA_DIR))


def read_patients(root: Path) -> dict[str, bool]:
    """patient_id -> is APL."""
    with open(root / "patients.csv", newline="") as handle:
        return {row["patient_id"]: row["is_apl"] == "1" for row in csv.DictReader(handle)}


def verified_cells(root: Path) -> list[Cell]:
    """Every verified single-class cell, labelled (``label`` None: a class outside the vocabulary)."""
    cells = []
    with open(root / "cells.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            expert = row["expert_class"]
            if row["verified"] != "1" or not expert or "|" in expert:
                continue
            if expert not in EXPERT_CLASS_LABELS:
                raise ValueError(f"unknown expert class {expert!r} in {root / 'cells.csv'}")
            cells.append(Cell(root / row["file"], row["patient_id"], expert, EXPERT_CLASS_LABELS[expert]))
    return cells


def patient_split(patients: dict[str, bool], seed: int = SPLIT_SEED) -> tuple[list[str], list[str], list[str]]:
    """Train/validation/test patient lists, stratified by APL; no patient is in two of them."""
    ids = sorted(patients)
    apl = [patients[p] for p in ids]
    rest, test = train_test_split(ids, test_size=TEST_PATIENTS, stratify=apl, random_state=seed)
    train, val = train_test_split(rest, test_size=VALIDATION_PATIENTS, stratify=[patients[p] for p in rest],
                                  random_state=seed)
    return sorted(train), sorted(val), sorted(test)


def split_dataset(root: Path, cache_dir: Path | None = None, per_class_limit: int | None = None,
                  decoder: str = DEFAULT_DECODER) -> tuple[Split, Split, Split]:
    """Labelled cells of the train, validation and test patients (``per_class_limit``: smoke runs;
    ``decoder``: ``shared.preprocessing.DECODERS``, the earlier path only to measure against)."""
    groups = patient_split(read_patients(root))
    cells = [c for c in verified_cells(root) if c.label is not None]
    splits = []
    for patients in groups:
        chosen = [c for c in cells if c.patient_id in set(patients)]
        if per_class_limit is not None:
            taken: dict[str, int] = {}
            limited = []
            for c in chosen:
                if taken.get(c.label, 0) < per_class_limit:
                    taken[c.label] = taken.get(c.label, 0) + 1
                    limited.append(c)
            chosen = limited
        paths = [c.path for c in chosen]
        images = load_arrays(paths, cache_dir, name="deepapl", decoder=decoder) if paths else np.zeros((0, 1, 1, 3), np.uint8)
        labels = np.asarray([CELL_TYPES.index(c.label) for c in chosen], dtype=np.int64)
        splits.append(Split(images, labels, [str(p) for p in paths], "deepapl"))
    return splits[0], splits[1], splits[2]


def patient_of(path: str | Path) -> str:
    """The patient a cell image belongs to (``images/<patient_id>/<file>``)."""
    return Path(path).parent.name


def held_out_cells(root: Path) -> list[Cell]:
    """Verified cells of classes the vocabulary has no label for (never used in training)."""
    return [c for c in verified_cells(root) if c.label is None]
