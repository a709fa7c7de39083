"""Counts -> features -> ensemble -> one patient's answer, with its warnings."""

from __future__ import annotations

import numpy as np

from services.subtype.apl import AplModel
from services.subtype.ensemble import SubtypeEnsemble
from shared.differential import FEATURE_NAMES, features, leukocyte_total, per_100_leukocytes
from shared.subtypes import PATIENT_CLASSES
from shared.schemas import SubtypeModelInfo, SubtypePrediction, SubtypeRequest


class NoLeukocytes(ValueError):
    pass


class SubtypePredictor:
    def __init__(self, ensemble: SubtypeEnsemble, apl: AplModel | None = None):
        self.ensemble = ensemble
        self.apl = apl
        self.min_leukocytes = int(ensemble.card["min_leukocytes"])
        self.model_info = SubtypeModelInfo(**ensemble.info)

    def predict_requests(self, requests: list[SubtypeRequest]) -> list[SubtypePrediction]:
        """Counts (and, where sent, the cells' APL logits) -> one answer per patient."""
        answers = self.predict_many([dict(r.counts) for r in requests])
        for answer, request in zip(answers, requests):
            if self.apl is None or not request.apl_cell_logits:
                continue
            answer.apl, warnings = self.apl.assess(request.apl_cell_logits, request.apl_cell_head_sha256,
                                                   dict(request.counts))
            answer.warnings.extend(warnings)
        return answers

    def predict_many(self, many_counts: list[dict[str, int]]) -> list[SubtypePrediction]:
        feature_rows = []
        for index, counts in enumerate(many_counts):
            if leukocyte_total(counts) <= 0:
                where = f" (item {index})" if len(many_counts) > 1 else ""
                raise NoLeukocytes(f"no leukocytes counted{where}: erythroblasts, platelets and smudge "
                                   "cells alone give no differential")
            feature_rows.append(features(counts))
        x = np.array([[row[name] for name in FEATURE_NAMES] for row in feature_rows], dtype=np.float32)
        probabilities = self.ensemble.predict(x)
        return [self._answer(counts, row, p) for counts, row, p in zip(many_counts, feature_rows, probabilities)]

    def _answer(self, counts: dict[str, int], feature_row: dict[str, float], p: np.ndarray) -> SubtypePrediction:
        warnings = []
        total = leukocyte_total(counts)
        if total < self.min_leukocytes:
            warnings.append(f"only {int(total)} leukocytes counted (minimum {self.min_leukocytes}): "
                            "the result is unreliable")
        prediction, aml_probability = PATIENT_CLASSES[int(np.argmax(p))], float(1.0 - p[0])
        if prediction == PATIENT_CLASSES[0] and aml_probability >= 0.5:
            warnings.append(f"the most probable single class is {prediction} ({p[0]:.0%}), but P(AML) is "
                            f"{aml_probability:.0%}, split among the subtypes: AML is more likely than not; "
                            "review the differential")
        return SubtypePrediction(
            model=self.model_info,
            aml_probability=aml_probability,
            prediction=prediction,
            probabilities={c: float(v) for c, v in zip(PATIENT_CLASSES, p)},
            features=feature_row,
            per_100_leukocytes=per_100_leukocytes(counts),
            warnings=warnings,
        )
