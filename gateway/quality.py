"""Is this patient's result trustworthy? The report's ``quality`` object and its warnings.

Per image the cell service gives a label (``unclassified`` when the model cannot place the
cell) and an appearance distance (``shared.appearance``: how far the image's colour and
density statistics are from the training images'). Per patient this module reports the
share of unclassified and smudge cells and the median appearance distance, and warns

- when the images look unlike the training data (median distance above the cell model
  card's ``appearance.patient_threshold``): another scanner, stain, magnification or focus, so
  every cell should be reviewed;
- when many cells are unclassified (``UNCLASSIFIED_WARNING``) or smudged (``SMUDGE_WARNING``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from shared.schemas import ReportQuality
from shared.vocabulary import UNCLASSIFIED

UNCLASSIFIED_WARNING = 0.10
SMUDGE_WARNING = 0.30


def assess(counts: Mapping[str, int], distances: Sequence[float | None], appearance: Mapping | None
           ) -> tuple[ReportQuality, list[str]]:
    """Counts over the vocabulary, the labelled images' appearance distances and the cell model card's
    ``appearance`` section -> the quality object and the warnings it calls for."""
    total = sum(counts.values())
    unclassified = counts.get(UNCLASSIFIED, 0) / total if total else 0.0
    smudge = counts.get("smudge", 0) / total if total else 0.0
    known = [d for d in distances if d is not None]
    appearance = appearance or {}
    patient_threshold = appearance.get("patient_threshold")
    image_threshold = appearance.get("image_threshold")
    median = statistics.median(known) if known else None
    out_of_domain = (sum(d > image_threshold for d in known) / len(known)
                     if known and image_threshold is not None else None)
    looks_unfamiliar = median is not None and patient_threshold is not None and median > patient_threshold
    warnings = []
    if looks_unfamiliar:
        warnings.append(
            f"these images look unlike the images the cell model was trained on (median appearance distance "
            f"{median:.1f}, threshold {patient_threshold:.1f}; {out_of_domain:.0%} of cells out of domain): "
            "another scanner, stain, magnification or focus? The counts may be wrong: review every cell")
    if known and patient_threshold is None:
        warnings.append("the images' appearance could not be judged: the cell model's appearance thresholds are "
                        "unknown (its service was being upgraded during this request); check that they look like "
                        "the training data, or send them again")
    if unclassified >= UNCLASSIFIED_WARNING:
        warnings.append(f"{unclassified:.0%} of cells are unclassified (the model could not place them): "
                        "review them before trusting the differential")
    if smudge >= SMUDGE_WARNING:
        warnings.append(f"{smudge:.0%} of cells are smudge cells: the differential rests on fewer intact cells")
    quality = ReportQuality(
        n_cells=total,
        unclassified_fraction=round(unclassified, 4),
        smudge_fraction=round(smudge, 4),
        appearance_distance=round(median, 3) if median is not None else None,
        appearance_threshold=patient_threshold,
        out_of_domain_fraction=round(out_of_domain, 4) if out_of_domain is not None else None,
        looks_out_of_domain=looks_unfamiliar,
        review_every_cell=looks_unfamiliar or unclassified >= UNCLASSIFIED_WARNING,
    )
    return quality, warnings
