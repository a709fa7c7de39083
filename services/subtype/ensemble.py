"""The two-stage soft-voting ensemble, run from ONNX files checked against the model card.

Stage 1 gives P(AML); stage 2 gives P(subtype | AML). The five patient classes are
P(control) = 1 - P(AML) and P(subtype) = P(AML) * P(subtype | AML), so they always sum to 1.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shared.differential import FEATURE_NAMES
from shared.hashing import file_sha256

CARD_FILE = "model_card.json"
STAGES = ("aml_vs_control", "subtype")


class ModelIntegrityError(RuntimeError):
    """An artifact does not match the sha256 in its card."""


def combined_sha256(member_hashes: list[str]) -> str:
    """One hash for the whole model: sha256 over the members' hashes in card order."""
    return hashlib.sha256("".join(member_hashes).encode()).hexdigest()


def rules_sha256(card: dict) -> str:
    """The sha256 of what decides an answer besides the member files: each stage's classes, members and voting
    weights, the features and the leukocyte minimum. 2.1.0 and 2.1.1 share every member file and differ only in
    stage 1's weights: a stored report keyed by the files' hash alone would outlive such a change."""
    decides = {"stages": {stage: {"classes": spec["classes"], "members": sorted(spec["members"]),
                                  "weights": spec.get("weights", {})}
                          for stage, spec in card["stages"].items()},
               "feature_names": card["feature_names"], "min_leukocytes": card["min_leukocytes"]}
    return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()


def _probabilities(outputs: list, n_classes: int) -> np.ndarray:
    """The class-probability output of a classifier, whatever its converter's convention."""
    for output in outputs:
        if isinstance(output, list) and output and isinstance(output[0], dict):  # zipmap: list of {class: p}
            return np.array([[row[k] for k in sorted(row)] for row in output], dtype=np.float64)
        if isinstance(output, np.ndarray) and output.ndim == 2 and output.shape[1] == n_classes \
                and np.issubdtype(output.dtype, np.floating):
            return output.astype(np.float64)
    raise ValueError("model has no (n, classes) probability output")


class Member:
    def __init__(self, path: Path, n_classes: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.n_classes = n_classes

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return _probabilities(self.session.run(None, {self.input_name: x.astype(np.float32)}), self.n_classes)


class SubtypeEnsemble:
    def __init__(self, model_dir: Path, members: tuple[str, ...] | None = None):
        self.card: dict = json.loads((model_dir / CARD_FILE).read_text())
        if list(self.card["feature_names"]) != list(FEATURE_NAMES):
            raise ModelIntegrityError("the card's features differ from shared.differential.FEATURE_NAMES")
        hashes = []
        self.stages: dict[str, dict[str, Member]] = {}
        for stage in STAGES:
            spec = self.card["stages"][stage]
            self.stages[stage] = {}
            for name, member in spec["members"].items():
                path = model_dir / member["file"]
                actual = file_sha256(path)
                if actual != member["sha256"]:
                    raise ModelIntegrityError(f"{path.name} has sha256 {actual}, the card says {member['sha256']}")
                hashes.append(actual)
                if members is None or name in members:
                    self.stages[stage][name] = Member(path, len(spec["classes"]))
        self.sha256 = combined_sha256(hashes)
        if self.sha256 != self.card["sha256"]:
            raise ModelIntegrityError("the combined sha256 of the members does not match the card")
        self.rules_sha256 = rules_sha256(self.card)

    @property
    def info(self) -> dict:
        return {"name": self.card["name"], "version": self.card["version"], "sha256": self.sha256,
                "rules_sha256": self.rules_sha256}

    def stage_probabilities(self, stage: str, x: np.ndarray) -> np.ndarray:
        """Soft vote of the stage's members, weighted as in the card."""
        weights = self.card["stages"][stage].get("weights", {})
        names = list(self.stages[stage])
        return np.average([self.stages[stage][n].predict_proba(x) for n in names], axis=0,
                          weights=[weights.get(n, 1.0) for n in names])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, features) -> (n, 5) probabilities in ``PATIENT_CLASSES`` order."""
        p_aml = self.stage_probabilities("aml_vs_control", x)[:, 1]
        return combine_stages(p_aml, self.stage_probabilities("subtype", x))


def combine_stages(p_aml: np.ndarray, p_subtype_given_aml: np.ndarray) -> np.ndarray:
    """Stage outputs -> 5-class probabilities in ``PATIENT_CLASSES`` order."""
    return np.column_stack([1.0 - p_aml, p_aml[:, None] * p_subtype_given_aml])

