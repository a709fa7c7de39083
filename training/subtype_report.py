"""Cross-validation metrics and the Markdown + PNG report of the subtype ensemble."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from shared.subtypes import PATIENT_CLASSES
from training.subtype_members import MEMBERS

SCALARS = ("accuracy", "macro_f1", "aml_accuracy", "aml_auroc", "sensitivity", "specificity")


def _scalars(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    predicted = probabilities.argmax(axis=1)
    is_aml, p_aml = labels > 0, 1.0 - probabilities[:, 0]
    called_aml = p_aml >= 0.5
    return {
        "accuracy": accuracy_score(labels, predicted),
        "macro_f1": f1_score(labels, predicted, labels=range(len(PATIENT_CLASSES)), average="macro", zero_division=0),
        "aml_accuracy": float(np.mean(called_aml == is_aml)),
        "aml_auroc": roc_auc_score(is_aml, p_aml),
        "sensitivity": float(np.mean(called_aml[is_aml])),
        "specificity": float(np.mean(~called_aml[~is_aml])),
    }


def evaluate(probabilities: dict, labels: np.ndarray) -> dict:
    """``probabilities[kind][member]`` is (repeats, n, 5) -> per kind and member: mean/sd per repeat,
    pooled per-class precision/recall/F1 and the summed confusion matrix."""
    summary: dict = {}
    for kind, members in probabilities.items():
        summary[kind] = {}
        for member, per_repeat in members.items():
            runs = [_scalars(labels, p) for p in per_repeat]
            pooled_truth = np.tile(labels, len(per_repeat))
            pooled_pred = per_repeat.argmax(axis=2).ravel()
            precision, recall, f1, support = precision_recall_fscore_support(
                pooled_truth, pooled_pred, labels=range(len(PATIENT_CLASSES)), zero_division=0)
            entry = {name: float(np.mean([r[name] for r in runs])) for name in SCALARS}
            entry["sd"] = {name: float(np.std([r[name] for r in runs])) for name in SCALARS}
            entry["per_class"] = {c: {"precision": float(p), "recall": float(r), "f1": float(f),
                                      "support_per_repeat": int(s) // len(per_repeat)}
                                  for c, p, r, f, s in zip(PATIENT_CLASSES, precision, recall, f1, support)}
            entry["confusion_matrix_summed_over_repeats"] = confusion_matrix(
                pooled_truth, pooled_pred, labels=range(len(PATIENT_CLASSES))).tolist()
            summary[kind][member] = entry
    return summary


def weight_comparison(weighted: dict, labels: np.ndarray, served_lr_weight: float) -> dict:
    """``weighted[kind][lr_weight]`` is (repeats, n, 5) -> one row per weighting (mean over repeats)."""
    others = len(MEMBERS) - 1
    weights = list(next(iter(weighted.values())))
    rows = []
    for w in weights:
        row = {"logistic_regression_weight": float(w), "share_of_vote": float(w / (w + others)),
               "served": bool(w == served_lr_weight)}
        for kind, per_weight in weighted.items():
            runs = [_scalars(labels, p) for p in per_weight[w]]
            row[kind] = {name: float(np.mean([r[name] for r in runs])) for name in ("accuracy", "macro_f1",
                                                                                  "aml_accuracy")}
        rows.append(row)
    return {"note": "soft-voting ensembles with the logistic regression weighted w and the other members 1 in "
                    "stage 2 (stage 1 weighted as served), scored on the same cross-validation folds as the "
                    "members (the served weighting was chosen from these rows; not nested)",
            "rows": rows}


def extra_aml_evaluation(probabilities: dict, is_apl: np.ndarray, ids: list[str]) -> dict:
    """Stage 1 on the extra AML patients (all AML): ``probabilities[kind][member]`` is (repeats, n, 5) ->
    per kind and member, mean/sd over repeats of the sensitivity (P(AML) >= 0.5), split APL / other AML, and of
    the number predicted ``control`` (the most probable of the 5 classes); per patient, in how many repeats the
    ensemble predicted control."""
    by_input: dict = {}
    called_control: dict = {}
    for kind, members in probabilities.items():
        by_input[kind] = {}
        for member, per_repeat in members.items():
            p_aml = 1.0 - per_repeat[:, :, 0]
            aml = p_aml >= 0.5
            control = per_repeat.argmax(axis=2) == 0
            by_input[kind][member] = {
                "sensitivity": float(aml.mean()),
                "sensitivity_sd": float(aml.mean(axis=1).std()),
                "apl_sensitivity": float(aml[:, is_apl].mean()) if is_apl.any() else None,
                "other_aml_sensitivity": float(aml[:, ~is_apl].mean()) if (~is_apl).any() else None,
                "predicted_control": float(control.sum(axis=1).mean()),
                "mean_p_aml": float(p_aml.mean()),
            }
        control = members["ensemble"].argmax(axis=2) == 0
        called_control[kind] = {pid: int(c) for pid, c in zip(ids, control.sum(axis=0)) if c}
    return {"note": f"stage 1 out of fold on {len(ids)} DeepAPL patients (all AML, {int(is_apl.sum())} APL): "
                    "sensitivity = share with P(AML) >= 0.5, mean over repeats; predicted_control = patients "
                    "whose most probable class is control, mean over repeats",
            "patients": len(ids), "apl": int(is_apl.sum()),
            "repeats": int(next(iter(next(iter(probabilities.values())).values())).shape[0]),
            "by_input": by_input,
            "ensemble_predicted_control_repeats": called_control}


def _plots(summary: dict, docs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(summary["expert_counts"]["ensemble"]["confusion_matrix_summed_over_repeats"])
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(matrix / matrix.sum(axis=1, keepdims=True), cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=9, color="white" if v > matrix[i].sum() / 2 else "black")
    ax.set_xticks(range(len(PATIENT_CLASSES)), PATIENT_CLASSES, rotation=30, ha="right")
    ax.set_yticks(range(len(PATIENT_CLASSES)), PATIENT_CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Ensemble, cross-validation (expert counts), summed over repeats", fontsize=9)
    fig.tight_layout()
    fig.savefig(docs / "subtype_confusion_matrix.png", dpi=110)
    plt.close(fig)

    members = list(summary["expert_counts"])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.2
    for k, (kind, metric) in enumerate([("expert_counts", "macro_f1"), ("simulated_cnn_counts", "macro_f1"),
                                        ("expert_counts", "accuracy"), ("simulated_cnn_counts", "accuracy")]):
        values = [summary[kind][m][metric] for m in members]
        errors = [summary[kind][m]["sd"][metric] for m in members]
        ax.bar(np.arange(len(members)) + (k - 1.5) * width, values, width, yerr=errors,
               label=f"{metric}, {kind.replace('_', ' ')}")
    ax.set_xticks(range(len(members)), [m.replace("_", " ") for m in members], fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("5-class cross-validation: members alone vs the ensemble (mean ± sd over repeats)", fontsize=9)
    fig.tight_layout()
    fig.savefig(docs / "subtype_members.png", dpi=110)
    plt.close(fig)


def _stage1_weight_lines(card: dict) -> list[str]:
    """The stage-1 voting weights and the grid they were chosen from (empty if the card has none)."""
    comparison = card.get("cross_validation_stage1_weights")
    if not comparison:
        return []
    served = card["stages"]["aml_vs_control"]["weights"]
    cells = {r["logistic_regression_weight"]: r for r in comparison["served_cell_model_counts"]["rows"]}
    lines = ["### Stage-1 voting weights", "",
             f"Stage 1 has its own soft-voting weights {served} (stage 2: {card['stages']['subtype']['weights']}). "
             f"Rule: {comparison['rule']}. " + ("No weighting meets it. " if comparison["rule_picks"] is None else
             f"It picks logistic regression weight {comparison['rule_picks']:g}. ") +
             "MLL columns: the MLL patients (AML vs control, P(AML) >= 0.5); DeepAPL: AML sensitivity, mean over "
             "repeats. Served cell model's counts: " + comparison["served_cell_model_counts"]["how"] + ".", "",
             "| logistic regression's stage-1 weight (others 1) | MLL AML vs control, expert | MLL specificity, "
             "expert | MLL AML vs control, simulated CNN | MLL specificity, simulated CNN | DeepAPL sensitivity, "
             "expert | DeepAPL sensitivity, simulated CNN | DeepAPL sensitivity, served cell model | DeepAPL "
             "predicted control, served cell model |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in comparison["rows"]:
        e, sim = r["expert_counts"], r["simulated_cnn_counts"]
        c = cells.get(r["logistic_regression_weight"], {})
        lines.append(f"| {r['logistic_regression_weight']:g}{' (served)' if r['served'] else ''} | "
                     f"{e['mll_aml_accuracy']:.3f} | {e['mll_specificity']:.3f} | {sim['mll_aml_accuracy']:.3f} | "
                     f"{sim['mll_specificity']:.3f} | {e['deepapl_sensitivity']:.3f} | "
                     f"{sim['deepapl_sensitivity']:.3f} | {c.get('sensitivity', float('nan')):.3f} | "
                     f"{c.get('predicted_control', float('nan')):.1f} |")
    return lines + ["", "The tables below are of the CV's ensemble ("
                    + card.get("cross_validation_version", card["version"]) + ").", ""]


def _extra_aml_lines(summary: dict, card: dict) -> list[str]:
    """Stage 1 on the DeepAPL patients and the comparison with the previous model (empty without them)."""
    extra = card.get("cross_validation_deepapl")
    if not extra:
        return []
    deepapl = card["training"]["deepapl"]
    lines = [
        "## Stage 1 on the DeepAPL patients (AML blood of another hospital)",
        "",
        f"The {extra['patients']} DeepAPL discovery patients (all AML, {extra['apl']} APL) are extra AML examples "
        f"for stage 1 only, with sample weight {deepapl['sample_weight']:g} ({deepapl['sample_weight_note']}). "
        "They sit in the same patient-level folds as the MLL patients (stratified: every fold holds some, APL "
        "and other AML); the figures are out of fold. Sensitivity = share with P(AML) >= 0.5; predicted "
        "control = patients whose most probable class is control (mean over repeats). The MLL table above "
        "(5 classes, AML vs control) is on the MLL patients only.",
        "",
        "| input | model | AML sensitivity | APL | other AML | predicted control (of "
        f"{extra['patients']}) | mean P(AML) |",
        "|---|---|---|---|---|---|---|",
    ]
    exploration = deepapl.get("sample_weight_exploration")
    if exploration:
        lines[-2:-2] = ["How the weight was chosen (" + exploration["how"] + "):", "",
                        "| DeepAPL weight | DeepAPL sensitivity, expert | DeepAPL sensitivity, simulated CNN | "
                        "MLL specificity, expert | MLL specificity, simulated CNN |", "|---|---|---|---|---|"] + [
            f"| {r['weight']:g}{' (served)' if r['weight'] == deepapl['sample_weight'] else ''} | "
            f"{r['deepapl_sensitivity_expert']:.3f} | {r['deepapl_sensitivity_simulated']:.3f} | "
            f"{r['mll_specificity_expert']:.3f} | {r['mll_specificity_simulated']:.3f} |"
            for r in exploration["rows"]] + [""]
    lines[-2:-2] = _stage1_weight_lines(card)
    for kind, members in extra["by_input"].items():
        for member, m in members.items():
            lines.append(f"| {kind.replace('_', ' ')} | {member.replace('_', ' ')} | {m['sensitivity']:.3f} ± "
                         f"{m['sensitivity_sd']:.3f} | {m['apl_sensitivity']:.3f} | {m['other_aml_sensitivity']:.3f} "
                         f"| {m['predicted_control']:.1f} | {m['mean_p_aml']:.3f} |")
    repeats = extra["ensemble_predicted_control_repeats"].get("expert_counts", {})
    if repeats:
        lines += ["", "Patients the ensemble predicted control on expert counts (repeats out of "
                  f"{extra['repeats']}): "
                  + ", ".join(f"{pid} ({n})" for pid, n in sorted(repeats.items(), key=lambda kv: -kv[1])) + "."]
    previous = card.get("previous_model")
    if previous:
        now, sim = summary["expert_counts"]["ensemble"], summary["simulated_cnn_counts"]["ensemble"]
        d_now = extra["by_input"]["expert_counts"]["ensemble"]
        d_sim = extra["by_input"]["simulated_cnn_counts"]["ensemble"]
        pe, ps = previous["mll_cv_expert_counts"], previous["mll_cv_simulated_cnn_counts"]
        de, ds = previous["deepapl_expert_counts"], previous["deepapl_simulated_cnn_counts"]
        lines += [
            "",
            f"### Against {previous['version']} (the ensemble)",
            "",
            f"| measure | {previous['version']} | {card.get('cross_validation_version', card['version'])} |",
            "|---|---|---|",
            f"| MLL, expert counts: 5-class macro-F1 | {pe['macro_f1']:.3f} | {now['macro_f1']:.3f} |",
            f"| MLL, expert counts: 5-class accuracy | {pe['accuracy']:.3f} | {now['accuracy']:.3f} |",
            f"| MLL, expert counts: AML vs control accuracy | {pe['aml_accuracy']:.3f} | {now['aml_accuracy']:.3f} |",
            f"| MLL, expert counts: AML sensitivity | {pe['sensitivity']:.3f} | {now['sensitivity']:.3f} |",
            f"| MLL, expert counts: control specificity | {pe['specificity']:.3f} | {now['specificity']:.3f} |",
            f"| MLL, simulated CNN counts: macro-F1 | {ps['macro_f1']:.3f} | {sim['macro_f1']:.3f} |",
            f"| MLL, simulated CNN counts: AML vs control accuracy | {ps['aml_accuracy']:.3f} | {sim['aml_accuracy']:.3f} |",
            f"| MLL, simulated CNN counts: control specificity | {ps['specificity']:.3f} | {sim['specificity']:.3f} |",
            f"| DeepAPL, expert counts: AML sensitivity | {de['sensitivity']:.3f} | {d_now['sensitivity']:.3f} |",
            f"| DeepAPL, expert counts: APL sensitivity | {de['apl_sensitivity']:.3f} | {d_now['apl_sensitivity']:.3f} |",
            f"| DeepAPL, expert counts: predicted control (of {extra['patients']}) | {de['predicted_control']:g} | "
            f"{d_now['predicted_control']:.1f} |",
            f"| DeepAPL, simulated CNN counts: AML sensitivity | {ds['sensitivity']:.3f} | {d_sim['sensitivity']:.3f} |",
            f"| DeepAPL, simulated CNN counts: predicted control | {ds['predicted_control']:g} | "
            f"{d_sim['predicted_control']:.1f} |",
            "",
            f"{previous['version']}'s figures on the MLL patients are its own CV; on the DeepAPL patients they are "
            f"its predictions ({previous['note']}). {card.get('cross_validation_version', card['version'])}'s are out "
            "of fold in its CV.",
            f"Control specificity on the MLL patients: expert counts {pe['specificity']:.3f} -> "
            f"{now['specificity']:.3f} ({(now['specificity'] - pe['specificity']) * 100:+.1f} points); simulated CNN "
            f"counts {ps['specificity']:.3f} -> {sim['specificity']:.3f} "
            f"({(sim['specificity'] - ps['specificity']) * 100:+.1f} points, about "
            f"{(ps['specificity'] - sim['specificity']) * summary['expert_counts']['ensemble']['per_class']['control']['support_per_repeat']:.1f} "
            f"of the controls per repeat called AML; sd between repeats {sim['sd']['specificity']:.3f}). The MLL AML "
            "patients stay all called AML (sensitivity 1.000 on both inputs).",
            "",
        ]
    return lines


def write_report(summary: dict, probabilities: dict, labels: np.ndarray, card: dict, docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    _plots(summary, docs)
    lines = [
        f"# Subtype model: {card['name']} {card['version']}",
        "",
        "Generated by `make train-subtype` (`training/train_subtype.py`); do not edit by hand.",
        "",
        f"- Data: {card['training']['data']}; classes {card['training']['class_counts']}",
        f"- Evaluation: {card['training']['cv']}",
    ] + ([f"- **Caveat**: {card['cross_validation_caveat']}"] if card.get("cross_validation_caveat") else []) + [
        f"- Imbalance: {card['training']['imbalance']}",
        f"- Robustness: {card['training']['noise_augmentation']}; every test fold is scored twice, on the "
        "expert counts and on one simulated CNN count per patient",
        f"- Features ({len(card['feature_names'])}): {', '.join(card['feature_names'])} "
        "(`shared/differential.py`)",
        "",
        "## Members alone vs the ensemble (mean ± sd over repeats)",
        "",
        "| input | model | accuracy | macro-F1 | AML vs control accuracy | AUROC | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, members in summary.items():
        for member, m in members.items():
            cells = " | ".join(f"{m[s]:.3f} ± {m['sd'][s]:.3f}" for s in SCALARS)
            lines.append(f"| {kind.replace('_', ' ')} | {member.replace('_', ' ')} | {cells} |")
    lines += ["", "![members](subtype_members.png)", ""]
    lines += _extra_aml_lines(summary, card)
    lines += [
              "## Ensemble per class (expert counts, pooled over repeats)", "",
              "| class | precision | recall | F1 | patients |", "|---|---|---|---|---|"]
    for c, m in summary["expert_counts"]["ensemble"]["per_class"].items():
        lines.append(f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support_per_repeat']} |")
    lines += ["", "![confusion matrix](subtype_confusion_matrix.png)", ""]
    base = summary["expert_counts"]["logistic_regression"]
    ens = summary["expert_counts"]["ensemble"]
    equal = summary["expert_counts"]["ensemble_equal_weights"]
    if ens["macro_f1"] >= base["macro_f1"] + 0.005:
        verdict = "The served ensemble beats the logistic-regression baseline on macro-F1"
    elif ens["macro_f1"] >= base["macro_f1"] - 0.005:
        verdict = ("The served ensemble matches the logistic-regression baseline on macro-F1 (within 0.005, "
                   "well inside the sd between repeats) without beating it")
    else:
        verdict = "The served ensemble does NOT beat the logistic-regression baseline on macro-F1 here"
    strongest = max(MEMBERS, key=lambda m: summary["expert_counts"][m]["macro_f1"])
    served_weights = card["stages"]["subtype"]["weights"]
    share = served_weights["logistic_regression"] / sum(served_weights.values())
    comparison = card.get("cross_validation_weights", {}).get("rows", [])
    lines += [
        "## Against the baseline",
        f"{verdict}: {ens['macro_f1']:.3f} vs {base['macro_f1']:.3f} (accuracy {ens['accuracy']:.3f} vs "
        f"{base['accuracy']:.3f}). The logistic regression is one of the ensemble's members. With equal "
        f"weights the ensemble reached macro-F1 {equal['macro_f1']:.3f}; on {len(labels)} patients and "
        f"{len(card['feature_names'])} features the strongest member alone is the "
        f"{strongest.replace('_', ' ')} (table above). The served ensemble gives the logistic regression "
        f"{share:.0%} of the stage-2 (subtype) vote (weights {served_weights}); stage 1 has its own weights "
        f"{card['stages']['aml_vs_control']['weights']}.",
        "",
    ]
    if comparison:
        lines += ["| logistic regression's stage-2 weight (others 1; stage 1 as served) | share of the vote | expert counts accuracy | "
                  "expert counts macro-F1 | simulated CNN counts accuracy | simulated CNN counts macro-F1 | "
                  "AML vs control accuracy (expert) |",
                  "|---|---|---|---|---|---|---|"]
        for row in comparison:
            e, sim = row["expert_counts"], row["simulated_cnn_counts"]
            mark = " (served)" if row["served"] else ""
            lines.append(f"| {row['logistic_regression_weight']:g}{mark} | {row['share_of_vote']:.0%} | "
                         f"{e['accuracy']:.3f} | {e['macro_f1']:.3f} | {sim['accuracy']:.3f} | {sim['macro_f1']:.3f} | "
                         f"{e['aml_accuracy']:.3f} |")
        lines += ["", f"The weighting was chosen after seeing these {len(comparison)} rows on the same folds "
                  "(not nested), so the served ensemble's numbers are slightly optimistic.", ""]
    support = [m["support_per_repeat"] for m in summary["expert_counts"]["ensemble"]["per_class"].values()]
    lines += [
        "## How the configuration was chosen",
        "The features (log fractions rather than fractions or centred log-ratios), the strength of the "
        "training noise and the soft-voting weights were picked by comparing a handful of configurations "
        "in this same repeated CV, mostly with the logistic regression alone; no hyper-parameter was tuned "
        "per fold and nothing was nested. The numbers above are therefore slightly optimistic; the held-out "
        "patients measure the real performance.",
        "",
        "## Limits",
        f"- {len(labels)} MLL patients; the per-class numbers rest on {min(support)} to {max(support)} patients each "
        "and vary by several points between repeats (see sd).",
        "- The simulated CNN counts model look-alike confusion (base rates in the model card, "
        "`training/subtype_data.py`), loss of blasts and lymphocytes to `smudge`, and sampling noise; the real "
        "CNN on another hospital's smears was not available here.",
        "- The expert differentials separate myeloblasts, promyelocytes and myelocytes/metamyelocytes, as "
        "vocabulary 2.0 does; how well the cell CNN separates them on real smears decides how much of the "
        "cross-validated performance carries over.",
    ]
    if card.get("cross_validation_deepapl"):
        lines += [
            f"- The DeepAPL differentials are the technologists' verified cells of the stored images ({card['training']['deepapl']['leukocytes_per_patient']['min']} or "
            "more leukocytes per patient), not a 100-cell manual differential; their subtype is unknown (APL apart), "
            "so they teach stage 1 only. All of them are AML: they raise sensitivity on AML blood with few blasts "
            "but add no control from that hospital, so the specificity measured on MLL controls is the only "
            "specificity figure.",
            "- DeepAPL is research-use data (copyright The Johns Hopkins University): this model inherits that "
            "restriction.",
        ]
    lines.append("")
    (docs / "subtype_model.md").write_text("\n".join(lines))
