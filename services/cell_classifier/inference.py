"""The ONNX cell model: checked against its card, run with the best available provider."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.cell_classifier.apl_head import CARD_SECTION as APL_HEAD_SECTION
from services.cell_classifier.apl_head import AplCellHead
from services.cell_classifier.errors import ModelIntegrityError
from shared.appearance import FEATURE_NAMES as APPEARANCE_FEATURES
from shared.appearance import AppearanceReference, appearance_features
from shared.preprocessing import PREPROCESSING_VERSION
from shared.vocabulary import CELL_TYPES, UNCLASSIFIED

log = logging.getLogger(__name__)
CARD_FILE = "model_card.json"
VARIANTS = ("float", "int8")
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 512

__all__ = ["CellModel", "CheckedModel", "ModelIntegrityError", "check_model", "check_servable", "choose_providers",
           "choose_variant", "model_variants", "rules_sha256"]


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


def model_variants(card: dict) -> dict[str, dict]:
    """The files a card offers: ``float`` (the card's own ``file``/``sha256``) and those listed in its
    ``serving_variants`` (``int8``: written by ``python -m training.quantize_cells``)."""
    variants = {"float": {"file": card["file"], "sha256": card["sha256"]}}
    for name, entry in (card.get("serving_variants") or {}).get("files", {}).items():
        if name != "float":
            variants[name] = entry
    return variants


def rules_sha256(card: dict) -> str:
    """The sha256 of what decides a cell's answer besides the network file: the preprocessing's version,
    the input size, the ``unclassified`` rule (threshold, per-class minimum) and the appearance reference.
    A cache keyed by the file's hash alone would keep serving old labels after a change to one of these."""
    rule = card["unclassified_rule"]
    decides = {"preprocessing_version": PREPROCESSING_VERSION, "input_shape": card["input"]["shape"],
               "threshold": float(rule["threshold"]), "class_minimum": rule.get("class_minimum") or {},
               "appearance_reference": (card.get("appearance") or {}).get("reference")}
    return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()


def choose_variant(card: dict, preference: str, providers: list[str]) -> str:
    """``float``/``int8`` as asked; ``auto``: float on CUDA (int8 QDQ is a CPU speed-up), else the
    card's default (int8 only where its accuracy criterion held when it was quantized)."""
    variants = model_variants(card)
    preference = preference.lower()
    if preference not in ("auto", *VARIANTS):
        raise ValueError(f"CELL_MODEL_VARIANT must be auto, {' or '.join(VARIANTS)}, not {preference!r}")
    if preference == "auto":
        if providers[0] != "CPUExecutionProvider":
            return "float"
        chosen = (card.get("serving_variants") or {}).get("default", "float")
        return chosen if chosen in variants else "float"
    if preference not in variants:
        raise ModelIntegrityError(f"CELL_MODEL_VARIANT={preference} but the model card offers only "
                                  f"{sorted(variants)} (run python -m training.quantize_cells)")
    return preference


@dataclass(frozen=True)
class CheckedModel:
    """A model directory whose card and chosen file passed every check (``check_model``)."""
    card: dict
    providers: list[str]
    variant: str
    entry: dict  # the chosen variant's file and sha256
    path: Path
    input_size: int
    # the chosen file's bytes, read once: the ones whose sha256 was checked are the ones the session loads
    data: bytes = field(repr=False, compare=False)


def check_model(model_dir: Path, provider: str = "auto", variant: str = "auto") -> CheckedModel:
    """Read the card, check it against the vocabulary, choose providers and variant, and check the chosen
    file's sha256, without loading the network: ``ModelIntegrityError`` (or the provider/variant
    ``ValueError``/``RuntimeError``) for anything that would stop the service from serving it."""
    card: dict = json.loads((model_dir / CARD_FILE).read_text())
    if card["class_order"] != list(CELL_TYPES):
        raise ModelIntegrityError(f"class order {card['class_order']} is not {list(CELL_TYPES)}")
    shape = card["input"]["shape"]
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or not MIN_INPUT_SIZE <= shape[1] <= MAX_INPUT_SIZE:
        raise ModelIntegrityError(f"model input {shape}: expected [batch, N, N, 3] with {MIN_INPUT_SIZE} <= N <= "
                                  f"{MAX_INPUT_SIZE}")
    providers = choose_providers(provider)
    chosen = choose_variant(card, variant, providers)
    entry = model_variants(card)[chosen]
    if chosen != "float" and entry.get("float_sha256") != card["sha256"]:
        raise ModelIntegrityError(f"the {chosen} model was made from the float model with sha256 "
                                  f"{entry.get('float_sha256')}, the card's is {card['sha256']}: "
                                  "run python -m training.quantize_cells again")
    appearance = card.get("appearance") or {}
    if appearance.get("reference") and appearance.get("feature_names") != list(APPEARANCE_FEATURES):
        raise ModelIntegrityError(f"the card's appearance reference was fitted on features "
                                  f"{appearance.get('feature_names') or 'of an earlier version'}, not "
                                  f"{list(APPEARANCE_FEATURES)}: run python -m training.appearance_reference")
    path = model_dir / entry["file"]
    data = path.read_bytes()  # a few MB; hashed and then loaded from memory, so no other bytes can slip in
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry["sha256"]:
        raise ModelIntegrityError(f"{path} has sha256 {actual}, its card says {entry['sha256']}")
    # the side the shared preprocessing resizes every image to for this model (its card says it)
    return CheckedModel(card, providers, chosen, entry, path, int(shape[1]), data)


class CellModel:
    def __init__(self, model_dir: Path, provider: str = "auto", threads: int = 0, variant: str = "auto"):
        checked = check_model(model_dir, provider, variant)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Decoding threads share the cores with inference: idle ORT threads must sleep, not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # the bytes check_model hashed, not the path: a file replaced between the check and the load would
        # otherwise run unchecked (the session keeps its copy of the bytes: a few MB)
        self.session = ort.InferenceSession(checked.data, options, providers=checked.providers)
        self.provider: str = self.session.get_providers()[0]
        # onnxruntime falls back to the CPU, with a warning only, when the CUDA provider it lists cannot start
        # (no driver, another CUDA or cuDNN): asked for explicitly, CUDA must be what runs (auto reports either)
        if provider.lower() == "cuda" and self.provider != "CUDAExecutionProvider":
            raise RuntimeError(f"CELL_PROVIDER=cuda but onnxruntime runs the model on {self.session.get_providers()}: "
                               "the CUDA provider failed to start (see onnxruntime's warnings above)")
        if variant.lower() == "auto" and self.provider == "CPUExecutionProvider" \
                and checked.providers[0] != "CPUExecutionProvider":
            # the variant was chosen for CUDA, which did not start: the CPU's own choice (int8 where the card
            # says so) runs instead, as on a machine without a GPU
            on_cpu = check_model(model_dir, "cpu", "auto")
            if on_cpu.variant != checked.variant:
                log.warning("the CUDA provider did not start: the cell model runs on the CPU as %s, not %s",
                            on_cpu.variant, checked.variant)
                checked = on_cpu
                self.session = ort.InferenceSession(checked.data, options, providers=checked.providers)
                self.provider = self.session.get_providers()[0]
        self.card: dict = checked.card
        self.input_size: int = checked.input_size
        self.variant: str = checked.variant
        entry, model_path = checked.entry, checked.path
        shape = checked.card["input"]["shape"]
        self.file: str = entry["file"]
        self.sha256: str = entry["sha256"]
        self.rules_sha256: str = rules_sha256(checked.card)
        self.input_name: str = self.session.get_inputs()[0].name
        if list(self.session.get_inputs()[0].shape[1:]) != [self.input_size, self.input_size, 3]:
            raise ModelIntegrityError(f"{model_path.name} takes {self.session.get_inputs()[0].shape}, its card says "
                                      f"{shape}")
        outputs = [o.name for o in self.session.get_outputs()]
        self.probabilities_output: str = "probabilities" if "probabilities" in outputs else outputs[0]
        # the per-cell APL head (issue 10), when the card has one: it runs on the CNN's embedding output
        self.apl_head: AplCellHead | None = None
        if self.card.get(APL_HEAD_SECTION):
            self.embedding_output: str = (self.card.get("embedding_output") or {}).get("name", "embedding")
            if self.embedding_output not in outputs:
                raise ModelIntegrityError(f"{model_path.name} has no {self.embedding_output!r} output (outputs "
                                          f"{outputs}), which the APL cell head needs")
            self.apl_head = AplCellHead(model_dir, self.card[APL_HEAD_SECTION], self.card["sha256"])
        self.threshold: float = float(self.card["unclassified_rule"]["threshold"])
        # a class may demand more confidence than the others (blasts: so that normal cells are rarely called blast)
        self.class_minimum: dict[int, float] = {
            CELL_TYPES.index(name): float(value)
            for name, value in self.card["unclassified_rule"].get("class_minimum", {}).items()}
        appearance = self.card.get("appearance") or {}
        self.appearance: AppearanceReference | None = (
            AppearanceReference(appearance["reference"]) if appearance.get("reference") else None)
        log.info("loaded %s %s (%s, %s) on %s", self.card["name"], self.card["version"], self.variant, self.file,
                 self.provider)

    @property
    def info(self) -> dict:
        """What runs: ``sha256`` is the running file's (float and int8 answer slightly differently, so
        a cache keyed by it never mixes them) and ``rules_sha256`` that of the card's rules that turn its
        output into labels (a threshold changed without a new file changes it)."""
        return {"name": self.card["name"], "version": self.card["version"], "sha256": self.sha256,
                "rules_sha256": self.rules_sha256,
                "provider": self.provider, "variant": self.variant,
                "apl_head": self.apl_head.info if self.apl_head is not None else None}

    def appearance_distance(self, image: np.ndarray) -> float | None:
        """How far one preprocessed image looks from the training data (``shared.appearance``); None
        for a model whose card has no appearance reference. Thread-safe: runs in the decode workers."""
        if self.appearance is None:
            return None
        return round(float(self.appearance.distances(appearance_features(image))[0]), 3)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 -> (n, len(CELL_TYPES)) calibrated probabilities."""
        return self.session.run([self.probabilities_output],
                                {self.input_name: np.ascontiguousarray(images, dtype=np.uint8)})[0]

    def infer(self, images: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 -> (n, len(CELL_TYPES) + 1): the calibrated probabilities and, in the last
        column, the APL head's logit (NaN without a head). One CNN run gives the probabilities and the
        embeddings the head reads; the batcher's handler (one array per item)."""
        feed = {self.input_name: np.ascontiguousarray(images, dtype=np.uint8)}
        if self.apl_head is None:
            probabilities = self.session.run([self.probabilities_output], feed)[0]
            logits = np.full(len(probabilities), np.nan, dtype=np.float32)
        else:
            probabilities, embeddings = self.session.run([self.probabilities_output, self.embedding_output], feed)
            logits = self.apl_head.logits(embeddings)
        return np.column_stack([probabilities.astype(np.float32), logits])

    @staticmethod
    def split(row: np.ndarray) -> tuple[np.ndarray, float | None]:
        """One row of ``infer`` -> (probabilities, APL logit or None)."""
        logit = float(row[-1])
        return row[:-1], (None if np.isnan(logit) else logit)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8, 64)) -> None:
        for size in batch_sizes:
            self.infer(np.full((size, self.input_size, self.input_size, 3), 200, dtype=np.uint8))

    def label(self, probabilities: np.ndarray) -> Labelled:
        """Apply the card's unclassified rule to one probability vector."""
        best = int(np.argmax(probabilities))
        confidence = float(probabilities[best])
        needed = max(self.threshold, self.class_minimum.get(best, 0.0))
        label = CELL_TYPES[best] if confidence >= needed else UNCLASSIFIED
        return Labelled(label, confidence, dict(zip(CELL_TYPES, probabilities.tolist())))


def check_servable(model_dir: Path, provider: str = "auto", variant: str = "auto") -> None:
    """Everything a worker process checks when it loads the model (``CellModel``: the card, the chosen file's
    and the APL head's sha256 and the CNN the head was trained on, the sessions' inputs and outputs, the
    provider that runs) and one inference; raises what the worker would. The sessions are dropped after."""
    CellModel(model_dir, provider, threads=1, variant=variant).warm_up((1,))
