"""Give a trained cell model's ONNX files (float and its serving variants) the ``embedding`` output
the per-cell APL head reads, and update the card's hashes.

New exports have it already (``export_onnx.export``); this brings an older model directory up to
date without retraining: ``python -m training.embedding_outputs [MODEL_DIR]``. Only graph outputs
are added, so the probabilities are bit-identical (checked here on random images)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from shared.hashing import file_sha256
from shared.preprocessing import IMAGE_SIZE
from training.export_onnx import EMBEDDING_OUTPUT, add_embedding_output

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "services" / "cell_classifier" / "model"


def _probabilities(path_or_bytes, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {session.get_inputs()[0].name: images})[0]


def _with_embedding(path: Path, images: np.ndarray) -> bool:
    """Rewrite ``path`` with the extra output; False when it had it already."""
    import onnx

    model = onnx.load(str(path))
    if any(output.name == EMBEDDING_OUTPUT for output in model.graph.output):
        return False
    before = _probabilities(path, images)
    data = add_embedding_output(model).SerializeToString()
    if not np.array_equal(before, _probabilities(data, images)):
        raise RuntimeError(f"{path}: adding an output changed the probabilities")
    path.write_bytes(data)
    return True


def update(model_dir: Path) -> dict:
    card_path = model_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    images = np.random.default_rng(0).integers(0, 256, (4, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    changed = {}
    float_path = model_dir / card["file"]
    if file_sha256(float_path) != card["sha256"]:
        raise SystemExit(f"{float_path} does not match its card")
    changed["float"] = _with_embedding(float_path, images)
    old_float_sha, card["sha256"] = card["sha256"], file_sha256(float_path)
    for name, entry in (card.get("serving_variants") or {}).get("files", {}).items():
        path = model_dir / entry["file"]
        if file_sha256(path) != entry["sha256"]:
            raise SystemExit(f"{path} does not match its card")
        changed[name] = _with_embedding(path, images)
        entry["sha256"] = file_sha256(path)
        if entry.get("float_sha256") == old_float_sha:
            entry["float_sha256"] = card["sha256"]
    card["embedding_output"] = {
        "name": EMBEDDING_OUTPUT, "shape": ["batch", 256], "dtype": "float32",
        "meaning": "the global-average-pooled features that enter the logits layer (the input of the per-cell "
                   "APL head, apl_cell_head); added as a second graph output, probabilities unchanged"}
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, nargs="?", default=DEFAULT_MODEL_DIR)
    args = parser.parse_args(argv)
    print(update(args.model_dir))


if __name__ == "__main__":
    main()
