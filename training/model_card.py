"""Write the cell model's card: JSON for machines, Markdown for people, confusion matrix PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shared.preprocessing import IMAGE_SIZE
from shared.vocabulary import CELL_TYPES, UNCLASSIFIED
from shared.hashing import file_sha256
from training.export_onnx import ONNX_INPUT_NAME, ONNX_OPSET

MODEL_NAME = "aml-cell-resnet"
ONNX_FILE = "cell_cnn.onnx"
KERAS_FILE = "cell_cnn.keras"
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
CONFUSION_PNG = "confusion_matrix.png"

DATA_ATTRIBUTION = (
    "Acevedo A, Merino A, Alférez S, Molina Á, Boldú L, Rodellar J. A dataset of microscopic peripheral "
    "blood cell images for development of automatic recognition systems. Data in Brief 30 (2020) 105474. "
    "Mendeley Data, doi:10.17632/snkd93bnjr.1. Licence CC BY 4.0. Hospital Clinic of Barcelona, "
    "CellaVision DM96, May Grünwald-Giemsa stain."
)


LIMITATIONS = (
    "Trained on one hospital's scanner (CellaVision DM96) and stain; other scanners are handled by "
    "augmentation only and were not measured here. Simulated magnification, blur and compression on the "
    "test split: docs/cell_robustness.md (`python -m training.robustness`); cells shown larger than the "
    "training scale jitter allows are the weakest case.",
    "Blasts and other abnormal cells are not among the 8 classes; the unclassified rule catches only "
    "part of them, the rest receive the nearest normal type.",
)


def build_card(*, version, onnx_path: Path, output_name, temperature, threshold, max_unclassified_fraction,
               test_time_views: list[str], metrics, training) -> dict:
    return {
        "name": MODEL_NAME,
        "version": version,
        "file": onnx_path.name,
        "sha256": file_sha256(onnx_path),
        "format": f"ONNX opset {ONNX_OPSET} (tf2onnx from Keras)",
        "input": {
            "name": ONNX_INPUT_NAME,
            "shape": ["batch", IMAGE_SIZE, IMAGE_SIZE, 3],
            "dtype": "uint8",
            "layout": "NHWC, RGB",
            "preprocessing": "shared.preprocessing.preprocess: convert to 8-bit RGB (alpha on white, 16-bit "
                             f"scaled), resize the whole image to {IMAGE_SIZE}x{IMAGE_SIZE} with PIL's "
                             "antialiased bilinear filter; no crop",
            "normalisation": "inside the network: x / 127.5 - 1",
        },
        "output": {"name": output_name, "meaning": "calibrated probabilities softmax(logits / temperature)"
                   + (f", logits averaged over {len(test_time_views)} views of each image" if len(test_time_views) > 1
                      else "")},
        "test_time_views": test_time_views,
        "class_order": list(CELL_TYPES),
        "unclassified_rule": {
            "label": UNCLASSIFIED,
            "score": "maximum softmax probability after temperature scaling",
            "temperature": temperature,
            "threshold": threshold,
            "rule": f"label = '{UNCLASSIFIED}' when max probability < threshold",
            "chosen_so_that": f"at most {max_unclassified_fraction:.1%} of validation cells are unclassified",
        },
        "data": {"training": "PBC (../shared/data/pbc, 14,528 images resized to 224x224)",
                 "attribution": DATA_ATTRIBUTION, "licence": "CC BY 4.0"},
        "training": training,
        "metrics": metrics,
        "intended_use": "Research decision support: counts of peripheral-blood cell types per patient. "
                        "Not a diagnostic device; a haematologist reviews every result.",
        "limitations": list(LIMITATIONS),
    }


def _plot_confusion(card: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(card["metrics"]["test"]["confusion_matrix"])[: len(CELL_TYPES)]
    labels = list(CELL_TYPES) + [UNCLASSIFIED]
    fig, ax = plt.subplots(figsize=(8, 6.5))
    ax.imshow(matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > matrix[i].sum() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(CELL_TYPES)), CELL_TYPES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    test = card["metrics"]["test"]
    ax.set_title(f"{card['name']} {card['version']}: held-out test split (n={test['n']}), "
                 f"accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(card: dict) -> str:
    t, rule = card["training"], card["unclassified_rule"]
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        "Generated by `make train-cells` (`training/train_cells.py`); do not edit by hand.",
        "",
        f"- File: `{card['file']}`, sha256 `{card['sha256']}`, {card['format']}",
        f"- Input `{card['input']['name']}`: {card['input']['shape']} {card['input']['dtype']} "
        f"{card['input']['layout']}; {card['input']['preprocessing']}; normalisation {card['input']['normalisation']}",
        f"- Output: {card['output']['meaning']}, in class order {', '.join(card['class_order'])}",
        f"- Network: ResNet-style CNN, {t['parameters']:,} parameters, trained from scratch",
        "",
        "## Unclassified rule",
        f"A cell is labelled `{rule['label']}` when its {rule['score']} is below {rule['threshold']:.4f} "
        f"(temperature {rule['temperature']:.3f}, fitted on the validation split by negative log-likelihood). "
        f"The threshold was chosen so that {rule['chosen_so_that']}.",
        "",
        "## Test-time views",
        (f"The exported model runs each image as {len(card['test_time_views'])} views "
         f"({', '.join(card['test_time_views'])}) in one batch and averages their logits; the metrics below "
         "are for that model. It costs that many times the compute of one view."
         if len(card["test_time_views"]) > 1 else "One view per image (no test-time augmentation)."),
        "",
        "## Training",
        f"- Data: {card['data']['training']}; stratified split with seed {t['split_seed']}: "
        f"{t['n_train']} train / {t['n_validation']} validation / {t['n_test']} test images"
        + (f" (smoke run, {t['per_class_limit']} per class)" if t["per_class_limit"] else ""),
        f"- {t.get('epochs_run', t['epochs'])} of {t['epochs']} planned epochs"
        + (" (stopped by the time budget)" if t.get("stopped_by_time_budget") else "")
        + f", batch {t['batch_size']}, AdamW (weight decay 0.05), cosine "
        f"schedule with warm-up to {t['peak_learning_rate']}, class weights {t['class_weight']}",
        _sizes_line(t["epoch_image_sizes"]),
        "- Augmentation: any rotation, flips, scale jitter {:g}-{:g}x, translation up to 6%, per-channel stain "
        "gain, brightness/contrast/saturation/hue jitter, random Gaussian blur, sensor noise".format(
            *t["zoom_range"]),
        f"- After the fit, the batch-norm statistics were re-estimated on "
        f"{t.get('batch_norm_recalibration_images', 0)} clean (un-augmented) training images",
        f"- Time: {t['total_seconds'] / 60:.1f} min in all ({t['fit_seconds'] / 60:.1f} min fitting) on {t['machine']}"
        + (f"; the fit ran first ({t['fitted_in_earlier_run']['total_seconds'] / 60:.1f} min with its own "
           "evaluation and export), the rest in a second run (`--from-network`); the total is the sum"
           if t.get("fitted_in_earlier_run") else ""),
        f"- ONNX vs Keras, max |difference| of probabilities on 256 validation images: "
        f"{t['onnx_keras_max_abs_difference']:.2e}",
        "",
        "## Metrics (unclassified counted as wrong)",
        "| split | n | accuracy | macro-F1 | unclassified |",
        "|---|---|---|---|---|",
    ]
    for split, m in card["metrics"].items():
        lines.append(f"| {split} | {m['n']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | "
                     f"{m['unclassified_fraction']:.2%} |")
    lines += ["", "Per class on the test split:", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, m in card["metrics"]["test"]["per_class"].items():
        lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += [
        "",
        f"![confusion matrix]({CONFUSION_PNG})",
        "",
        "The validation and test splits are 224x224 copies from the same hospital as training. The hidden "
        "evaluation (full-size originals, other hospitals, other magnifications) was not available here.",
        "",
        "## Intended use and limitations",
        card["intended_use"],
        "",
        *[f"- {item}" for item in card["limitations"]],
        "",
        "## Data and licence",
        card["data"]["attribution"],
        "",
    ]
    return "\n".join(lines)


def write(card: dict, out: Path) -> None:
    (out / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    (out / CARD_MD).write_text(_markdown(card))
    _plot_confusion(card, out / CONFUSION_PNG)


def _sizes_line(sizes: list[int]) -> str:
    """'... epochs 1-18 at 96 px, epochs 19-30 at 112 px'."""
    runs: list[tuple[int, int, int]] = []  # (first epoch, last epoch, size), 1-based
    for epoch, size in enumerate(sizes, start=1):
        if runs and runs[-1][2] == size:
            runs[-1] = (runs[-1][0], epoch, size)
        else:
            runs.append((epoch, epoch, size))
    parts = [f"epoch{'s' if a != b else ''} {a}{'-' + str(b) if a != b else ''} at {size} px" for a, b, size in runs]
    return "- Image size per epoch (progressive resizing; scaled inside the augmentation): " + ", ".join(parts)
