"""The robustness report's image variants and its table, on real cells through the served model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.cell_classifier.inference import CellModel
from services.cell_classifier.settings import DEFAULT_MODEL_DIR
from shared.vocabulary import CELL_TYPES
from tests.conftest import require_training_stack
from tests.helpers.images import fullsize_images

pytestmark = pytest.mark.train  # the report lives in training/ and needs scikit-learn


def test_variants_change_the_field_of_view_as_named():
    require_training_stack()
    from training import robustness

    image = Image.new("RGB", (200, 220), (200, 150, 180))
    assert robustness.centre_crop(0.8)(image).size == (160, 176)
    assert robustness.pad_with_border(0.8)(image).size == (250, 276)  # 25 and 28 (27.5 rounded) pixels each side
    assert robustness.resized(144)(image).size == (144, 144)
    assert robustness.jpeg(40)(image).size == (200, 220)
    assert robustness.enlarged_from_input_size(0.5)(image).size == (56, 56)  # half of the 112 px input


def test_report_scores_every_variant_on_real_cells():
    require_training_stack()
    from training import robustness

    cells = fullsize_images()[::4]  # 2 per class
    paths = [str(path) for _, path in cells]
    labels = np.array([CELL_TYPES.index(label) for label, _ in cells])
    model = CellModel(DEFAULT_MODEL_DIR, "cpu")
    results = robustness.evaluate(model, paths, labels)
    assert list(results) == list(robustness.VARIANTS)
    assert all(0.0 <= report["accuracy"] <= 1.0 and report["n"] == 16 for report in results.values())
    assert results["as given"]["accuracy"] >= 0.75  # clear originals of the training hospital
    assert results["as given"]["appearance"]["warns"] is False
    assert results["grayscale"]["appearance"]["warns"] is True
    table = robustness.markdown(model.card, "test", {"PBC": (16, results)})
    assert table.count("\n| ") == len(robustness.VARIANTS) + 1  # header + one row per variant
    assert "the cell service's choice on CPU" in table
    pinned = robustness.markdown(model.card, "validation", {"PBC": (16, results)}, "float", pinned=True)
    assert "(float model, pinned with --variant) on our validation splits" in pinned

    # a source with blasts: the text says how many of them blur turns into lymphocytes
    import copy

    blast, lymphocyte = CELL_TYPES.index("blast"), CELL_TYPES.index("lymphocyte")
    with_blasts = copy.deepcopy(results)
    for name, report in with_blasts.items():
        report["leukaemia"]["n_blasts"] = 20
        row = [0] * (len(CELL_TYPES) + 1)
        row[lymphocyte] = 5 if name == "Gaussian blur, radius 0.8 px" else 1
        row[blast] = 20 - row[lymphocyte]
        report["confusion_matrix"][blast] = row
    assert robustness._share_called(with_blasts["as given"], "blast", "lymphocyte") == 0.05
    text = robustness.markdown(model.card, "test", {"PBC": (16, results), "DeepAPL": (16, with_blasts)})
    assert "In the DeepAPL table, blur costs mostly blasts" in text and "In the PBC table" not in text
    assert ("lymphocyte: 5% as given, 25% after a blur of radius 0.8 px, 5% after a blur of radius 1 px, "
            "5% after a blur of radius 1.5 px.") in text
