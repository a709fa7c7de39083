"""The ONNX cell model: checked against its card, run with the best available provider."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shared.appearance import AppearanceReference, appearance_features
from shared.hashing import file_sha256
from shared.preprocessing import IMAGE_SIZE
from shared.vocabulary import CELL_TYPES, UNCLASSIFIED

log = logging.getLogger(__name__)
CARD_FILE = "model_card.json"


class ModelIntegrityError(RuntimeError):
    """The model file does not match its card."""


def choose_providers(preference: str) -> list[str]:
    """CUDA first when available (and not refused), CPU always as the fallback."""
    available = ort.get_available_providers()
    preference = preference.lower()
    if preference not in ("auto", "cuda", "cpu"):
        raise ValueError(f"CELL_PROVIDER must be auto, cuda or cpu, not {preference!r}")
    if preference == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"CELL_PROVIDER=cuda but onnxruntime offers only {available}")
    if preference != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass(frozen=True)
class Labelled:
    label: str
    confidence: float
    probabilities: dict[str, float]


class CellModel:
    def __init__(self, model_dir: Path, provider: str = "auto", threads: int = 0):
        card_path = model_dir / CARD_FILE
        self.card: dict = json.loads(card_path.read_text())
        if self.card["class_order"] != list(CELL_TYPES):
            raise ModelIntegrityError(f"class order {self.card['class_order']} is not {list(CELL_TYPES)}")
        if self.card["input"]["shape"][1:] != [IMAGE_SIZE, IMAGE_SIZE, 3]:
            raise ModelIntegrityError(f"model input {self.card['input']['shape']} does not match preprocessing")
        model_path = model_dir / self.card["file"]
        actual = file_sha256(model_path)
        if actual != self.card["sha256"]:
            raise ModelIntegrityError(f"{model_path} has sha256 {actual}, its card says {self.card['sha256']}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Decoding threads share the cores with inference: idle ORT threads must sleep, not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path), options, providers=choose_providers(provider))
        self.provider: str = self.session.get_providers()[0]
        self.input_name: str = self.session.get_inputs()[0].name
        self.threshold: float = float(self.card["unclassified_rule"]["threshold"])
        # a class may demand more confidence than the others (blasts: so that normal cells are rarely called blast)
        self.class_minimum: dict[int, float] = {
            CELL_TYPES.index(name): float(value)
            for name, value in self.card["unclassified_rule"].get("class_minimum", {}).items()}
        appearance = self.card.get("appearance") or {}
        self.appearance: AppearanceReference | None = (
            AppearanceReference(appearance["reference"]) if appearance.get("reference") else None)
        log.info("loaded %s %s on %s", self.card["name"], self.card["version"], self.provider)

    @property
    def info(self) -> dict:
        return {"name": self.card["name"], "version": self.card["version"], "sha256": self.card["sha256"],
                "provider": self.provider}

    def appearance_distance(self, image: np.ndarray) -> float | None:
        """How far one preprocessed image looks from the training data (``shared.appearance``); None
        for a model whose card has no appearance reference. Thread-safe: runs in the decode workers."""
        if self.appearance is None:
            return None
        return round(float(self.appearance.distances(appearance_features(image))[0]), 3)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 -> (n, len(CELL_TYPES)) calibrated probabilities."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.uint8)})[0]

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8, 64)) -> None:
        for size in batch_sizes:
            self.predict(np.full((size, IMAGE_SIZE, IMAGE_SIZE, 3), 200, dtype=np.uint8))

    def label(self, probabilities: np.ndarray) -> Labelled:
        """Apply the card's unclassified rule to one probability vector."""
        best = int(np.argmax(probabilities))
        confidence = float(probabilities[best])
        needed = max(self.threshold, self.class_minimum.get(best, 0.0))
        label = CELL_TYPES[best] if confidence >= needed else UNCLASSIFIED
        return Labelled(label, confidence, {name: float(p) for name, p in zip(CELL_TYPES, probabilities)})
