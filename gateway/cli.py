"""aml-classify: batch re-analysis through the gateway.

    AML_API_KEY=... aml-classify DIR [--out results.csv] [--gateway http://127.0.0.1:8000]

DIR holds one folder of images per patient (the folder name is the patient id). Each
patient is sent to the gateway, one CSV row per patient is appended to --out (counts,
differential, prediction, probabilities, APL probability and alert; empty where the
services have no APL model), and a rerun skips the patients already in the
CSV, so an interrupted run resumes where it stopped (the header and each row are flushed to the
file as soon as written, and an empty file, left by a run killed before its first patient, gets
its header on the next run). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import httpx

from shared.subtypes import PATIENT_CLASSES
from shared.vocabulary import CELL_LABELS, LEUKOCYTE_TYPES, NON_LEUKOCYTE_TYPES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
COLUMNS = (["patient_id", "status", "n_images", "n_failed", "prediction", "aml_probability", "apl_probability",
            "apl_alert"]
           + [f"count_{label}" for label in CELL_LABELS]
           + [f"pct_{label}" for label in LEUKOCYTE_TYPES]
           + [f"per100_{label}" for label in NON_LEUKOCYTE_TYPES]
           + [f"p_{name}" for name in PATIENT_CLASSES]
           + ["unclassified_fraction", "smudge_fraction", "appearance_distance", "review_every_cell",
              "warnings", "error", "request_id"])


class IncompatibleResults(Exception):
    """--out holds results with other columns (an older vocabulary): appending would corrupt it."""


def _check_header(out: Path) -> None:
    if not out.exists() or out.stat().st_size == 0:
        return
    with open(out, newline="") as handle:
        header = next(csv.reader(handle), [])
    if header != COLUMNS:
        raise IncompatibleResults(
            f"{out} has other columns than this version writes (an older cell vocabulary?); "
            "choose another --out, or move that file away to redo every patient")


def _done_patients(out: Path) -> set[str]:
    if not out.exists():
        return set()
    with open(out, newline="") as handle:
        return {row["patient_id"] for row in csv.DictReader(handle) if row.get("status") == "ok"}


def _row(patient_id: str, report: dict | None, error: str | None) -> dict:
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
    return row


def _progress(done: int, total: int, patient: str, started: float) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    rate = done / max(time.monotonic() - started, 1e-9)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} patients, {rate:.2f}/s  {patient[:30]:<30}")
    sys.stderr.flush()


def classify_patient(client: httpx.Client, folder: Path) -> tuple[dict | None, str | None]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        return None, "no images in folder"
    files = [("images", (p.name, p.read_bytes(), "application/octet-stream")) for p in images]
    try:
        response = client.post(f"/patients/{folder.name}/classify", files=files)
    except httpx.HTTPError as exc:
        return None, f"gateway unreachable: {type(exc).__name__}"
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text[:200])
        except ValueError:
            detail = response.text[:200]
        return None, f"HTTP {response.status_code}: {detail}"
    return response.json(), None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aml-classify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--out", type=Path, default=Path("aml_results.csv"))
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--api-key", default=os.environ.get("AML_API_KEY"),
                        help="API key with the classify scope (default: $AML_API_KEY)")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        parser.error(f"{args.directory} is not a directory")
    patients = sorted(p for p in args.directory.iterdir() if p.is_dir())
    try:
        _check_header(args.out)
    except IncompatibleResults as exc:
        parser.error(str(exc))
    done = _done_patients(args.out)
    todo = [p for p in patients if p.name not in done]
    print(f"{len(patients)} patients, {len(done)} already in {args.out}, {len(todo)} to do", file=sys.stderr)
    new_file = not args.out.exists() or args.out.stat().st_size == 0  # empty: killed before the first row
    failures = 0
    started = time.monotonic()
    if not args.api_key:
        parser.error("an API key is needed: --api-key or AML_API_KEY")
    headers = {"Authorization": f"Bearer {args.api_key}"}
    with httpx.Client(base_url=args.gateway, timeout=args.timeout, headers=headers) as client, open(args.out, "a", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()
            out.flush()  # on disk now: a kill during the first patient must not leave a file without it
        for index, folder in enumerate(todo):
            _progress(index, len(todo), folder.name, started)
            report, error = classify_patient(client, folder)
            failures += report is None
            writer.writerow(_row(folder.name, report, error))
            out.flush()
        _progress(len(todo), len(todo), "", started)
    sys.stderr.write("\n")
    if failures:
        print(f"{failures} patient(s) failed; rerun to retry them", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
