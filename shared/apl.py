"""Patient-level APL features from the per-cell APL evidence and the counts: one definition for
training (``training.train_apl``) and serving (the subtype service), so they cannot drift apart.

Each classified cell carries ``apl_logit``, the per-cell APL head's log-odds (the cell service
runs the head on the CNN's ``embedding`` output in the same batch). A patient is summarised by
pooling those logits; the APL model card names the features it uses, in order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from shared.vocabulary import LEUKOCYTE_TYPES

FEATURES = ("mean_cell_logit", "top_cell_logit_mean", "promyelocyte_log_fraction", "blast_log_fraction")
DEFAULT_TOP_FRACTION = 0.25


def pooled_logits(cell_logits: Sequence[float], top_fraction: float = DEFAULT_TOP_FRACTION) -> tuple[float, float]:
    """(mean over all cells, mean over the ``top_fraction`` highest-scoring cells, at least one)."""
    scores = np.asarray(cell_logits, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError("APL features need at least one cell's logit")
    if not np.all(np.isfinite(scores)):
        raise ValueError("cell APL logits must be finite numbers")
    top = max(1, math.ceil(top_fraction * scores.size))
    return float(scores.mean()), float(np.sort(scores)[-top:].mean())


def _log_fraction(count: int, total: int) -> float:
    """log of a smoothed fraction (+0.5 / +1), finite at 0 and at the total."""
    return math.log((count + 0.5) / (total + 1.0))


def apl_features(cell_logits: Sequence[float], counts: Mapping[str, int],
                 top_fraction: float = DEFAULT_TOP_FRACTION) -> dict[str, float]:
    """Every feature in ``FEATURES`` for one patient (a model uses those its card lists)."""
    mean, top = pooled_logits(cell_logits, top_fraction)
    leukocytes = sum(int(counts.get(name, 0)) for name in LEUKOCYTE_TYPES)
    return {
        "mean_cell_logit": mean,
        "top_cell_logit_mean": top,
        "promyelocyte_log_fraction": _log_fraction(int(counts.get("promyelocyte", 0)), leukocytes),
        "blast_log_fraction": _log_fraction(int(counts.get("blast", 0)), leukocytes),
    }


def feature_row(card: Mapping, cell_logits: Sequence[float], counts: Mapping[str, int]) -> list[float]:
    """The model's input row, in the order its card names (``card['features']``)."""
    values = apl_features(cell_logits, counts, float(card.get("pooling", {}).get("top_fraction",
                                                                                DEFAULT_TOP_FRACTION)))
    unknown = [name for name in card["features"] if name not in values]
    if unknown:
        raise ValueError(f"the APL model asks for unknown features {unknown}")
    return [values[name] for name in card["features"]]
