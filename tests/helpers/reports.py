"""A plausible PatientReport without running any service (for store, FHIR and HL7 tests)."""

from __future__ import annotations

import hashlib

from shared.differential import per_100_leukocytes
from shared.schemas import PatientReport
from shared.vocabulary import CELL_LABELS, LEUKOCYTE_TYPES

LABELS = ["neutrophil"] * 6 + ["lymphocyte"] * 4 + ["blast"] * 3 + ["monocyte", "erythroblast", "smudge"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sample_report(patient_id: str = "P-1", labels: list[str] = LABELS, salt: str = "") -> PatientReport:
    counts = {label: 0 for label in CELL_LABELS}
    for label in labels:
        counts[label] += 1
    leukocytes = sum(counts[t] for t in LEUKOCYTE_TYPES)
    cells = [{"filename": f"c{i}.jpg", "sha256": sha(f"{salt}{patient_id}-{i}"), "label": label,
              "confidence": 0.9, "appearance_distance": 2.0} for i, label in enumerate(labels)]
    return PatientReport(
        patient_id=patient_id, request_id="0" * 32, created_at="2026-11-28T12:00:00+00:00", n_images=len(labels),
        n_classified=len(labels), n_unclassified=0, n_failed=0, failed=[], cell_counts=counts,
        leukocyte_differential={t: round(100.0 * counts[t] / leukocytes, 2) for t in LEUKOCYTE_TYPES},
        per_100_leukocytes=per_100_leukocytes(counts), quality=None, aml_probability=0.7, prediction="PML_RARA",
        probabilities={"control": 0.3, "CBFB_MYH11": 0.0, "NPM1": 0.0, "PML_RARA": 0.7, "RUNX1_RUNX1T1": 0.0},
        models={"cell": {"name": "cell", "version": "2.0.0", "sha256": "a" * 64},
                "subtype": {"name": "subtype", "version": "2.0.0", "sha256": "b" * 64}},
        cached=False, warnings=[], cells=cells)
