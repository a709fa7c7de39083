"""The patient-level APL alert (issue 10): ``apl_card.json`` + ``apl_patient.onnx`` (a logistic regression,
no pickle), sha256-checked at load. Its input row is ``shared.apl.feature_row`` over the cells' APL logits
(computed by the cell service's APL head, whose sha256 the card names) and the counts."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.subtype.ensemble import ModelIntegrityError
from shared.apl import feature_row
from shared.hashing import file_sha256
from shared.schemas import AplAssessment, AplModelIdentity

APL_CARD_FILE = "apl_card.json"


def rules_sha256(card: dict) -> str:
    """The sha256 of what decides an assessment besides the model file: the features, their pooling, the alert
    threshold, the cell minimum and the APL cell head expected. A threshold retuned in the card alone changes it,
    so that stored reports made under the old threshold are not served as current."""
    decides = {key: card.get(key) for key in ("features", "pooling", "threshold", "min_cells", "cell_head_sha256")}
    return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()


class AplModel:
    def __init__(self, model_dir: Path):
        self.card: dict = json.loads((model_dir / APL_CARD_FILE).read_text())
        path = model_dir / self.card["file"]
        actual = file_sha256(path)
        if actual != self.card["sha256"]:
            raise ModelIntegrityError(f"{path.name} has sha256 {actual}, the APL card says {self.card['sha256']}")
        self.threshold = float(self.card["threshold"])
        if not 0.0 <= self.threshold <= 1.0:
            raise ModelIntegrityError(f"the APL card's threshold {self.threshold} is not a probability")
        self.cell_head_sha256: str = self.card["cell_head_sha256"]
        self.min_cells = int(self.card.get("min_cells", 1))
        self.identity = AplModelIdentity(name=self.card["name"], version=self.card["version"], sha256=actual,
                                         rules_sha256=rules_sha256(self.card))
        feature_row(self.card, [0.0], {})  # refuses a card that asks for features shared.apl does not compute
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if "probabilities" not in outputs:
            raise ModelIntegrityError(f"{path.name} has no 'probabilities' output (outputs {outputs})")

    @classmethod
    def load(cls, model_dir: Path) -> AplModel | None:
        """The APL model of this directory, or None when it has no ``apl_card.json``."""
        return cls(model_dir) if (model_dir / APL_CARD_FILE).exists() else None

    @property
    def info(self) -> dict:
        return self.identity.model_dump()

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """(n, features) -> (n,) P(APL) (column 1 of the classifier's probabilities)."""
        out = self.session.run(["probabilities"], {self.input_name: rows.astype(np.float32)})[0]
        return np.asarray(out, dtype=np.float64)[:, 1]

    def assess(self, cell_logits: Sequence[float] | None, head_sha256: str | None,
               counts: Mapping[str, int]) -> tuple[AplAssessment | None, list[str]]:
        """The assessment of one patient and its warnings; None (with a warning saying why) when the logits
        come from another APL cell head, None without a warning when no logits were sent."""
        if not cell_logits:
            return None, []
        if head_sha256 != self.cell_head_sha256:
            return None, [f"no APL assessment: the cells' APL logits come from the APL cell head "
                          f"{(head_sha256 or 'unnamed')[:12]}, the APL model expects {self.cell_head_sha256[:12]} "
                          "(cell service and subtype service run different APL model versions)"]
        row = feature_row(self.card, cell_logits, counts)
        probability = float(np.clip(self.probabilities(np.array([row]))[0], 0.0, 1.0))
        warnings = []
        if len(cell_logits) < self.min_cells:
            warnings.append(f"APL probability from only {len(cell_logits)} cells (minimum {self.min_cells}): "
                            "the APL alert is unreliable")
        return AplAssessment(probability=probability, alert=probability >= self.threshold, threshold=self.threshold,
                             n_cells=len(cell_logits),
                             features={name: value for name, value in zip(self.card["features"], row)
                                       if math.isfinite(value)},
                             model=self.identity), warnings
