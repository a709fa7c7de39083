"""Small, real APL artifacts in the contract's format, for tests that must not wait for trained ones:
a per-cell head (``embedding`` [batch, 256] -> ``apl_logit`` [batch]) and a patient-level logistic
regression (``features`` -> ``label`` int64, ``probabilities`` [batch, 2]), written with ``onnx``,
and model directories (copies of the committed ones) whose cards name them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from shared.hashing import file_sha256

CELL_MODEL_DIR = Path(__file__).resolve().parents[2] / "services" / "cell_classifier" / "model"
SUBTYPE_MODEL_DIR = Path(__file__).resolve().parents[2] / "services" / "subtype" / "model"
FEATURES = ["mean_cell_logit", "top_cell_logit_mean", "promyelocyte_log_fraction", "blast_log_fraction"]


def write_cell_head(path: Path, weights: np.ndarray, bias: float) -> str:
    """embedding [batch, 256] @ weights + bias -> apl_logit [batch]; returns the file's sha256."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["embedding", "w"], ["z"]),
         helper.make_node("Add", ["z", "b"], ["zb"]),
         helper.make_node("Reshape", ["zb", "shape"], ["apl_logit"])],
        "apl_cell_head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("apl_logit", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(np.asarray(weights, np.float32).reshape(256, 1), "w"),
         numpy_helper.from_array(np.array([bias], np.float32), "b"),
         numpy_helper.from_array(np.array([-1], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return file_sha256(path)


def write_patient_model(path: Path, coefficients: list[float], intercept: float) -> str:
    """A logistic regression as skl2onnx exports it with zipmap off: features -> label, probabilities."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = len(coefficients)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "coef"], ["z"]),
         helper.make_node("Add", ["z", "intercept"], ["zb"]),
         helper.make_node("Sigmoid", ["zb"], ["p1"]),
         helper.make_node("Sub", ["one", "p1"], ["p0"]),
         helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1),
         helper.make_node("ArgMax", ["probabilities"], ["label2"], axis=1, keepdims=0),
         helper.make_node("Identity", ["label2"], ["label"])],
        "apl_patient",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.asarray(coefficients, np.float32).reshape(n, 1), "coef"),
         numpy_helper.from_array(np.array([intercept], np.float32), "intercept"),
         numpy_helper.from_array(np.array([1.0], np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return file_sha256(path)


def cell_model_dir_with_head(target: Path, seed: int = 0, **section_overrides) -> Path:
    """A copy of the committed cell model directory whose card has a (random, untrained) APL head."""
    shutil.copytree(CELL_MODEL_DIR, target, ignore=shutil.ignore_patterns("*.keras", "*.png", "*.md"))
    weights = np.random.default_rng(seed).normal(0, 0.05, 256)
    sha = write_cell_head(target / "apl_cell_head.onnx", weights, -0.5)
    card = json.loads((target / "model_card.json").read_text())
    card["apl_cell_head"] = {"name": "test-apl-cell-head", "version": "0.0.1", "file": "apl_cell_head.onnx",
                             "sha256": sha, "input": "embedding", "output": "apl_logit",
                             "cell_model_sha256": card["sha256"], "meaning": "random weights, for tests",
                             **section_overrides}
    (target / "model_card.json").write_text(json.dumps(card, indent=1))
    return target


def subtype_model_dir_with_apl(target: Path, cell_head_sha256: str, threshold: float = 0.5, min_cells: int = 20,
                               coefficients: tuple[float, ...] = (0.8, 0.7, 0.3, 0.2), intercept: float = 0.0,
                               features: list[str] = FEATURES) -> Path:
    """A copy of the committed subtype model directory with an APL model and card."""
    if not target.exists():
        shutil.copytree(SUBTYPE_MODEL_DIR, target)
    sha = write_patient_model(target / "apl_patient.onnx", list(coefficients), intercept)
    card = {"name": "test-apl-alert", "version": "0.0.1", "file": "apl_patient.onnx", "sha256": sha,
            "features": list(features), "pooling": {"top_fraction": 0.25}, "threshold": threshold,
            "cell_head_sha256": cell_head_sha256, "min_cells": min_cells, "cv": {}}
    (target / "apl_card.json").write_text(json.dumps(card, indent=1))
    return target


def committed_apl_artifacts() -> bool:
    """True when the committed cell card has an APL head and the subtype model directory an APL card for it."""
    cell = json.loads((CELL_MODEL_DIR / "model_card.json").read_text()).get("apl_cell_head")
    card = SUBTYPE_MODEL_DIR / "apl_card.json"
    return bool(cell) and card.exists() and json.loads(card.read_text()).get("cell_head_sha256") == cell["sha256"]


def copy_apl_head(card: dict, target: Path) -> None:
    """Copy the APL head file a cell card names (if any) beside a copied card, so the copy loads."""
    head = card.get("apl_cell_head")
    if head:
        shutil.copyfile(CELL_MODEL_DIR / head["file"], target / head["file"])
