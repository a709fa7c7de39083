"""Train the APL alert: repeated patient-level CV on the 82 DeepAPL discovery patients, choose the
configuration and the alert threshold from it, fit on all patients, export (ONNX, sha256 in the
cards) and write the CV report.

    python -m training.train_apl            # make train-apl

Writes ``services/cell_classifier/model/apl_cell_head.onnx`` (+ the cell card's ``apl_cell_head``),
``services/subtype/model/apl_patient.onnx`` + ``apl_card.json``, and ``docs/apl_model.md``.
The images are those the cell service would receive, through the served cell model (see
``training.apl_cohort``); about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from shared.hashing import file_sha256
from training import apl_cv
from training.apl_cohort import Cohort, load_cohort

REPO_ROOT = Path(__file__).resolve().parents[1]
CELL_MODEL_DIR = REPO_ROOT / "services" / "cell_classifier" / "model"
SUBTYPE_MODEL_DIR = REPO_ROOT / "services" / "subtype" / "model"
HEAD_FILE = "apl_cell_head.onnx"
PATIENT_FILE = "apl_patient.onnx"
APL_CARD = "apl_card.json"
CONFIGURATIONS = {
    "cells: mean logit": ["mean_cell_logit"],
    "cells: top-quarter logit": ["top_cell_logit_mean"],
    "cells + promyelocyte fraction": ["mean_cell_logit", "promyelocyte_log_fraction"],
    "counts only: promyelocyte + blast fractions": ["promyelocyte_log_fraction", "blast_log_fraction"],
}
VERSION = "1.3.0"  # 1.1.0 on cell model 2.1.0, 1.2.0 on 2.2.0, 1.3.0 on 2.3.0 (same recipe, the new embedding)
MIN_CELLS = 30


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deepapl-dir", type=Path,
                        default=Path(os.environ.get("DEEPAPL_DIR", REPO_ROOT.parent / "shared/data/deepapl_discovery")))
    parser.add_argument("--cell-model-dir", type=Path, default=CELL_MODEL_DIR)
    parser.add_argument("--subtype-model-dir", type=Path, default=SUBTYPE_MODEL_DIR)
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "apl_model.md")
    parser.add_argument("--cache-dir", default=str(REPO_ROOT / ".cache"))
    parser.add_argument("--head-c", type=float, default=0.1, help="L2 strength (inverse) of the per-cell head")
    parser.add_argument("--top-fraction", type=float, default=0.25)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-sensitivity", type=float, default=0.90, help="alert threshold: CV sensitivity floor")
    parser.add_argument("--min-specificity", type=float, default=0.65,
                        help="alert threshold: the most sensitive one that keeps this CV specificity (0.60 is the "
                             "target; 0.65 leaves a margin)")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--patients", type=int, default=None, help="use only N patients (smoke runs)")
    parser.add_argument("--version", default=VERSION,
                        help=f"version of the alert and its cell head (default {VERSION}); a new cell network "
                             "needs a new one (training.adopt_cells raises the minor version)")
    return parser.parse_args(argv)


def head_onnx(head: apl_cv.CellHead, width: int) -> bytes:
    """embedding float32 [batch, width] -> apl_logit float32 [batch]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["embedding", "weights"], ["product"]),
             helper.make_node("Add", ["product", "bias"], ["logit_column"]),
             helper.make_node("Reshape", ["logit_column", "flat"], ["apl_logit"])]
    initializers = [numpy_helper.from_array(head.weights.reshape(width, 1).astype(np.float32), "weights"),
                    numpy_helper.from_array(np.array([head.bias], dtype=np.float32), "bias"),
                    numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat")]
    graph = helper.make_graph(nodes, "apl_cell_head",
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("apl_logit", TensorProto.FLOAT, ["batch"])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="training.train_apl")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def patient_onnx(model, n_features: int) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    proto = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, n_features]))],
                            options={id(model): {"zipmap": False}}, target_opset=17)
    proto.graph.name = "apl_patient"  # skl2onnx names the graph with a random uuid: the same model, other bytes
    return proto.SerializeToString()


