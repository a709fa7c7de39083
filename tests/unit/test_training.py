"""The training path: Keras and ONNX agree, and a short training run still trains and exports."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from services.cell_classifier.inference import CellModel
from services.cell_classifier.settings import DEFAULT_MODEL_DIR
from shared.preprocessing import preprocess
from tests.conftest import require_training_stack
from tests.helpers.images import fullsize_images
from tests.helpers.processes import REPO_ROOT

pytestmark = pytest.mark.train


def _originals() -> np.ndarray:
    arrays = []
    for _, path in fullsize_images():
        with Image.open(path) as image:
            arrays.append(preprocess(image))
    return np.stack(arrays)


def test_committed_onnx_matches_keras_on_real_images():
    require_training_stack()
    import keras

    from training.cnn import build_serving_model

    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    network = keras.models.load_model(DEFAULT_MODEL_DIR / "cell_cnn.keras")
    serving = build_serving_model(network, card["unclassified_rule"]["temperature"])
    images = _originals()
    keras_probabilities = serving.predict(images, verbose=0)
    onnx_probabilities = CellModel(DEFAULT_MODEL_DIR, "cpu").predict(images)
    assert np.abs(keras_probabilities - onnx_probabilities).max() < 1e-4


def test_smoke_training_run_exports_a_servable_model(tmp_path):
    require_training_stack()
    out = tmp_path / "model"
    command = [sys.executable, "-m", "training.train_cells", "--epochs", "1", "--per-class-limit", "40",
               "--cache-dir", "", "--out", str(out), "--verbose", "2", "--version", "smoke"]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    assert card["version"] == "smoke"
    assert card["training"]["onnx_keras_max_abs_difference"] < 1e-4
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    model = CellModel(out, "cpu")
    probabilities = model.predict(_originals()[:4])
    assert probabilities.shape == (4, 8)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    # the path that finished the committed model: an already fitted network, no second fit
    finished = tmp_path / "finished"
    command = [sys.executable, "-m", "training.train_cells", "--per-class-limit", "40", "--cache-dir", "",
               "--from-network", str(out / "cell_cnn.keras"), "--out", str(finished), "--version", "smoke-2"]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "fit skipped" in completed.stdout
    second = json.loads((finished / "model_card.json").read_text())["training"]
    assert second["fitted_in_earlier_run"]["total_seconds"] == card["training"]["total_seconds"]
    assert second["total_seconds"] > card["training"]["total_seconds"]
    assert second["history"] == card["training"]["history"] and second["batch_norm_recalibration_images"] > 0
    assert CellModel(finished, "cpu").predict(_originals()[:2]).shape == (2, 8)
