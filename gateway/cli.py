"""aml-classify: batch re-analysis through the gateway.

    AML_API_KEY=... aml-classify DIR [--out results.csv] [--gateway http://127.0.0.1:8000]

DIR holds one folder of images per patient (the folder name is the patient id; put a patient's
images directly in its folder: a patient folder with a subfolder is refused rather than reported
from part of its cells). Hidden entries (names starting with "." or "@", such as macOS "._x.jpg" or
Synology "@eaDir") and system folders are skipped. Each patient is sent to the gateway and one CSV
row is appended to --out (counts, differential, prediction, probabilities, APL probability and alert,
empty where the services have no APL model);
a patient that cannot be read, is over --max-images or --max-image-mib, or is refused by the gateway
gets an error row and the batch goes on.

The file is append-only: a rerun skips the patients whose last row says "ok" and appends a new row
for every other one, so a patient can have several rows and A PATIENT'S LAST ROW IS ITS RESULT. Each
row is flushed and synced to disk as soon as written; a last row cut off by a power cut or a full disk
is removed at the next start and that patient redone. 429 and 503 answers and connection errors are
retried (--retries, waiting Retry-After or a growing backoff); after 3 patients in a row fail with the
gateway unreachable or still refusing, the run stops (exit 1) so a rerun can finish the batch later.
Progress goes to stderr. Exit status: 0 all ok, 1 some patient failed or the run stopped, 2 usage.
"""

from __future__ import annotations

import argparse
import csv
import email.utils
import os
import re
import sys
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import httpx

from shared.schemas import PATIENT_ID_PATTERN
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
HEADER_TEXT = ",".join(COLUMNS)  # no column name needs quoting, so this is exactly the written header line

PATIENT_ID = re.compile(PATIENT_ID_PATTERN)
HIDDEN_PREFIXES = (".", "@")  # macOS "._x.jpg" and ".DS_Store", ".ipynb_checkpoints", Synology "@eaDir"
SYSTEM_FOLDERS = {"system volume information", "$recycle.bin", "lost+found", "#recycle", "#snapshot"}
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting with these

DEFAULT_MAX_IMAGES = 2000  # the gateway's MAX_IMAGES
DEFAULT_MAX_IMAGE_MIB = 50  # the gateway's GATEWAY_MAX_IMAGE_BYTES
RETRY_STATUSES = {429, 503}
RETRY_AFTER_CAP_S = 60.0
FIRST_BACKOFF_S = 2.0
STOP_AFTER_UNAVAILABLE = 3  # patients in a row; then the gateway is down, not the patients bad


class IncompatibleResults(Exception):
    """--out holds results with other columns (an older vocabulary): appending would corrupt it."""


class PatientProblem(ValueError):
    """A patient folder that must not be sent (its text is the row's error)."""


class Result(NamedTuple):
    """One patient's outcome: a report, or an error text; ``unavailable`` when the gateway could not be
    reached or still refused (429/503) after every retry, which says nothing about the patient."""
    report: dict | None
    error: str | None
    unavailable: bool = False


class Limits(NamedTuple):
    max_images: int
    max_image_bytes: int
    retries: int


# --- the results file ------------------------------------------------------------------------------

def _check_header(out: Path) -> None:
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


def _cut_torn_row(out: Path) -> str | None:
    """Cut --out back to its last newline when a run died while writing a row (power cut, full disk);
    appending onto the torn row would merge two patients into one bad row, and counting it would skip
    a patient never fully recorded. Returns a warning, or None when there was nothing to cut."""
    if not out.exists():
        return None
    data = out.read_bytes()
    if not data or data.endswith(b"\n") or not _is_our_file(data):
        return None  # complete, or not ours (_check_header refuses it untouched)
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


def _done_patients(out: Path) -> set[str]:
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


def _safe_cell(value):
    """A value a spreadsheet shows as text: a string starting with = + - @ TAB or CR gets a leading
    quote (Excel would run it as a formula), and line breaks become spaces so that every row is one
    line (a torn row is then cut exactly at the last newline). Numbers are left as they are."""
    if not isinstance(value, str):
        return value
    if value.startswith(FORMULA_PREFIXES):
        value = "'" + value
    return value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def _write_row(out, writer: csv.DictWriter, row: dict) -> None:
    """One row on disk before the next patient: flushed and synced, so a power cut loses at most it."""
    writer.writerow({key: _safe_cell(value) for key, value in row.items()})
    out.flush()
    os.fsync(out.fileno())


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


# --- patient folders -------------------------------------------------------------------------------

def _is_hidden(path: Path) -> bool:
    """Not data: hidden files, NAS and OS metadata (AppleDouble "._x.jpg", "@eaDir", recycle bins)."""
    return path.name.startswith(HIDDEN_PREFIXES) or path.name.lower() in SYSTEM_FOLDERS


