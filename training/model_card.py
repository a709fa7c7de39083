"""Write the cell model's card: JSON for machines, Markdown for people, confusion matrix PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gateway.quality import SMUDGE_WARNING, UNCLASSIFIED_WARNING
from shared.preprocessing import (DRAFT_MIN_FACTOR, IMAGE_SIZE, PREPROCESSING_VERSION, WHITE_GAIN_LIMITS,
                                  WHITE_REFERENCE, WHITE_TOP_FRACTION)
from shared.vocabulary import CELL_TYPES, UNCLASSIFIED, VOCABULARY_VERSION
from shared.hashing import file_sha256
from training.export_onnx import ONNX_INPUT_NAME, ONNX_OPSET
from training import second_reading

MODEL_NAME = "aml-cell-resnet"
ONNX_FILE = "cell_cnn.onnx"
KERAS_FILE = "cell_cnn.keras"
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
CONFUSION_PNG = "confusion_matrix.png"

DATA_ATTRIBUTION = {
    "pbc": "Acevedo A, Merino A, Alférez S, Molina Á, Boldú L, Rodellar J. A dataset of microscopic peripheral "
           "blood cell images for development of automatic recognition systems. Data in Brief 30 (2020) 105474. "
           "Mendeley Data, doi:10.17632/snkd93bnjr.1. Licence CC BY 4.0. Hospital Clinic of Barcelona, "
           "CellaVision DM96, May Grünwald-Giemsa stain.",
    "deepapl": "Sidhom J-W, et al. Deep learning for diagnosis of acute promyelocytic leukemia via recognition of "
               "genomically imprinted morphologic features. npj Precision Oncology 5:38 (2021); discovery cohort "
               "(82 AML/APL patients, Johns Hopkins Hospital, CellaVision) as published in the authors' code "
               "repository (sidhomj/DeepAPL). Copyright The Johns Hopkins University, no open licence: this "
               "model was trained on it for research use only.",
}
DATA_DESCRIPTION = {
    "pbc": "PBC (14,528 normal blood cells, 224x224 copies; stratified 80/10/10 split by folder)",
    "deepapl": "DeepAPL discovery cohort (the technologist-verified single-class cells of 82 AML/APL patients, "
               "144x144 copies; split by patient)",
}

LIMITATIONS = (
    "Trained on two hospitals' CellaVision images (Barcelona, Johns Hopkins); other scanners, stains and "
    "magnifications are handled by the white balance in the preprocessing, by stain and scale augmentation "
    "and by the appearance warning, and were not measured here. Simulated changes: docs/cell_robustness.md "
    "(`python -m training.robustness`).",
    "Blasts, smudge cells and promyelocytes were learned from one hospital's leukaemic blood (DeepAPL); "
    "abnormal promyelocytes of APL may be labelled blast (WHO counts them as blast equivalents).",
    "Cell types outside the vocabulary (plasma cells, prolymphocytes, hairy cells, ...) get the nearest "
    "label unless their confidence falls below the unclassified threshold; see the held-out check below.",
    "Research use only: the DeepAPL images carry no open licence.",
)


def build_card(*, version, onnx_path: Path, output_name, temperature, threshold, max_unclassified_fraction,
               test_time_views: list[str], metrics, training, appearance=None, sources=("pbc",),
               class_minimum=None, max_normal_called_blast=None, calibration_taken_from: str | None = None) -> dict:
    """``calibration_taken_from``: the temperature, threshold and class minimum were not fitted here but copied
    from that card (named in the rule's texts), e.g. when the validation patients were trained on."""
    taken = f" (taken from {calibration_taken_from}, fitted on its validation split)" if calibration_taken_from else ""
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
            "preprocessing": f"shared.preprocessing (version {PREPROCESSING_VERSION}): a JPEG is decoded at 1/2, "
                             "1/4 or 1/8 scale in the DCT domain where that leaves at least "
                             f"{DRAFT_MIN_FACTOR:g}x {IMAGE_SIZE} px on both sides; convert to 8-bit RGB (alpha on white, 16-bit "
                             f"scaled), resize the whole image to {IMAGE_SIZE}x{IMAGE_SIZE} with PIL's "
                             "antialiased bilinear filter; no crop; white balance: each channel scaled so that the "
                             f"value at its brightest {WHITE_TOP_FRACTION:.0%} of pixels (the background between the red "
                             f"cells) becomes {'/'.join(f'{v:g}' for v in WHITE_REFERENCE)} (the training images' "
                             f"median), gains within {WHITE_GAIN_LIMITS[0]:g}-{WHITE_GAIN_LIMITS[1]:g}",
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
            "chosen_so_that": f"at most {max_unclassified_fraction:.1%} of validation cells are unclassified{taken}",
            "class_minimum": class_minimum or {},
            "class_minimum_chosen_so_that": (
                f"at most {max_normal_called_blast:.1%} of the validation split's normal cells (the 8 PBC types) are "
                f"labelled blast{taken}" if class_minimum else None),
        },
        "data": {"training": [DATA_DESCRIPTION[s] for s in sources],
                 "attribution": [DATA_ATTRIBUTION[s] for s in sources],
                 "licence": "PBC: CC BY 4.0" + ("; DeepAPL: no open licence, research use" if "deepapl" in sources
                                                else "")},
        "appearance": appearance,
        "training": training,
        "metrics": metrics,
        "intended_use": "Research decision support: counts of peripheral-blood cell types per patient. "
                        "Not a diagnostic device; a haematologist reviews every result.",
        "limitations": list(LIMITATIONS),
    }


