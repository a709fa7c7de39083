"""aml-classify: batch re-analysis through the gateway.

    AML_API_KEY=... aml-classify DIR [--out results.csv] [--gateway http://127.0.0.1:8000]

DIR holds one folder of images per patient (the folder name is the patient id; put a patient's
images directly in its folder: a patient folder with a subfolder is refused rather than reported
from part of its cells). Hidden entries (names starting with "." or "@", such as macOS "._x.jpg" or
Synology "@eaDir") and system folders are skipped. Each patient is sent to the gateway and one CSV
row is appended to --out (counts, differential, prediction, probabilities, APL probability and alert,
empty where the services have no APL model);
a patient that cannot be read, is over --max-images or --max-image-mib, has an image that changes size
while it is sent, or is refused by the gateway gets an error row and the batch goes on. Images are read
from disk as they are sent, one at a time.

The file is append-only: a rerun skips the patients whose last row says "ok" and appends a new row
for every other one, so a patient can have several rows and A PATIENT'S LAST ROW IS ITS RESULT. Each
row is flushed and synced to disk as soon as written; a last row cut off by a power cut or a full disk
is removed at the next start and that patient redone. 429 and 503 answers and connection errors are
retried (--retries, waiting Retry-After or a growing backoff); after 3 patients in a row fail with the
gateway unreachable or still refusing, the run stops (exit 1) so a rerun can finish the batch later.
A patient folder whose images change while it is sent (added, removed or rewritten: still being copied in)
gets an error row, so a rerun sends it again whole. A gateway on this machine (127.0.0.1, localhost, ::1) is reached directly, never
through HTTP_PROXY. Progress goes to stderr. Exit status: 0 all ok, 1 some patient failed or the run
stopped, 2 usage (DIR holding images but no patient folders included), 130 interrupted (Ctrl-C; a rerun
resumes).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import httpx

from gateway.batch.folders import (DEFAULT_MAX_IMAGE_MIB, DEFAULT_MAX_IMAGES, Limits, PatientProblem, check_limits,
                                   check_patient_id, patient_folders, patient_images)
from gateway.batch.posting import Result, post
from gateway.batch.results_file import (COLUMNS, IncompatibleResults, check_header, cut_torn_row, done_patients,
                                        report_row, write_header, write_row)
from gateway.batch.upload_parts import close_parts, image_parts

STOP_AFTER_UNAVAILABLE = 3  # patients in a row; then the gateway is down, not the patients bad
INTERRUPTED = 130  # Ctrl-C, as a shell reports it


def classify_patient(client: httpx.Client, folder: Path, limits: Limits) -> Result:
    """Check and send one patient folder, its images read from disk as they are sent; a folder that must
    not be sent, or an image that cannot be read or changes size on the way, raises PatientProblem. A folder
    whose images changed while it was sent (one still being copied in) gives an error, never an ``ok`` row."""
    check_patient_id(folder.name)
    images = patient_images(folder)
    if not images:
        return Result(None, "no images in folder")
    sizes = check_limits(images, limits)
    listed = _stamps(images)
    parts = image_parts(sizes)
    try:
        result = post(client, folder.name, parts, limits.retries)
    finally:
        close_parts(parts)
    changed = folder_changes(folder, listed)
    if result.report is not None and changed:
        report = result.report.get("report_id") or "?"
        return Result(None, f"the folder changed while it was sent ({changed}): report {report} is of the "
                            f"{len(sizes)} images present then, not of the patient; rerun once it is copied in")
    return result


def _stamps(images: list[Path]) -> dict[Path, tuple[int, int]]:
    """Each image's size and modification time (ns): a copy that sets the full size first and fills the file
    in later (common on Windows shares) changes only the time."""
    return {p: (stat.st_size, stat.st_mtime_ns) for p in images for stat in (p.stat(),)}


def folder_changes(folder: Path, listed: dict[Path, tuple[int, int]]) -> str:
    """What changed in ``folder`` since its images were ``listed`` (``_stamps``; "" when nothing did)."""
    try:
        now = _stamps(patient_images(folder))
    except (OSError, PatientProblem) as exc:
        return f"it cannot be listed again: {exc}"
    added, removed = sorted(set(now) - set(listed)), sorted(set(listed) - set(now))
    rewritten = sorted(p for p in set(now) & set(listed) if now[p] != listed[p])
    said = [f"{len(paths)} image(s) {what}, e.g. {paths[0].name}"
            for paths, what in ((added, "added"), (removed, "removed"), (rewritten, "rewritten")) if paths]
    return "; ".join(said)


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
        return report_row(folder.name, result.report, result.error), result
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        result = Result(None, _describe(exc))
        return report_row(folder.name, None, result.error), result


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
                             f"(default: {DEFAULT_MAX_IMAGE_MIB:g})")
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
    if not args.timeout > 0:
        parser.error("--timeout must be more than 0 seconds")
    if not args.api_key:
        parser.error("an API key is needed: --api-key or AML_API_KEY")
    if args.out.is_dir() or not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: " + ("is a directory" if args.out.is_dir() else
                                             f"its folder {args.out.parent} does not exist"))
    try:
        patients = patient_folders(args.directory)
        if not patients and patient_images(args.directory):
            parser.error(f"{args.directory} holds images but no patient folders: DIR must hold one folder of "
                         f"images per patient (for one patient: its folder's parent, or a folder holding it)")
    except (OSError, PatientProblem) as exc:
        parser.error(f"cannot list {args.directory}: {getattr(exc, 'strerror', None) or exc}")
    warning = cut_torn_row(args.out)
    if warning:
        print(warning, file=sys.stderr)
    try:
        check_header(args.out)
    except IncompatibleResults as exc:
        parser.error(str(exc))
    done = done_patients(args.out)
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
    # a gateway on this machine is never reached through the environment's proxy (HTTP_PROXY): the images and
    # the key would go to the proxy, as the launcher and the gateway's own calls avoid too. A transport of our
    # own leaves the proxy variables out and still reads SSL_CERT_FILE / SSL_CERT_DIR (trust_env=False would not)
    local = httpx.URL(args.gateway).host in ("127.0.0.1", "localhost", "::1")
    transport = httpx.HTTPTransport() if local else None
    with (httpx.Client(base_url=args.gateway, timeout=args.timeout, headers=headers, transport=transport) as client,
          open(args.out, "a", newline="", encoding="utf-8") as out):
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        if new_file:
            write_header(out, writer)
        try:
            for index, folder in enumerate(todo):
                _progress(index, len(todo), folder.name, started)
                row, result = _patient_row(client, folder, limits)
                write_row(out, writer, row)
                failures += result.report is None
                unavailable_in_row = unavailable_in_row + 1 if result.unavailable else 0
                if unavailable_in_row >= STOP_AFTER_UNAVAILABLE:
                    stopped = True
                    break
            else:
                _progress(len(todo), len(todo), "", started)
        except KeyboardInterrupt:
            print(f"\ninterrupted: the rows so far are in {args.out}; rerun the same command to do the rest "
                  "(the interrupted patient is redone)", file=sys.stderr)
            return INTERRUPTED
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