def _patient_folders(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not _is_hidden(p))


def _check_patient_id(name: str) -> None:
    """The gateway's own rule, checked before any image is read: a folder such as "PAT#2" would
    otherwise be posted as another patient ("PAT") or answered with a 404/422 after a full upload."""
    if not PATIENT_ID.fullmatch(name):
        raise PatientProblem(f"not a valid patient id: {name!r} (1-64 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit); rename the folder")


def _patient_images(folder: Path) -> list[Path]:
    """The images directly in ``folder``. A visible subfolder is refused: its images would be left out
    and the differential reported from a fraction of the patient's cells."""
    entries = [p for p in folder.iterdir() if not _is_hidden(p)]
    subfolders = sorted(p.name for p in entries if p.is_dir())
    if subfolders:
        raise PatientProblem(f"subfolder(s) {', '.join(subfolders[:5])} in the patient folder: put a patient's "
                             "images directly in its folder")
    return sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES)


def _check_limits(images: list[Path], limits: Limits) -> None:
    """Refuse what the gateway would refuse with 413, before uploading it on every rerun."""
    if len(images) > limits.max_images:
        raise PatientProblem(f"{len(images)} images, more than --max-images {limits.max_images} "
                             "(the gateway's MAX_IMAGES)")
    sizes = {p: _size(p) for p in images}
    too_big = [p for p in images if sizes[p] > limits.max_image_bytes]
    if too_big:
        mib = limits.max_image_bytes / 2 ** 20
        named = ", ".join(f"{p.name} ({sizes[p] / 2 ** 20:.1f} MiB)" for p in too_big[:5])
        raise PatientProblem(f"image(s) over --max-image-mib {mib:g} (the gateway's GATEWAY_MAX_IMAGE_BYTES): {named}")


def _unreadable(path: Path, exc: OSError) -> PatientProblem:
    return PatientProblem(f"cannot read {path.name}: {exc.strerror or type(exc).__name__}"
                          + (" (a broken link?)" if path.is_symlink() else ""))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def _read_images(images: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    files = []
    for path in images:
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        files.append(("images", (path.name, content, "application/octet-stream")))
    return files


# --- the gateway -----------------------------------------------------------------------------------

def classify_path(patient_id: str) -> str:
    return f"/patients/{urllib.parse.quote(patient_id, safe='')}/classify"


def _retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds (a number or an HTTP date); None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def _retry_delay_s(response: httpx.Response | None, attempt: int) -> float:
    """The gateway's Retry-After when it gives one, else 2, 4, 8 ... s; at most a minute either way."""
    given = _retry_after_s(response) if response is not None else None
    delay = given if given is not None else FIRST_BACKOFF_S * 2 ** attempt
    return min(delay, RETRY_AFTER_CAP_S)


def _wait(seconds: float) -> None:
    time.sleep(seconds)


def _error_detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text[:200]))
    except (ValueError, AttributeError):
        return response.text[:200]


def _answer(response: httpx.Response) -> Result:
    """A 200's report, or the gateway's error as the row's text."""
    if response.status_code != 200:
        return Result(None, f"HTTP {response.status_code}: {_error_detail(response)}")
    try:
        report = response.json()
    except ValueError:
        return Result(None, f"HTTP 200 but the answer is not JSON: {response.text[:100]!r}")
    if not isinstance(report, dict):
        return Result(None, "HTTP 200 but the answer is not a report (not a JSON object)")
    return Result(report, None)


def _post(client: httpx.Client, patient_id: str, files: list, retries: int) -> Result:
    """Post one patient, retrying connection errors and 429/503 (a busy or restarting gateway) up to
    ``retries`` times; any other answer is final."""
    for attempt in range(retries + 1):
        response = None
        try:
            response = client.post(classify_path(patient_id), files=files)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
                return Result(None, f"the gateway did not answer in time ({type(exc).__name__}; see --timeout)")
            failure = Result(None, f"gateway unreachable: {type(exc).__name__} (after {attempt + 1} tries)", True)
        else:
            if response.status_code not in RETRY_STATUSES:
                return _answer(response)
            failure = Result(None, f"HTTP {response.status_code}: {_error_detail(response)} "
                                   f"(after {attempt + 1} tries)", True)
        if attempt < retries:
            _wait(_retry_delay_s(response, attempt))
    return failure


def classify_patient(client: httpx.Client, folder: Path, limits: Limits) -> Result:
    """Check, read and send one patient folder; a folder that must not be sent raises PatientProblem."""
    _check_patient_id(folder.name)
    images = _patient_images(folder)
    if not images:
        return Result(None, "no images in folder")
    _check_limits(images, limits)
    return _post(client, folder.name, _read_images(images), limits.retries)