def _plot_confusion(card: dict, path: Path) -> None:
    """One confusion matrix per source's test split, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [k for k in card["metrics"] if k.startswith("test_") and not k.endswith("_rule")]
    labels = list(CELL_TYPES) + [UNCLASSIFIED]
    fig, axes = plt.subplots(1, len(splits), figsize=(8.5 * len(splits), 7.5), squeeze=False)
    for ax, split in zip(axes[0], splits):
        metrics = card["metrics"][split]
        matrix = np.asarray(metrics["confusion_matrix"])[: len(CELL_TYPES)]
        ax.imshow(matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > matrix[i].sum() / 2 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(CELL_TYPES)), CELL_TYPES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{card['name']} {card['version']}: {split} (n={metrics['n']}), "
                     f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _per_source(value) -> str:
    return ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)


def _markdown(card: dict) -> str:
    t, rule, appearance = card["training"], card["unclassified_rule"], card.get("appearance")
    augmentation = t.get("augmentation", {"zoom_range": t["zoom_range"]})
    init = t.get("initial_network")
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        "Generated by `make train-cells` (`training/train_cells.py`); do not edit by hand.",
        "",
        f"- File: `{card['file']}`, sha256 `{card['sha256']}`, {card['format']}",
        f"- Input `{card['input']['name']}`: {card['input']['shape']} {card['input']['dtype']} "
        f"{card['input']['layout']}; {card['input']['preprocessing']}; normalisation {card['input']['normalisation']}",
        f"- Output: {card['output']['meaning']}, in class order {', '.join(card['class_order'])} "
        f"(vocabulary {VOCABULARY_VERSION}, `shared/vocabulary.py`)",
        f"- Network: ResNet-style CNN, {t['parameters']:,} parameters"
        + (f", fine-tuned from `{init['file']}` ({init['name']} {init['version']}, classes "
           f"{', '.join(init['class_order'])}"
           + ("; new classes started from scratch)" if set(card["class_order"]) - set(init["class_order"]) else ")")
           if init else ", trained from scratch"),
        "",
        "## Unclassified rule (how `unclassified` is set)",
        f"A cell is labelled `{rule['label']}` when its {rule['score']} is below {rule['threshold']:.4f} "
        f"(temperature {rule['temperature']:.3f}, fitted on the validation split by negative log-likelihood). "
        f"The threshold was chosen so that {rule['chosen_so_that']}."
        + "".join(f" A cell whose most probable class is `{name}` needs a probability of at least {value:.4f}, or it "
                  f"is labelled `{rule['label']}` (chosen so that {rule['class_minimum_chosen_so_that']}): a doubtful "
                  "blast is shown for review, not counted as one."
                  for name, value in rule.get("class_minimum", {}).items() if value > rule["threshold"]),
    ]
    held_out = card["metrics"].get("held_out_classes")
    if held_out:
        lines += ["", "Checked on verified DeepAPL cells of classes the model never saw (not in the vocabulary):", "",
                  "| expert class | n | unclassified | labels given |", "|---|---|---|---|"]
        for name, m in held_out.items():
            lines.append(f"| {name} | {m['n']} | {m['unclassified_fraction']:.0%} | "
                         + ", ".join(f"{k} {v}" for k, v in m["labels"].items()) + " |")
    if appearance:
        lines += [
            "",
            "## Appearance check (is this image like the training data?)",
            "Each image's colour, density and focus statistics (`shared/appearance.py`: channel means, spreads, "
            "10th/90th percentiles, stained-area fraction and sharpness of the network input) are compared by "
            f"Mahalanobis distance with those of the training images of each source ({', '.join(appearance['reference'])}); an image's "
            "distance is to the nearest source. On the validation split the distances' median is "
            f"{appearance['validation_distance_quantiles']['0.5']:.2f}, 90th percentile "
            f"{appearance['validation_distance_quantiles']['0.9']:.2f}, 99th "
            f"{appearance['validation_distance_quantiles']['0.99']:.2f}."
            + (f" Reference and thresholds refitted by {appearance['refitted']}."
               if appearance.get("refitted") else ""),
            f"- An image is *out of domain* when its distance exceeds {appearance['image_threshold']:.2f} "
            "(validation 99th percentile).",
            f"- A patient's report warns that the images look unlike the training data when the median distance of "
            f"its cells exceeds {appearance['patient_threshold']:.2f} (validation 90th percentile of single cells: "
            "an in-domain patient's median sits near the 50th), and asks for every cell to be reviewed.",
            f"- The report (`gateway/quality.py`) also asks for every cell to be reviewed when "
            f"{UNCLASSIFIED_WARNING:.0%} or more of the cells are unclassified, and warns when {SMUDGE_WARNING:.0%} "
            "or more are smudge cells.",
        ]
    lines += [
        "",
        "## Test-time views",
        (f"The exported model runs each image as {len(card['test_time_views'])} views "
         f"({', '.join(card['test_time_views'])}) in one batch and averages their logits; the metrics below "
         "are for that model. It costs that many times the compute of one view."
         if len(card["test_time_views"]) > 1 else "One view per image (no test-time augmentation)."),
        "",
        "## Training",
        *[f"- Data: {d}" for d in card["data"]["training"]],
        f"- Split seeds {_per_source(t['split_seed'])}; images: train {_per_source(t['n_train'])}; validation "
        f"{_per_source(t['n_validation'])}; test {_per_source(t['n_test'])}"
        + (f" (smoke run, {t['per_class_limit']} per class)" if t["per_class_limit"] else ""),
    ]
    if t.get("deepapl_patients"):
        lines.append("- DeepAPL patients: " + "; ".join(f"{k} {len(v)}" for k, v in t["deepapl_patients"].items())
                     + f" (test patients: {', '.join(t['deepapl_patients']['test'])})")
    lines += [
        f"- {t.get('epochs_run', t['epochs'])} of {t['epochs']} planned epochs"
        + (" (stopped by the time budget)" if t.get("stopped_by_time_budget") else "")
        + f", batch {t['batch_size']}, AdamW (weight decay 0.05), cosine "
        f"schedule with warm-up to {t['peak_learning_rate']}, class weights"
        + (f" ({t['class_weight_scope']})" if t.get("class_weight_scope") else "") + f" {t['class_weight']}"
        + (", and each source's cells weighted against the other's of the same class: "
           + ", ".join(f"{k} x{v:g}" for k, v in t["source_weight"].items()) if t.get("source_weight") else "")
        + (f"; cross-entropy with label smoothing {t['label_smoothing']:g}" if t.get("label_smoothing") else "")
        + (f"; targets distilled from {t['distillation']['name']} {t['distillation']['version']}: "
           f"{1 - t['distillation']['weight']:g} x the label + {t['distillation']['weight']:g} x its calibrated "
           f"probabilities (mean of {t['distillation']['views']} flips) on the clean image"
           if t.get("distillation") else "")
        + (f"; mixup on {t['mixup']['share_of_images']:g} of the images (each blended with another of its batch, "
           f"its target and weight by the same share, Beta({t['mixup']['alpha']:g}, {t['mixup']['alpha']:g}) "
           "folded to at least half its own)" if t.get("mixup") else "")
        + (f"; {t['excluded_training_cells']['cells']} listed training cells left out "
           f"({t['excluded_training_cells']['list']}, sha256 {t['excluded_training_cells']['sha256'][:12]}...: "
           + ", ".join(f"{k} {v}" for k, v in t["excluded_training_cells"]["by_source"].items()) + ")"
           if t.get("excluded_training_cells") else "")
        + ("; a second reading of training cells: " + second_reading.describe(t["second_reading"])
           if t.get("second_reading") else ""),
        _sizes_line(t["epoch_image_sizes"]),
        "- Augmentation: any rotation, flips, scale jitter {:g}-{:g}x".format(*augmentation["zoom_range"])
        + ("" if not augmentation.get("wide_zoom_probability") else
           " or, for {:.0%} of images, {:g}-{:g}x (other scanners' tighter crops)".format(
               augmentation["wide_zoom_probability"], *augmentation["wide_zoom_range"]))
        + ", translation up to 6%"
        + ("" if augmentation.get("source_scale", 1) == 1 else
           f" (sampled from the images decoded at {augmentation['source_scale']}x the input side, then resized: "
           "enlarged cells as sharp as their source"
           + ("" if augmentation.get("sharp_fraction", 1.0) >= 1.0 else
              f", for {augmentation['sharp_fraction']:.0%} of images; the others resized to the input side first, "
              "so enlarged soft")
           + ")")
        + ("" if not augmentation.get("stain_probability") else
           f", stain jitter in optical-density (HED) space on {augmentation['stain_probability']:.0%} of images "
           f"(concentrations x 1 +- {augmentation['stain_scale']:g})")
        + f", per-channel gain, brightness/contrast/saturation/hue jitter (strength "
        f"{augmentation.get('colour_strength', 1.0):g}), "
        + ("a blend with a Gaussian blur (sigma 1.2 px) of random strength on {:.0%} of images".format(
            augmentation.get("blur_probability", 0.25))
           if not augmentation.get("blur_sigma_range") else
           "a Gaussian blur (sigma {:g}-{:g} px at the network's input) on {:.0%} of images".format(
               *augmentation["blur_sigma_range"], augmentation["blur_probability"]))
        + ", sensor noise",
        *(["- Then its weights were averaged with those of "
           + ", ".join(f"`{w['file']}` ({w['name']} {w['version']})" for w in t["soup"]["with"])
           + " (a uniform model soup: every weight the mean"
           + ("; the fit had started from that network)" if init and [w["sha256"] for w in t["soup"]["with"]]
              == [init["sha256"]] else "; networks fine-tuned from a common one)")]
          if t.get("soup") else []),
        f"- After the fit, the batch-norm statistics were re-estimated on "
        f"{t.get('batch_norm_recalibration_images', 0)} clean (un-augmented) training images"
        + (f"; the fit itself saw preprocessing version {t['fit_preprocessing_version']}, the re-estimation, "
           f"calibration and every metric here version {PREPROCESSING_VERSION}"
           if t.get("fit_preprocessing_version", PREPROCESSING_VERSION) != PREPROCESSING_VERSION else ""),
        f"- Time: {t['total_seconds'] / 60:.1f} min in all ({t['fit_seconds'] / 60:.1f} min fitting) on {t['machine']}"
        + (f"; the fit ran first ({t['fitted_in_earlier_run']['total_seconds'] / 60:.1f} min), the rest in a "
           "second run (`--from-network`); the total is the sum" if t.get("fitted_in_earlier_run") else ""),
        f"- ONNX vs Keras, max |difference| of probabilities on 256 validation images: "
        f"{t['onnx_keras_max_abs_difference']:.2e}",
        "",
        "## Metrics (unclassified counted as wrong)",
        "| split | n | accuracy | macro-F1 (over the types the split has) | unclassified |",
        "|---|---|---|---|---|",
    ]
    for split, m in card["metrics"].items():
        if "accuracy" in m:
            lines.append(f"| {split} | {m['n']} | {m['accuracy']:.4f} | {split_macro_f1(m):.4f} | "
                         f"{m['unclassified_fraction']:.2%} |")
    leukaemia = {k: m["leukaemia"] for k, m in card["metrics"].items() if "leukaemia" in m}
    if leukaemia:
        lines += ["", "Leukaemic-blood view (`training.metrics.leukaemia_summary`): accuracy over the 8 PBC types + "
                  "blast (promyelocyte right as promyelocyte, ig or blast; smudge cells not counted), blasts "
                  "labelled blast, blasts labelled blast or unclassified, normal cells labelled blast:", "",
                  "| split | cells | accuracy (9) | blasts | blast recall | blast or unclassified | normal called blast |",
                  "|---|---|---|---|---|---|---|"]
        for split, m in leukaemia.items():
            lines.append(f"| {split} | {m['n_counted']} | {m['accuracy_9']:.4f} | {m['n_blasts']} | "
                         f"{m['blast_recall']:.4f} | {m['blast_flagged']:.4f} | {m['normal_called_blast']:.4f} |")
        for split, m in leukaemia.items():
            intervals = m.get("patient_bootstrap_95")
            if intervals:
                lines += ["", f"On {split}, 95 % intervals when its {intervals['patients']} patients are resampled "
                          f"({intervals['repeats']} patient bootstraps; a few patients hold most errors): "
                          + ", ".join(f"{name} {low:.3f}-{high:.3f}" for name in ("accuracy_9", "blast_flagged",
                                                                                 "normal_called_blast")
                                      if intervals.get(name) for low, high in [intervals[name]]) + "."]
    for split in [k for k in card["metrics"] if k.startswith("test_") and not k.endswith("_rule")]:
        lines += ["", f"Per class on {split}:", "", "| class | precision | recall | F1 | support |",
                  "|---|---|---|---|---|"]
        for name, m in card["metrics"][split]["per_class"].items():
            if m["support"]:
                lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += _serving_variant_lines(card)
    lines += _apl_head_lines(card)
    lines += [
        "",
        f"![confusion matrices]({CONFUSION_PNG})",
        "",
        "The PBC test split is 224x224 copies from the training hospital; the DeepAPL test split is the cells of "
        "patients held out of training (144x144 copies). The hidden evaluation (full-size originals, the "
        "prospective cohort, other hospitals) was not available here.",
        "",
        "## Intended use and limitations",
        card["intended_use"],
        "",
        *[f"- {item}" for item in card["limitations"]],
        "",
        "## Data and licence",
        *[f"- {a}" for a in card["data"]["attribution"]],
        "",
    ]
    return "\n".join(lines)


def _serving_variant_lines(card: dict) -> list[str]:
    """The float and int8 files and their accuracy with today's and the new preprocessing
    (``serving_variants``, written by ``python -m training.quantize_cells``)."""
    variants = card.get("serving_variants")
    if not variants:
        return []
    int8 = variants["files"]["int8"]
    lines = [
        "",
        "## Serving variants: float and int8",
        f"- float: `{card['file']}` (above). int8: `{int8['file']}`, sha256 `{int8['sha256']}`, made from the float "
        f"file with sha256 `{int8['float_sha256']}` by `python -m training.quantize_cells`: {int8['format']}, "
        f"calibrated ({int8['calibration_method']}) on {int8['calibration_images']['n']} cells of the "
        f"{int8['calibration_images']['from']}; kept in float: the input scaling and the head"
        + (f", and the convolutions {', '.join(int8['float_convolutions'])}" if int8.get("float_convolutions") else "")
        + f" ({len(int8['kept_in_float'])} nodes).",
        f"- Default on CPU: **{variants['default']}** ({variants['criterion']}; "
        f"{'met' if variants['criterion_met'] else 'not met'}). `CELL_MODEL_VARIANT=float|int8` chooses.",
        f"- Preprocessing: today = {variants['preprocessing']['today']}; new = {variants['preprocessing']['new']}."
        + (f" Measured besides {variants['also_measured']}." if variants.get("also_measured") else ""),
        "",
        "Accuracy with the unclassified rule (unclassified counted wrong):",
        "",
        "| split | n | float, today | float, new | int8, today | int8, new | int8 new - float today |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, rows in variants["accuracy"].items():
        n = next(iter(rows.values()))["n"]
        lines.append(f"| {split} | {n} | " + " | ".join(
            f"{rows[k]['accuracy']:.4f}" for k in ("float/full", "float/draft", "int8/full", "int8/draft"))
            + f" | {variants['accuracy_change_int8_new_vs_float_today'][split] * 100:+.2f} points |")
    lines += ["", "int8 vs float on the same inputs (test splits, new preprocessing): "
              + "; ".join(f"{split}: same top class {a['draft']['top_class']:.2%}, same label after the rule "
                          f"{a['draft']['label_after_rule']:.2%}, max probability difference "
                          f"{a['draft']['max_abs_probability_difference']:.3f}"
                          for split, a in variants["test_agreement_int8_vs_float"].items()) + "."]
    return lines


def _apl_head_lines(card: dict) -> list[str]:
    """The per-cell APL head that reads the ``embedding`` output (written by ``training.train_apl``)."""
    head = card.get("apl_cell_head")
    if not head:
        return []
    return [
        "",
        "## Second output and the per-cell APL head",
        f"- `{card.get('embedding_output', {}).get('name', 'embedding')}`: "
        + card.get("embedding_output", {}).get("meaning", "the pooled features"),
        f"- `{head['file']}` ({head['name']} {head['version']}, sha256 `{head['sha256']}`), trained on the "
        f"embedding of the float file with sha256 `{head['cell_model_sha256']}`: {head['meaning']}. "
        f"Trained on {head['trained_on']}. Cross-validation, threshold and the patient-level model: "
        "docs/apl_model.md and services/subtype/model/apl_card.json.",
    ]


def write_card_text(card: dict, out: Path) -> None:
    """JSON and Markdown only, for steps after training (``training.quantize_cells``)."""
    (out / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    (out / CARD_MD).write_text(_markdown(card))


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


def split_macro_f1(metrics: dict) -> float:
    """A split's macro-F1 over the types it has cells of, from its per-class F1 (cards written before 2026-12-07
    stored ``macro_f1`` over every type, a type without cells counting 0: PBC's test split has no blasts or
    smudge cells)."""
    from training.metrics import macro_f1_present

    return macro_f1_present(metrics["per_class"]) if metrics.get("per_class") else metrics["macro_f1"]
