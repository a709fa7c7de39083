"""Soft training targets from an earlier network (self-distillation, ``train_cells --distil-from``).

Each training image's target becomes ``(1 - weight) x its label + weight x the teacher's calibrated
probabilities`` on the clean image (mean logits over the first ``views`` flips, divided by the temperature
of the teacher's card, as the service computes them). Where the expert label and a confident teacher agree,
nothing changes; where the teacher spreads its belief over lymphocyte, monocyte and blast, the student is
not pushed to certainty on a label that two technologists might give differently. It costs nothing at
inference: the student has the teacher's shape.
"""

from __future__ import annotations

import numpy as np


def teacher_probabilities(network, temperature: float, images: np.ndarray, views: int) -> np.ndarray:
    """The teacher's calibrated probabilities on ``images`` (uint8, N x H x W x 3), averaged over flips."""
    from training import cnn
    from training.metrics import softmax

    return softmax(cnn.view_averaged_logits(network, images, views), temperature).astype(np.float32)


def distilled_targets(labels: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """Rows that sum to 1: ``(1 - weight)`` on each image's label plus ``weight`` times the teacher's row."""
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"the teacher's weight must be in (0, 1], got {weight}")
    if teacher.shape != (len(labels), teacher.shape[1]):
        raise ValueError(f"one teacher row per label: {teacher.shape} for {len(labels)} labels")
    one_hot = np.eye(teacher.shape[1], dtype=np.float32)[labels]
    return (1.0 - weight) * one_hot + weight * teacher


def agreement(labels: np.ndarray, teacher: np.ndarray) -> dict:
    """How the teacher sees the training labels: its top class equals the label, and its mean weight on it."""
    return {"top_class_is_label": round(float((teacher.argmax(axis=1) == labels).mean()), 4),
            "mean_probability_of_label": round(float(teacher[np.arange(len(labels)), labels].mean()), 4)}
