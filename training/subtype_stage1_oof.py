"""Stage 1 of the subtype ensemble out of fold on the served cell model's counts of the DeepAPL patients, per
stage-1 voting weight (train_subtype.STAGE1_CELL_COUNTS comes from here).

    python -m training.subtype_stage1_oof [--repeats 5] [--copies 3] [--seed 11]

The stage-1 members are refitted in each fold exactly as train_subtype's CV fits them (same folds, seeds, training
rows, DeepAPL weight); the DeepAPL patients of the test fold are scored on the counts the served cell model gives
their images (training/apl_cohort.py, cached under .cache/). Stage 2 is the served model's (never trained on the
DeepAPL patients). Prints, per logistic-regression weight of STAGE1_LR_WEIGHT_GRID, the AML sensitivity
(P(AML) >= 0.5) and the patients predicted control (most probable of the 5 classes), means over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from services.subtype.ensemble import SubtypeEnsemble, combine_stages
from shared.differential import FEATURE_NAMES, features
from training import train_subtype as T
from training.subtype_data import load_deepapl_differentials, load_patients
from training.subtype_members import MEMBERS, fit_member


def out_of_fold(cells, repeats: int = 5, copies: int = 3, seed: int = 11, progress: bool = False):
    """(DeepAPL patient ids, their features from ``cells``' counts, per stage-1 member the out-of-fold P(AML)
    of shape (repeats, patients)): the members refitted in each fold of train_subtype's CV. ``cells``: the
    served cell model's cohort (``training.apl_cohort.load_cohort``)."""
    from training.deepapl_dataset import data_dir  # noqa: PLC0415

    patients = load_patients(Path(os.environ["AML_PATIENTS_CSV"]) if "AML_PATIENTS_CSV" in os.environ else None)
    extra = load_deepapl_differentials(data_dir())
    cohort = T.make_cohort(patients, extra)
    where = {pid: i for i, pid in enumerate(cells.patient_ids)}
    x_cell = np.array([[features(cells.counts[where[pid]])[n] for n in FEATURE_NAMES] for pid in extra.ids],
                      dtype=np.float32)
    offset = len(patients.ids)
    p_aml = {m: np.zeros((repeats, len(extra.ids))) for m in MEMBERS}
    for fold, (train, test) in enumerate(T.cv_splits(cohort, repeats, seed)):
        rng = np.random.default_rng(seed + fold)  # as fit_stages: stage 1 draws first
        f, y, w = T.stage_inputs(cohort.fractions[train], cohort.labels[train], T.DEEPAPL_WEIGHT)["aml_vs_control"]
        x, y, w = T.training_rows(f, y, copies, rng, seed + fold, w)
        rows = test[test >= offset] - offset
        for m in MEMBERS:
            p_aml[m][fold // T.CV_FOLDS, rows] = fit_member(m, seed + fold, x, y, w).predict_proba(x_cell[rows])[:, 1]
        if progress:
            print(f"fold {fold + 1}/{T.CV_FOLDS * repeats}", flush=True)
    return list(extra.ids), x_cell, p_aml


def main(argv: list[str] | None = None) -> None:
    from training.apl_cohort import load_cohort  # noqa: PLC0415
    from training.deepapl_dataset import data_dir  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cell-model", type=Path, default=T.REPO_ROOT / "services" / "cell_classifier" / "model")
    args = parser.parse_args(argv)
    cells = load_cohort(data_dir(), args.cell_model, T.REPO_ROOT / ".cache")
    _, x_cell, p_aml = out_of_fold(cells, args.repeats, args.copies, args.seed, progress=True)
    served = SubtypeEnsemble(T.DEFAULT_OUT)
    stage2 = served.stage_probabilities("subtype", x_cell)
    rows = []
    for lr in T.STAGE1_LR_WEIGHT_GRID:
        weights = T.lr_weighting(lr)
        p = np.average([p_aml[m] for m in MEMBERS], axis=0, weights=[weights[m] for m in MEMBERS])
        control = [int((combine_stages(p[r], stage2).argmax(axis=1) == 0).sum()) for r in range(args.repeats)]
        rows.append({"logistic_regression_weight": lr, "predicted_control": round(float(np.mean(control)), 1),
                     "sensitivity": round(float((p >= 0.5).mean()), 3), "predicted_control_per_repeat": control})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