def _onnx_outputs(data: bytes, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


def aml_vs_control(cohort: Cohort, subtype_dir: Path) -> dict:
    """The subtype service's ensemble on each patient's counts from the served cell model."""
    from services.subtype.ensemble import SubtypeEnsemble
    from shared.differential import FEATURE_NAMES, features
    from shared.subtypes import PATIENT_CLASSES

    ensemble = SubtypeEnsemble(subtype_dir)
    x = np.array([[features(k)[n] for n in FEATURE_NAMES] for k in cohort.counts], dtype=np.float32)
    probabilities = ensemble.predict(x)
    predicted = [PATIENT_CLASSES[i] for i in probabilities.argmax(axis=1)]
    control = [p for p, label in zip(cohort.patient_ids, predicted) if label == "control"]
    return {"patients": len(predicted), "predicted_aml": len(predicted) - len(control),
            "aml_sensitivity": round(1 - len(control) / len(predicted), 4), "predicted_control": control,
            "apl_predicted_pml_rara": int(sum(1 for a, p in zip(cohort.is_apl, predicted) if a and p == "PML_RARA")),
            "n_apl": int(cohort.is_apl.sum())}


def choose_threshold(y: np.ndarray, oof: np.ndarray, min_sensitivity: float, min_specificity: float) -> dict:
    """The alert threshold from the out-of-fold probabilities of every repeat (pooled): the highest
    CV sensitivity that keeps specificity >= ``min_specificity`` (at least ``min_sensitivity``;
    where none keeps both, the highest threshold with ``min_sensitivity``), then placed halfway to the
    next lower out-of-fold probability, so the patient on the edge is not one rounding away."""
    pooled_y = np.tile(y, oof.shape[0])
    pooled = oof.reshape(-1)
    values = np.unique(pooled)[::-1]
    points = [(float(t), *apl_cv.sensitivity_specificity(pooled_y, pooled, t)) for t in values]
    feasible = [p for p in points if p[1] >= min_sensitivity and p[2] >= min_specificity]
    if feasible:
        best = max(feasible, key=lambda p: (p[1], p[2]))
        rule = (f"highest CV sensitivity (>= {min_sensitivity}) with CV specificity >= {min_specificity}")
    else:
        best = next(p for p in points if p[1] >= min_sensitivity)
        rule = f"highest threshold with CV sensitivity >= {min_sensitivity} (no threshold kept specificity " \
               f">= {min_specificity})"
    lower = values[values < best[0]]
    threshold = float((best[0] + lower[0]) / 2) if lower.size else best[0]
    sensitivity, specificity = apl_cv.sensitivity_specificity(pooled_y, pooled, threshold)
    per_repeat = [apl_cv.sensitivity_specificity(y, p, threshold) for p in oof]
    grid = sorted({round(float(t), 2) for t in np.linspace(0.05, 0.95, 19)} | {round(threshold, 4)})
    return {"threshold": round(threshold, 4), "rule": rule,
            "cv_sensitivity": round(sensitivity, 4), "cv_specificity": round(specificity, 4),
            "cv_sensitivity_per_repeat": [round(s, 4) for s, _ in per_repeat],
            "cv_specificity_per_repeat": [round(s, 4) for _, s in per_repeat],
            "operating_points": [{"threshold": t, **dict(zip(("sensitivity", "specificity"), (
                round(v, 4) for v in apl_cv.sensitivity_specificity(pooled_y, pooled, t))))} for t in grid]}


def main(argv=None) -> dict:
    from threadpoolctl import threadpool_limits

    args = parse_args(argv)
    # one BLAS thread: the many small fits ran 3x slower with threads fighting over 2 cores
    with threadpool_limits(1):
        return _train(args)


def int8_agreement(cohort, images_dir: Path, cell_card: dict, cell_model_dir: Path, head, patient,
                   names: list[str], top_fraction: float, threshold: float) -> dict | None:
    """The trained alert on every patient through the float cell model and through its int8 variant (which the
    cell service runs on CPU where the card makes it the default): how far the patient probabilities move and
    how many alerts change. In-sample for both (the same final head and patient model); None without int8."""
    from services.cell_classifier.inference import model_variants
    from training.apl_cohort import counts_by_patient, run_model

    entry = model_variants(cell_card).get("int8")
    if entry is None or entry.get("float_sha256") != cell_card["sha256"]:
        return None
    probabilities, embeddings = run_model(cell_model_dir / entry["file"], [images_dir / f for f in cohort.files])
    counts = counts_by_patient(cell_card, probabilities, cohort.cell_patient, len(cohort.patient_ids))
    by_variant = {}
    for variant, (e, k) in {"float": (cohort.embeddings, cohort.counts), "int8": (embeddings, counts)}.items():
        x = apl_cv.patient_feature_matrix(head.logits(e.astype(np.float32)), cohort.cell_patient, k, names,
                                          top_fraction)
        by_variant[variant] = patient.predict_proba(x)[:, 1]
    difference = np.abs(by_variant["float"] - by_variant["int8"])
    return {"int8_sha256": entry["sha256"], "patients": int(len(difference)),
            "alerts": {v: int((p >= threshold).sum()) for v, p in by_variant.items()},
            "alert_disagreements": int(((by_variant["float"] >= threshold) != (by_variant["int8"] >= threshold)).sum()),
            "max_abs_probability_difference": round(float(difference.max()), 4),
            "mean_abs_probability_difference": round(float(difference.mean()), 4)}


def _train(args) -> dict:
    started = time.perf_counter()
    cohort = load_cohort(args.deepapl_dir, args.cell_model_dir, Path(args.cache_dir) if args.cache_dir else None)
    if args.patients:
        rng = np.random.default_rng(args.seed)
        apl, other = np.flatnonzero(cohort.is_apl == 1), np.flatnonzero(cohort.is_apl == 0)
        half = args.patients // 2
        cohort = cohort.subset(np.sort(np.concatenate([rng.choice(apl, half, replace=False),
                                                       rng.choice(other, args.patients - half, replace=False)])))
    y = cohort.is_apl
    print(f"{len(y)} patients ({int(y.sum())} APL), {len(cohort.files)} cells; repeated CV "
          f"{args.repeats}x{args.folds}-fold", flush=True)
    result = apl_cv.repeated_cv(cohort.embeddings, cohort.cell_patient, y, cohort.counts, CONFIGURATIONS,
                                head_c=args.head_c, top_fraction=args.top_fraction, folds=args.folds,
                                repeats=args.repeats, seed=args.seed)
    summary = result.summary(y)
    best = max(summary, key=lambda name: summary[name]["auroc_mean"] if not name.startswith("counts") else -1)
    names = CONFIGURATIONS[best]
    alert = choose_threshold(y, result.oof[best], args.min_sensitivity, args.min_specificity)
    print(json.dumps(summary, indent=1), "\nchosen:", best, alert, flush=True)

    # final fit: the head on every patient's cells; the patient model on cross-fitted logits
    head = apl_cv.CellHead(args.head_c).fit(cohort.embeddings, cohort.cell_patient, y)
    crossfit = apl_cv.cross_fitted_logits(cohort.embeddings, cohort.cell_patient, y, args.head_c, args.folds,
                                          args.seed)
    x = apl_cv.patient_feature_matrix(crossfit, cohort.cell_patient, cohort.counts, names, args.top_fraction)
    patient = apl_cv.patient_model().fit(x, y)

    head_bytes = head_onnx(head, cohort.embeddings.shape[1])
    onnx_logits = _onnx_outputs(head_bytes, {"embedding": cohort.embeddings[:512]})[0]
    head_difference = float(np.abs(onnx_logits - head.logits(cohort.embeddings[:512])).max())
    patient_bytes = patient_onnx(patient, len(names))
    onnx_p = _onnx_outputs(patient_bytes, {"features": x.astype(np.float32)})[1][:, 1]
    patient_difference = float(np.abs(onnx_p - patient.predict_proba(x)[:, 1]).max())
    if head_difference > 1e-3 or patient_difference > 1e-4:
        raise SystemExit(f"ONNX disagrees with scikit-learn: head {head_difference}, patient {patient_difference}")

    (args.cell_model_dir / HEAD_FILE).write_bytes(head_bytes)
    cell_card_path = args.cell_model_dir / "model_card.json"
    cell_card = json.loads(cell_card_path.read_text())
    head_sha = file_sha256(args.cell_model_dir / HEAD_FILE)
    cell_card["apl_cell_head"] = {
        "name": "aml-apl-cell-head", "version": args.version, "file": HEAD_FILE, "sha256": head_sha,
        "input": "embedding", "output": "apl_logit", "cell_model_sha256": cell_card["sha256"],
        "meaning": "per-cell log-odds of APL (PML::RARA) from the CNN embedding: a standardised L2 logistic "
                   "regression trained with every cell labelled by its patient's diagnosis (multiple-instance "
                   "learning at the instance level, each patient weighted equally, APL and other AML balanced); "
                   "evidence for the patient-level model, not a cell label",
        "regularisation_c": args.head_c, "max_abs_difference_onnx_vs_sklearn": head_difference,
        "trained_on": f"{len(y)} DeepAPL discovery patients ({int(y.sum())} APL), {len(cohort.files)} cells "
                      "(every image, verified or not); research use only (no open licence)",
    }
    from training.model_card import write_card_text

    write_card_text(cell_card, args.cell_model_dir)

    (args.subtype_model_dir / PATIENT_FILE).write_bytes(patient_bytes)
    fitted = patient.steps[1][1]
    card = {
        "name": "aml-apl-alert", "version": args.version, "file": PATIENT_FILE,
        "sha256": file_sha256(args.subtype_model_dir / PATIENT_FILE),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"name": "features", "features_from": "shared.apl.feature_row"},
        "features": names, "pooling": {"top_fraction": args.top_fraction}, "head_c": args.head_c,
        "threshold": alert["threshold"], "min_cells": MIN_CELLS,
        "cell_head_sha256": head_sha, "cell_model_sha256": cell_card["sha256"],
        "coefficients_standardised": [round(float(v), 4) for v in fitted.coef_[0]],
        "alert": alert,
        "cv": {"scheme": f"{args.repeats} repeats of stratified {args.folds}-fold CV by patient; inside each "
                         f"training fold the per-cell head is cross-fitted ({args.folds}-fold by patient) so the "
                         "patient model learns from logits of patients the head never saw",
               "configurations": summary, "chosen": best,
               "chosen_by": "highest mean AUROC among the image-based configurations"},
        "aml_vs_control": aml_vs_control(cohort, args.subtype_model_dir),
        "data": {"patients": len(y), "apl": int(y.sum()), "cells": len(cohort.files),
                 "source": "DeepAPL discovery cohort (Johns Hopkins, CellaVision; Sidhom et al. 2021): copyright "
                           "JHU, no open licence, research use only"},
        "limitations": [
            "82 patients from one hospital: the CV spread is wide and another hospital's stain or scanner may "
            "shift the cell logits (the report's quality object says when images look unfamiliar)",
            "the cell CNN whose embedding the head reads was fine-tuned on cell-type labels of 58 of these "
            "patients (not on their diagnosis)",
            "a screening alert for urgent confirmation of PML::RARA, never a diagnosis",
        ],
        "max_abs_difference_onnx_vs_sklearn": patient_difference,
        "int8_cell_model": int8_agreement(cohort, args.deepapl_dir / "images", cell_card, args.cell_model_dir, head,
                                          patient, names, args.top_fraction, alert["threshold"]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.subtype_model_dir / APL_CARD).write_text(json.dumps(card, indent=2) + "\n")
    from training.apl_report import write_report

    write_report(card, result, y, args.docs)
    print(f"wrote {HEAD_FILE}, {PATIENT_FILE}, {APL_CARD}, {args.docs} in {card['seconds']} s", flush=True)
    return card


if __name__ == "__main__":
    main()
