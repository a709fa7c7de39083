"""The subtype training path still cross-validates, fits, exports and serves (short run)."""

import json
import subprocess
import sys

import pytest

from services.subtype.ensemble import SubtypeEnsemble
from services.subtype.predictor import SubtypePredictor
from tests.conftest import require_training_stack
from tests.helpers.processes import REPO_ROOT

pytestmark = pytest.mark.train


def test_short_subtype_training_run(tmp_path):
    require_training_stack()
    out, docs = tmp_path / "model", tmp_path / "docs"
    command = [sys.executable, "-m", "training.train_subtype", "--repeats", "1", "--copies", "1",
               "--out", str(out), "--docs", str(docs), "--version", "smoke"]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    assert card["version"] == "smoke"
    assert card["training"]["onnx_vs_native_max_abs_difference"] < 1e-3
    cv = card["cross_validation"]["expert_counts"]
    assert set(cv) == {"xgboost", "catboost", "random_forest", "neural_net", "logistic_regression",
                       "ensemble_equal_weights", "ensemble"}
    assert (docs / "subtype_model.md").is_file() and (docs / "subtype_confusion_matrix.png").is_file()
    answer = SubtypePredictor(SubtypeEnsemble(out)).predict_many([{"neutrophil": 50, "unclassified": 50}])[0]
    assert sum(answer.probabilities.values()) == pytest.approx(1.0)
