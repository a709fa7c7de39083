"""The APL alert in the gateway (issue 10): what goes to the subtype service, the report's APL fields,
the cells a reviewer looks at first and the warnings when the alert and the subtype disagree."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shared.schemas import AplCell

TOP_CELLS = 10
APL_CLASS = "PML_RARA"


def subtype_request(counts: dict[str, int], cells: Iterable[Mapping], head_sha256: str | None) -> dict:
    """The subtype service's request body: the counts and, when every labelled cell has an APL logit from
    one head, the logits and that head's sha256."""
    body: dict = {"counts": counts}
    logits = [c.get("apl_logit") for c in cells]
    if head_sha256 and logits and all(v is not None for v in logits):
        body |= {"apl_cell_logits": logits, "apl_cell_head_sha256": head_sha256}
    return body


def top_cells(cells: Iterable[Mapping], n: int = TOP_CELLS) -> list[AplCell]:
    """The ``n`` cells with the highest APL logit, highest first (one entry per image sha256)."""
    best: dict[str, Mapping] = {}
    for cell in cells:
        if cell.get("apl_logit") is not None and cell["sha256"] not in best:
            best[cell["sha256"]] = cell
    ranked = sorted(best.values(), key=lambda c: (-c["apl_logit"], c["filename"]))
    return [AplCell(filename=c["filename"], sha256=c["sha256"], apl_logit=c["apl_logit"]) for c in ranked[:n]]


def report_fields(subtype: Mapping, cells: list[Mapping]) -> dict:
    """The report's APL fields from the subtype service's answer (all null when it has no assessment)."""
    apl = subtype.get("apl")
    if not apl:
        return {"apl_probability": None, "apl_alert": None, "apl_threshold": None, "apl_top_cells": []}
    return {"apl_probability": apl["probability"], "apl_alert": apl["alert"], "apl_threshold": apl["threshold"],
            "apl_top_cells": [c.model_dump() for c in top_cells(cells)]}


def disagreement_warnings(prediction: str, apl_probability: float | None, apl_alert: bool | None) -> list[str]:
    """The alert and the 5-class subtype prediction disagree: say so (a haematologist confirms genetically)."""
    if apl_alert is None:
        return []
    if apl_alert and prediction != APL_CLASS:
        return [f"APL alert (APL probability {100 * apl_probability:.0f} %): the APL alert disagrees with the "
                f"subtype prediction {prediction}: confirm PML::RARA"]
    if not apl_alert and prediction == APL_CLASS:
        return [f"the subtype prediction is {APL_CLASS} but the APL alert did not fire (APL probability "
                f"{100 * apl_probability:.0f} %): confirm or exclude PML::RARA"]
    return []


def missing_warnings(models: Mapping) -> list[str]:
    """One side of the APL alert is deployed and the other is not: the report has no APL assessment."""
    head, patient = models.get("apl_cell_head"), models.get("apl_patient")
    if head and not patient:
        return ["no APL assessment: the subtype service has no APL model"]
    if patient and not head:
        return ["no APL assessment: the cell service has no APL cell head"]
    return []
