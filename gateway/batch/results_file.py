"""aml-classify's results file: one CSV row per patient, appended and synced, a torn last row cut,
and text that a spreadsheet would run as a formula quoted."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from shared.subtypes import PATIENT_CLASSES
from shared.vocabulary import CELL_LABELS, LEUKOCYTE_TYPES, NON_LEUKOCYTE_TYPES

COLUMNS = (["patient_id", "status", "n_images", "n_failed", "prediction", "aml_probability", "apl_probability",
            "apl_alert"]
           + [f"count_{label}" for label in CELL_LABELS]
           + [f"pct_{label}" for label in LEUKOCYTE_TYPES]
           + [f"per100_{label}" for label in NON_LEUKOCYTE_TYPES]
           + [f"p_{name}" for name in PATIENT_CLASSES]
           + ["unclassified_fraction", "smudge_fraction", "appearance_distance", "review_every_cell",
              "warnings", "error", "request_id"])
HEADER_TEXT = ",".join(COLUMNS)  # no column name needs quoting, so this is exactly the written header line
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting with these


class IncompatibleResults(Exception):
    """--out holds results with other columns (an older vocabulary): appending would corrupt it."""


def check_header(out: Path) -> None:
    if not out.exists() or out.stat().st_size == 0:
        return
    with open(out, newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    if header != COLUMNS:
        raise IncompatibleResults(
            f"{out} has other columns than this version writes (an older cell vocabulary?); "
            "choose another --out, or move that file away to redo every patient")


def _is_our_file(data: bytes) -> bool:
    """Whether ``data`` starts with our header, or is a header cut short: only then may a torn tail be cut."""
    first_line = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
    if b"\n" not in data:
        return HEADER_TEXT.startswith(first_line)
    return next(csv.reader([first_line]), []) == COLUMNS


def cut_torn_row(out: Path) -> str | None:
    """Cut --out back to its last newline when a run died while writing a row (power cut, full disk);
    appending onto the torn row would merge two patients into one bad row, and counting it would skip
    a patient never fully recorded. Returns a warning, or None when there was nothing to cut."""
    if not out.exists():
        return None
    data = out.read_bytes()
    if not data or data.endswith(b"\n") or not _is_our_file(data):
        return None  # complete, or not ours (check_header refuses it untouched)
    keep = data.rfind(b"\n") + 1
    with open(out, "r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    if keep == 0:
        return f"warning: {out} held a header cut short; it is written again"
    patient = data[keep:].split(b",", 1)[0].decode("utf-8", errors="replace")
    return (f"warning: {out} ended in a row cut short (a run stopped while writing it); removed it, "
            f"so patient {patient!r} will be redone")


def done_patients(out: Path) -> set[str]:
    """Patients whose last complete row says ok. A row with another number of fields is not a
    result (cut short or edited), and a later row overrides an earlier one (append-only file)."""
    if not out.exists():
        return set()
    last_status: dict[str, str] = {}
    with open(out, newline="", encoding="utf-8", errors="replace") as handle:
        rows = csv.reader(handle)
        next(rows, None)  # the header
        for row in rows:
            if len(row) == len(COLUMNS):
                last_status[row[0]] = row[1]
    return {patient for patient, status in last_status.items() if status == "ok"}


def safe_cell(value):
    """A value a spreadsheet shows as text: a string starting with = + - @ TAB or CR gets a leading
    quote (Excel would run it as a formula), and line breaks become spaces so that every row is one
    line (a torn row is then cut exactly at the last newline). Numbers are left as they are."""
    if not isinstance(value, str):
        return value
    if value.startswith(FORMULA_PREFIXES):
        value = "'" + value
    return value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def write_header(out, writer: csv.DictWriter) -> None:
    """The header on disk at once: a kill during the first patient must not leave a file without it."""
    writer.writeheader()
    _sync(out)


def write_row(out, writer: csv.DictWriter, row: dict) -> None:
    """One row on disk before the next patient: flushed and synced, so a power cut loses at most it."""
    writer.writerow({key: safe_cell(value) for key, value in row.items()})
    _sync(out)


def _sync(out) -> None:
    out.flush()
    os.fsync(out.fileno())


def report_row(patient_id: str, report: dict | None, error: str | None) -> dict:
    if report is None:
        return {"patient_id": patient_id, "status": "error", "error": error}
    row = {"patient_id": patient_id, "status": "ok", "n_images": report["n_images"], "n_failed": report["n_failed"],
           "prediction": report["prediction"], "aml_probability": round(report["aml_probability"], 6),
           "apl_probability": (round(report["apl_probability"], 6) if report.get("apl_probability") is not None
                               else None),
           "apl_alert": report.get("apl_alert"),
           "warnings": " | ".join(report["warnings"]), "request_id": report["request_id"]}
    row.update({f"count_{k}": v for k, v in report["cell_counts"].items()})
    row.update({f"pct_{k}": v for k, v in report["leukocyte_differential"].items()})
    row.update({f"per100_{k}": v for k, v in report.get("per_100_leukocytes", {}).items()})
    row.update({f"p_{k}": round(v, 6) for k, v in report["probabilities"].items()})
    quality = report.get("quality") or {}
    row.update({k: quality.get(k) for k in ("unclassified_fraction", "smudge_fraction", "appearance_distance",
                                             "review_every_cell")})
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:  # a gateway with a newer vocabulary: this patient's error row, never a crash of the batch
        raise ValueError(f"the gateway's report has fields this aml-classify does not know ({', '.join(unknown[:5])}): "
                         "update aml-classify to the gateway's version")
    return row
