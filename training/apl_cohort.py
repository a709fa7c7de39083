"""The DeepAPL discovery patients as the served cell model sees them: every image of every
patient through the one shared preprocessing and the served ONNX cell model, giving per cell the
``embedding`` (input of the per-cell APL head) and the class probabilities (for the counts).

Cached per cell-model sha256 in ``.cache/`` (about 15 MB), so CV and export reuse one pass.
"""

from __future__ import annotations

import csv
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.hashing import file_sha256
from shared.preprocessing import PREPROCESSING_VERSION, preprocess_file
from shared.vocabulary import CELL_LABELS
from training.metrics import card_unclassified_rule


@dataclass
class Cohort:
    """Cells of many patients: ``cell_patient[i]`` indexes ``patient_ids``/``is_apl``/``counts``."""

    patient_ids: list[str]
    is_apl: np.ndarray  # (n_patients,) int 0/1
    files: list[str]  # per cell, relative to the images folder
    cell_patient: np.ndarray  # (n_cells,) int
    embeddings: np.ndarray  # (n_cells, width) float32
    probabilities: np.ndarray  # (n_cells, len(CELL_TYPES)) float32
    counts: list[dict[str, int]]  # per patient, the served labelling rule applied

    def subset(self, patients: np.ndarray) -> "Cohort":
        """The cells of ``patients`` (indices), patients renumbered in the given order."""
        from training.apl_cv import cells_of

        patients = np.asarray(patients)
        keep, cell_patient = cells_of(self.cell_patient, patients, len(self.patient_ids))
        return Cohort([self.patient_ids[p] for p in patients], self.is_apl[patients],
                      [f for f, k in zip(self.files, keep) if k], cell_patient,
                      self.embeddings[keep], self.probabilities[keep], [self.counts[p] for p in patients])


def read_patients(root: Path) -> dict[str, int]:
    with open(root / "patients.csv", newline="") as handle:
        return {row["patient_id"]: int(row["is_apl"]) for row in csv.DictReader(handle)}


def run_model(model_path: Path, paths: list[Path], batch: int = 128, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    probabilities, embeddings = [], []
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(paths), batch):
            images = np.stack(list(pool.map(preprocess_file, paths[start: start + batch])))
            p, e = session.run(["probabilities", "embedding"], {input_name: images})
            probabilities.append(p)
            embeddings.append(e)
            done = start + len(images)
            if (start // batch) % 20 == 0 or done == len(paths):
                rate = done / (time.perf_counter() - started)
                print(f"  cells {done}/{len(paths)} ({rate:.0f}/s)", flush=True)
    return np.concatenate(probabilities), np.concatenate(embeddings)


def load_cohort(root: Path, model_dir: Path, cache_dir: Path | None) -> Cohort:
    """Every image of every patient in ``root`` (deepapl_discovery layout) through the served model."""
    card = json.loads((model_dir / "model_card.json").read_text())
    model_path = model_dir / card["file"]
    sha = file_sha256(model_path)
    if sha != card["sha256"]:
        raise SystemExit(f"{model_path} does not match its card")
    patients = read_patients(root)
    patient_ids = sorted(patients)
    files, owner = [], []
    for index, patient in enumerate(patient_ids):
        for path in sorted((root / "images" / patient).iterdir()):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff"):
                files.append(f"{patient}/{path.name}")
                owner.append(index)
    cache = (cache_dir / f"apl_cohort_{sha[:16]}_p{PREPROCESSING_VERSION}.npz") if cache_dir else None
    if cache is not None and cache.exists():
        stored = np.load(cache, allow_pickle=False)
        if list(stored["files"]) == files:
            probabilities, embeddings = stored["probabilities"], stored["embeddings"]
        else:
            cache.unlink()
    if cache is None or not cache.exists():
        print(f"running the cell model over {len(files)} images of {len(patient_ids)} patients", flush=True)
        probabilities, embeddings = run_model(model_path, [root / "images" / f for f in files])
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, files=np.array(files), probabilities=probabilities, embeddings=embeddings)
    cell_patient = np.array(owner)
    counts = counts_by_patient(card, probabilities, cell_patient, len(patient_ids))
    return Cohort(patient_ids, np.array([patients[p] for p in patient_ids]), files, cell_patient,
                  embeddings.astype(np.float32), probabilities.astype(np.float32), counts)


def counts_by_patient(card: dict, probabilities: np.ndarray, cell_patient: np.ndarray, n_patients: int
                      ) -> list[dict[str, int]]:
    """Per patient, the cells of each label under the card's served labelling rule."""
    counts = [{label: 0 for label in CELL_LABELS} for _ in range(n_patients)]
    for patient, index in zip(cell_patient, card_unclassified_rule(card)(probabilities)):
        counts[patient][CELL_LABELS[index]] += 1
    return counts
