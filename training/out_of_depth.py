"""Does ``unclassified`` catch what the model cannot place? Checked on cells it never saw in training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from shared.preprocessing import preprocess_file
from shared.vocabulary import CELL_TYPES, UNCLASSIFIED


def labels_of(onnx_path: Path, images: np.ndarray, threshold: float, class_minimum: dict[int, float]) -> list[str]:
    import onnxruntime as ort

    from training.metrics import apply_unclassified_rule

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    probabilities = np.concatenate([session.run(None, {name: images[i: i + 256]})[0]
                                    for i in range(0, len(images), 256)])
    labels = list(CELL_TYPES) + [UNCLASSIFIED]
    return [labels[i] for i in apply_unclassified_rule(probabilities, threshold, len(CELL_TYPES), class_minimum)]


def held_out_class_report(onnx_path: Path, cells, threshold: float, class_minimum: dict[int, float]) -> dict:
    """Per expert class outside the vocabulary: how many cells, and what the model called them."""
    report = {}
    for expert_class in sorted({c.expert_class for c in cells}):
        paths = [c.path for c in cells if c.expert_class == expert_class]
        images = [preprocess_file(path) for path in paths]  # the service's own path from file to input
        labels = Counter(labels_of(onnx_path, np.stack(images), threshold, class_minimum))
        report[expert_class] = {"n": len(paths), "unclassified_fraction": labels[UNCLASSIFIED] / len(paths),
                                "labels": dict(labels.most_common())}
    return report