def _describe(exc: Exception) -> str:
    if isinstance(exc, PatientProblem):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot read {exc.filename or 'the folder'}: {exc.strerror or type(exc).__name__}"
    return f"the gateway's answer is not a report this version reads ({type(exc).__name__}: {exc})"


def _patient_row(client: httpx.Client, folder: Path, limits: Limits) -> tuple[dict, Result]:
    """One patient's row whatever happens to it: an unreadable file or folder, or an answer this
    version cannot read, is that patient's error row and the batch goes on."""
    try:
        result = classify_patient(client, folder, limits)
        return _row(folder.name, result.report, result.error), result
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        result = Result(None, _describe(exc))
        return _row(folder.name, None, result.error), result


def _progress(done: int, total: int, patient: str, started: float) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    rate = done / max(time.monotonic() - started, 1e-9)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} patients, {rate:.2f}/s  {patient[:30]:<30}")
    sys.stderr.flush()


# --- main ------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aml-classify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--out", type=Path, default=Path("aml_results.csv"),
                        help="results CSV, appended to; a patient's last row is its result")
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--api-key", default=os.environ.get("AML_API_KEY"),
                        help="API key with the classify scope (default: $AML_API_KEY)")
    parser.add_argument("--retries", type=int, default=3,
                        help="retries per patient on 429, 503 and connection errors (default: 3)")
    parser.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES,
                        help=f"images per patient, as the gateway's MAX_IMAGES (default: {DEFAULT_MAX_IMAGES})")
    parser.add_argument("--max-image-mib", type=float, default=DEFAULT_MAX_IMAGE_MIB,
                        help="MiB per image, as the gateway's GATEWAY_MAX_IMAGE_BYTES "
                             f"(default: {DEFAULT_MAX_IMAGE_MIB})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        parser.error(f"{args.directory} is not a directory")
    if args.retries < 0 or args.max_images < 1 or args.max_image_mib <= 0:
        parser.error("--retries must be 0 or more, --max-images and --max-image-mib more than 0")
    if not args.gateway.startswith(("http://", "https://")):
        parser.error(f"--gateway must be an http:// or https:// URL, not {args.gateway!r}")
    if not args.api_key:
        parser.error("an API key is needed: --api-key or AML_API_KEY")
    try:
        patients = _patient_folders(args.directory)
    except OSError as exc:
        parser.error(f"cannot list {args.directory}: {exc.strerror or exc}")
    warning = _cut_torn_row(args.out)
    if warning:
        print(warning, file=sys.stderr)
    try:
        _check_header(args.out)
    except IncompatibleResults as exc:
        parser.error(str(exc))
    done = _done_patients(args.out)
    todo = [p for p in patients if p.name not in done]
    print(f"{len(patients)} patients, {len(patients) - len(todo)} already in {args.out}, {len(todo)} to do",
          file=sys.stderr)
    limits = Limits(args.max_images, int(args.max_image_mib * 2 ** 20), args.retries)
    return _run(args, todo, limits)


def _run(args: argparse.Namespace, todo: list[Path], limits: Limits) -> int:
    """Send each patient and append its row; stop once the gateway has been unavailable for
    STOP_AFTER_UNAVAILABLE patients in a row, rather than turning the rest of the batch into error rows."""
    new_file = not args.out.exists() or args.out.stat().st_size == 0  # empty: killed before the first row
    failures = unavailable_in_row = 0
    stopped = False
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {args.api_key}"}
    with (httpx.Client(base_url=args.gateway, timeout=args.timeout, headers=headers) as client,
          open(args.out, "a", newline="", encoding="utf-8") as out):
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()  # on disk now: a kill during the first patient must not leave a file without it
            out.flush()
            os.fsync(out.fileno())
        for index, folder in enumerate(todo):
            _progress(index, len(todo), folder.name, started)
            row, result = _patient_row(client, folder, limits)
            _write_row(out, writer, row)
            failures += result.report is None
            unavailable_in_row = unavailable_in_row + 1 if result.unavailable else 0
            if unavailable_in_row >= STOP_AFTER_UNAVAILABLE:
                stopped = True
                break
        else:
            _progress(len(todo), len(todo), "", started)
    sys.stderr.write("\n")
    if stopped:
        print(f"stopped: the gateway at {args.gateway} was unreachable or refusing for {unavailable_in_row} "
              f"patients in a row; the rows so far are in {args.out}; rerun when it is back to do the rest",
              file=sys.stderr)
    elif failures:
        print(f"{failures} patient(s) failed; rerun to retry them", file=sys.stderr)
    return 1 if failures or stopped else 0


if __name__ == "__main__":
    sys.exit(main())
