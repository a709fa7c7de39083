"""Two README figures that pool all 82 DeepAPL patients, split into the 24 patients the served cell CNN never
trained on (its 10 validation + 14 test patients, ``training.deepapl_dataset.patient_split``) and the 58 whose
verified cells it was trained on.

    python -m training.unseen_patients [--skip-subtype] [train_apl options, e.g. --cache-dir DIR]

(a) APL alert: train_apl's repeated 5x5-fold CV by patient (nested cross-fitting of the per-cell head), the
    configuration "cells: mean logit" with train_apl's defaults (seed, folds, head C, top fraction); per repeat the
    AUROC of the out-of-fold probabilities over all / unseen / seen patients (mean +- sd over repeats, sd as
    ``apl_cv.CvResult.summary``), and sensitivity / specificity at the served alert threshold (apl_card.json).
(b) Subtype stage 1 (AML vs control) out of fold on the served cell model's counts, as
    ``training.subtype_stage1_oof`` computes it (same folds, seeds, fits; the served stage-1 weights): AML
    sensitivity (P(AML) >= 0.5) and patients predicted control, means over repeats, per group.

The cell model's embeddings are computed once and cached by ``training.apl_cohort`` (``.cache/`` by default).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from training import apl_cv, train_apl
from training.apl_cohort import load_cohort
from training.deepapl_dataset import patient_split, read_patients

CONFIGURATION = "cells: mean logit"


def unseen_patient_ids(root: Path) -> set[str]:
    """The cell CNN's validation and test patients (never in its training set)."""
    _, validation, test = patient_split(read_patients(root))
    return set(validation) | set(test)


def apl_alert(cohort, unseen: np.ndarray, args: argparse.Namespace, threshold: float) -> dict:
    """train_apl's CV of ``CONFIGURATION``; AUROC per group and repeat, and the served threshold on the unseen."""
    result = apl_cv.repeated_cv(cohort.embeddings, cohort.cell_patient, cohort.is_apl, cohort.counts,
                                {CONFIGURATION: train_apl.CONFIGURATIONS[CONFIGURATION]}, head_c=args.head_c,
                                top_fraction=args.top_fraction, folds=args.folds, repeats=args.repeats,
                                seed=args.seed, progress=lambda _: None)
    oof, y = result.oof[CONFIGURATION], cohort.is_apl
    out = {}
    for group, mask in {"all": np.ones_like(unseen), "unseen": unseen, "seen": ~unseen}.items():
        per_repeat = [apl_cv.auroc(y[mask], p[mask]) for p in oof]
        out[group] = {"patients": int(mask.sum()), "apl": int(y[mask].sum()),
                      "auroc_mean": round(float(np.mean(per_repeat)), 4),
                      "auroc_sd": round(float(np.std(per_repeat)), 4),
                      "auroc_per_repeat": [round(a, 4) for a in per_repeat]}
        pooled = apl_cv.sensitivity_specificity(np.tile(y[mask], len(oof)), oof[:, mask].reshape(-1), threshold)
        per = [apl_cv.sensitivity_specificity(y[mask], p[mask], threshold) for p in oof]
        out[group].update({"sensitivity": round(pooled[0], 4), "specificity": round(pooled[1], 4),
                           "sensitivity_per_repeat": [round(s, 4) for s, _ in per],
                           "specificity_per_repeat": [round(s, 4) for _, s in per]})
    return out


def subtype_stage1(cells, unseen_ids: set[str], repeats: int = 5, copies: int = 3, seed: int = 11) -> dict:
    """``training.subtype_stage1_oof``'s out-of-fold P(AML) (its defaults), scored per group with the served
    stage-1 weights (``train_subtype.STAGE1_WEIGHTS``)."""
    from services.subtype.ensemble import SubtypeEnsemble, combine_stages
    from training import train_subtype as T
    from training.subtype_members import MEMBERS
    from training.subtype_stage1_oof import out_of_fold

    ids, x_cell, p_aml = out_of_fold(cells, repeats, copies, seed)
    stage2 = SubtypeEnsemble(T.DEFAULT_OUT).stage_probabilities("subtype", x_cell)
    p = np.average([p_aml[m] for m in MEMBERS], axis=0, weights=[T.STAGE1_WEIGHTS[m] for m in MEMBERS])
    control = np.stack([combine_stages(p[r], stage2).argmax(axis=1) == 0 for r in range(repeats)])
    unseen = np.array([pid in unseen_ids for pid in ids])
    out = {}
    for group, mask in {"all": np.ones_like(unseen), "unseen": unseen, "seen": ~unseen}.items():
        out[group] = {"patients": int(mask.sum()), "sensitivity": round(float((p[:, mask] >= 0.5).mean()), 3),
                      "sensitivity_per_repeat": [round(float(s), 3) for s in (p[:, mask] >= 0.5).mean(axis=1)],
                      "predicted_control": round(float(control[:, mask].sum(axis=1).mean()), 1)}
    return out


def main(argv: list[str] | None = None) -> dict:
    from threadpoolctl import threadpool_limits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-subtype", action="store_true", help="only (a), the APL alert")
    ours, rest = parser.parse_known_args(argv)
    args = train_apl.parse_args(rest)  # train_apl's defaults: the CV behind the README figure
    started = time.perf_counter()
    threshold = json.loads((args.subtype_model_dir / train_apl.APL_CARD).read_text())["threshold"]
    cells = load_cohort(args.deepapl_dir, args.cell_model_dir, Path(args.cache_dir) if args.cache_dir else None)
    unseen_ids = unseen_patient_ids(args.deepapl_dir)
    unseen = np.array([pid in unseen_ids for pid in cells.patient_ids])
    print(f"{len(cells.patient_ids)} patients, {unseen.sum()} unseen by the cell CNN "
          f"({int(cells.is_apl[unseen].sum())} APL); embeddings ready in {time.perf_counter() - started:.0f} s",
          flush=True)
    with threadpool_limits(1):  # as train_apl: many small fits, 2 cores
        results = {"apl_alert": apl_alert(cells, unseen, args, threshold)}
        print(f"(a) APL alert, {CONFIGURATION}, {args.repeats}x{args.folds}-fold CV; threshold {threshold}")
        print(f"  {'group':7} {'patients':>8} {'APL':>4} {'AUROC mean +- sd':>17} {'sens':>6} {'spec':>6}  "
              "per repeat AUROC")
        for group, r in results["apl_alert"].items():
            print(f"  {group:7} {r['patients']:8d} {r['apl']:4d} {r['auroc_mean']:9.3f} +- {r['auroc_sd']:.3f} "
                  f"{r['sensitivity']:6.3f} {r['specificity']:6.3f}  {r['auroc_per_repeat']}")
        print(f"  unseen per repeat: sensitivity {results['apl_alert']['unseen']['sensitivity_per_repeat']}, "
              f"specificity {results['apl_alert']['unseen']['specificity_per_repeat']}", flush=True)
        if not ours.skip_subtype:
            results["subtype_stage1"] = subtype_stage1(cells, unseen_ids)
            print("(b) subtype stage 1 out of fold on the served cell model's counts (served stage-1 weights)")
            print(f"  {'group':7} {'patients':>8} {'AML sens':>8} {'pred. control':>13}  per repeat sensitivity")
            for group, r in results["subtype_stage1"].items():
                print(f"  {group:7} {r['patients']:8d} {r['sensitivity']:8.3f} {r['predicted_control']:13.1f}  "
                      f"{r['sensitivity_per_repeat']}")
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    return results


if __name__ == "__main__":
    main()
