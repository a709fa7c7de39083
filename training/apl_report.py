"""docs/apl_model.md: the APL alert's cross-validation report, written from its card."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training import apl_cv


def _roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    thresholds = np.concatenate([[np.inf], np.sort(np.unique(p))[::-1]])
    tpr = [(p[y == 1] >= t).mean() for t in thresholds]
    fpr = [(p[y == 0] >= t).mean() for t in thresholds]
    return np.array(fpr), np.array(tpr)


def _plot(card: dict, result, y: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    for name, oof in result.oof.items():
        for index, probabilities in enumerate(oof):
            fpr, tpr = _roc_points(y, probabilities)
            axis.plot(fpr, tpr, color=f"C{list(result.oof).index(name)}", alpha=0.5, linewidth=1,
                      label=f"{name} (AUROC {card['cv']['configurations'][name]['auroc_mean']:.2f})"
                      if index == 0 else None)
    spec, sens = card["alert"]["cv_specificity"], card["alert"]["cv_sensitivity"]
    axis.plot([1 - spec], [sens], "k*", markersize=12, label=f"alert threshold {card['threshold']:.3f}")
    axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    axis.set_xlabel("1 - specificity (other AML alerted)")
    axis.set_ylabel("sensitivity (APL alerted)")
    axis.set_title("APL vs other AML, out-of-fold, one curve per repeat", fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _int8_lines(check: dict | None, threshold: float) -> list[str]:
    if not check:
        return []
    return [
        "## On the int8 cell model",
        f"Where the cell service runs the int8 variant of the CNN (its default on CPU when the card says so), the "
        f"head reads int8 embeddings. The trained alert on all {check['patients']} patients (in-sample), float vs "
        f"int8 cell model: alerts at {threshold} {check['alerts']['float']} vs {check['alerts']['int8']}, "
        f"{check['alert_disagreements']} patients alerted by one and not the other; patient probability moves by "
        f"{check['mean_abs_probability_difference']} on average, at most {check['max_abs_probability_difference']}.",
        "",
    ]


def write_report(card: dict, result, y: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    png = path.with_suffix(".png")
    _plot(card, result, y, png)
    alert = card["alert"]
    control = card["aml_vs_control"]
    lines = [
        "# APL alert: cross-validation report",
        "",
        f"Written by `make train-apl` (`python -m training.train_apl`) on {card['created']}; model "
        f"{card['name']} {card['version']}. Everything here is measured on the 82-patient DeepAPL discovery "
        "cohort (research use only, no open licence); the hidden prospective cohort is measured by the "
        "maintainers through the running services.",
        "",
        "## What it is",
        "- **Per cell** (inside the cell service's ONNX batch): the CNN's 256-d `embedding` output goes "
        "through `apl_cell_head.onnx`, a standardised L2 logistic regression (C = "
        f"{card.get('head_c', 'see cell card')}) trained with every cell carrying its patient's diagnosis "
        "(multiple-instance learning at the instance level; each patient weighs the same, APL and other AML "
        "balanced). Its output `apl_logit` is evidence, not a label.",
        f"- **Per patient** (subtype service): features {', '.join(f'`{n}`' for n in card['features'])} "
        "(`shared.apl`, one definition for training and serving) into a logistic regression "
        "(`apl_patient.onnx`) -> `apl_probability`; `apl_alert` when it is >= the threshold "
        f"**{card['threshold']}**.",
        "",
        "## Cross-validation",
        f"{card['cv']['scheme']}. {card['data']['patients']} patients ({card['data']['apl']} APL), "
        f"{card['data']['cells']} cells (every image, verified or not).",
        "",
        "| configuration | features | AUROC mean | sd | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in card["cv"]["configurations"].items():
        marker = " **(chosen)**" if name == card["cv"]["chosen"] else ""
        lines.append(f"| {name}{marker} | {', '.join(row['features'])} | {row['auroc_mean']:.3f} | "
                     f"{row['auroc_sd']:.3f} | {row['auroc_min']:.3f} | {row['auroc_max']:.3f} |")
    lines += [
        "",
        f"Chosen: {card['cv']['chosen_by']}. The per-cell head's strength C was looked at once on a single "
        "5-fold cross-fitting of these patients (C 0.001-0.1 gave AUROC 0.90-0.93 for the mean logit), so the "
        "figures above carry that small selection on top of the CV.",
        "",
        f"![ROC curves]({png.name})",
        "",
        *_int8_lines(card.get("int8_cell_model"), card["threshold"]),
        "## Alert threshold",
        f"Chosen on the out-of-fold probabilities of all repeats (pooled): {alert['rule']}, placed halfway to "
        "the next lower out-of-fold probability.",
        "",
        f"- threshold **{alert['threshold']}**: sensitivity {alert['cv_sensitivity']:.3f}, specificity "
        f"{alert['cv_specificity']:.3f} (pooled over repeats)",
        f"- per repeat: sensitivity {', '.join(f'{v:.2f}' for v in alert['cv_sensitivity_per_repeat'])}; "
        f"specificity {', '.join(f'{v:.2f}' for v in alert['cv_specificity_per_repeat'])}",
        "",
        "These are not an independent estimate of the alert's sensitivity and specificity: the threshold was "
        "chosen on these same out-of-fold probabilities to reach the sensitivity asked, so the pooled sensitivity "
        "meets it by construction (and the configuration was chosen on the same CV); the spread over repeats shows "
        "how far they move between partitions of the same patients. The prospective cohort measures them.",
        "",
        "| threshold | CV sensitivity | CV specificity |",
        "|---|---|---|",
        *[f"| {p['threshold']}{' **(alert)**' if p['threshold'] == alert['threshold'] else ''} | "
          f"{p['sensitivity']:.3f} | {p['specificity']:.3f} |" for p in alert["operating_points"]],
        "",
        "## AML vs control on the same patients",
        f"The subtype ensemble on each patient's counts from the served cell model: {control['predicted_aml']} of "
        f"{control['patients']} AML patients predicted AML (sensitivity {control['aml_sensitivity']:.3f}); "
        f"predicted control: {', '.join(control['predicted_control']) or 'none'}. "
        f"{control['apl_predicted_pml_rara']} of {control['n_apl']} APL patients get the subtype PML_RARA "
        "(the count-based 5-class model; the alert above is the image-based one). In sample where the subtype "
        "model was trained with these patients (2.1 and later: stage 1 learns from their expert counts); the "
        "out-of-fold figure is in docs/subtype_model.md.",
        "",
        "## Limitations",
        *[f"- {item}" for item in card["limitations"]],
        "",
    ]
    path.write_text("\n".join(lines))


__all__ = ["write_report", "apl_cv"]
