"""Our held-out cells through a running cell service, over HTTP, the way the hidden sets are measured.

    python -m training.service_check [--url http://127.0.0.1:8001] [--split test] [--batch 32]
                                     [--as-originals] [--in-process] [--out FILE.md]

Every cell of the PBC and DeepAPL split (by patient for DeepAPL, as in training) is posted as its
stored file (``--as-originals``: scaled to the 360x363 of the CellaVision originals the hidden sets
hold and saved as JPEG quality 95, so the service's DCT-domain decoding runs as it will for them) to
``POST /v1/classify`` (``INTERNAL_TOKEN`` from the environment when the service asks
for one), and the labels the service answers are scored as the model card scores them: accuracy
over the 8 PBC types + blast, blasts flagged, normal cells called blast (``training.metrics``),
with ``unclassified`` and images the service refused counted wrong. ``--in-process`` also runs the
same model file (the variant the service reports) in this process on the same files and counts the
cells whose labels differ: the check that the served path (upload, decoding, micro-batching, the
``unclassified`` rule) gives the figures the card and the README report. The exit status is 1 when
any label differs or any image was refused.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from shared.internal_auth import HEADER as INTERNAL_TOKEN_HEADER
from shared.vocabulary import CELL_LABELS, CELL_TYPES
from training import deepapl_dataset, pbc_dataset
from training.metrics import apply_unclassified_rule, classification_report, leukaemia_counts, leukaemia_summary

REPO_ROOT = Path(__file__).resolve().parents[1]
REFUSED = -1  # an image the service answered with an error instead of a label
ORIGINAL_SIZE = (360, 363)  # the CellaVision originals of both hospitals (width, height)


@dataclass
class ServiceAnswers:
    labels: np.ndarray  # index over CELL_TYPES, len(CELL_TYPES) for unclassified, REFUSED for an error
    errors: list[str]
    model: dict  # the service's CellModelInfo


def label_index(label: str) -> int:
    """The index ``apply_unclassified_rule`` gives a label: its place in the vocabulary's ``CELL_LABELS``."""
    return CELL_LABELS.index(label)


def as_original_jpeg(path: str | Path) -> bytes:
    """A stored copy as the service receives an original: scaled to ``ORIGINAL_SIZE`` (bicubic), JPEG quality 95."""
    with Image.open(path) as image:
        large = image.convert("RGB").resize(ORIGINAL_SIZE, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    large.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def classify_over_http(client: httpx.Client, url: str, paths: list[str], payloads: list[bytes], batch: int,
                       what: str) -> ServiceAnswers:
    """Post ``payloads`` (the files of ``paths``) in requests of ``batch`` images; labels in their order."""
    labels, errors, model = [], [], {}
    started = time.monotonic()
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        files = [("images", (f"{i}-{Path(p).name}", payloads[i], "application/octet-stream"))
                 for i, p in enumerate(chunk, start)]
        response = client.post(f"{url}/v1/classify", files=files)
        if response.status_code != 200:
            raise SystemExit(f"{url}/v1/classify answered {response.status_code}: {response.text[:500]}")
        answer = response.json()
        model = answer["model"]
        for path, result in zip(chunk, answer["results"]):
            if "label" in result:
                labels.append(label_index(result["label"]))
            else:
                labels.append(REFUSED)
                errors.append(f"{path}: {result['error']}")
        done = start + len(chunk)
        if done == len(paths) or (done // batch) % 10 == 0:
            print(f"  {what}: {done} of {len(paths)} cells ({done / max(time.monotonic() - started, 1e-9):.0f}/s)",
                  file=sys.stderr, flush=True)
    return ServiceAnswers(np.asarray(labels, np.int64), errors, model)


def in_process_labels(model_dir: Path, variant: str, images: np.ndarray) -> np.ndarray:
    """The same model file and ``unclassified`` rule in this process, on the arrays training evaluates."""
    from services.cell_classifier.inference import CellModel

    model = CellModel(model_dir, "cpu", variant=variant)
    probabilities = model.predict(images)
    return apply_unclassified_rule(probabilities, model.threshold, len(CELL_TYPES), model.class_minimum)


def score(labels: np.ndarray, answered: np.ndarray) -> tuple[dict, dict]:
    """(classification report, leukaemia summary) with refused images counted as unclassified (wrong)."""
    predicted = np.where(answered == REFUSED, len(CELL_TYPES), answered)
    return (classification_report(labels, predicted, list(CELL_TYPES)), leukaemia_summary(labels, predicted))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8001", help="the running cell service")
    parser.add_argument("--split", choices=("validation", "test"), default="test")
    parser.add_argument("--batch", type=int, default=32, help="images per request")
    parser.add_argument("--as-originals", action="store_true",
                        help="post each copy scaled to 360x363 as JPEG quality 95, as the originals arrive")
    parser.add_argument("--in-process", action="store_true",
                        help="also label the same files in this process with the model file the service runs and "
                             "count the cells whose labels differ")
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "services" / "cell_classifier" / "model",
                        help="where --in-process finds the model (the service's model directory)")
    parser.add_argument("--per-class-limit", type=int, default=None, help="a few cells per class (smoke runs)")
    parser.add_argument("--cache-dir", default=str(REPO_ROOT / ".cache"))
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be at least 1")

    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    headers = {INTERNAL_TOKEN_HEADER: os.environ["INTERNAL_TOKEN"]} if os.environ.get("INTERNAL_TOKEN") else {}
    index = 1 if args.split == "validation" else 2
    rows, failed = [], False
    with httpx.Client(headers=headers, timeout=args.timeout) as client:
        for source, dataset in (("PBC", pbc_dataset), ("DeepAPL", deepapl_dataset)):
            split = dataset.split_dataset(dataset.data_dir(), cache_dir, args.per_class_limit)[index]
            payloads = [as_original_jpeg(p) if args.as_originals else Path(p).read_bytes() for p in split.paths]
            answers = classify_over_http(client, args.url, split.paths, payloads, args.batch, source)
            report, summary = score(split.labels, answers.labels)
            row = {"source": source, "n": len(split.paths), "accuracy_11": report["accuracy"],
                   "counts": leukaemia_counts(summary), "accuracy_9": summary["accuracy_9"],
                   "refused": len(answers.errors), "model": answers.model}
            for error in answers.errors[:10]:
                print(f"  refused: {error}", file=sys.stderr)
            if answers.errors:
                failed = True
            if args.in_process:
                from services.cell_classifier.decoding import decode_image

                images = split.images if not args.as_originals else np.stack(
                    [decode_image(data, 10**8) for data in payloads])  # the arrays the card's originals row uses
                offline = in_process_labels(args.model_dir, answers.model["variant"], images)
                differ = np.flatnonzero(offline != answers.labels)
                row["differ"] = len(differ)
                for i in differ[:10]:
                    print(f"  differs: {split.paths[i]}: service {answers.labels[i]}, in process {offline[i]}",
                          file=sys.stderr)
                failed |= len(differ) > 0
            rows.append(row)
    table = markdown(rows, args.split, args.url, args.as_originals)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 1 if failed else 0


def markdown(rows: list[dict], split: str, url: str, as_originals: bool = False) -> str:
    model = rows[0]["model"] if rows else {}
    posted = ("every stored copy scaled to 360x363 and posted as JPEG quality 95" if as_originals
              else "every stored file posted")
    lines = [f"Cell service at {url}: `{model.get('name')}` {model.get('version')}, {model.get('variant')} on "
             f"{model.get('provider')} (sha256 {str(model.get('sha256'))[:12]}...), our {split} splits, {posted} "
             "to /v1/classify", "",
             "| source | cells | accuracy (8 types + blast) | accuracy (11 types) | counts | refused "
             "| labels differing from in-process |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        differ = row.get("differ")
        lines.append(f"| {row['source']} | {row['n']} | {row['accuracy_9']:.3f} | {row['accuracy_11']:.3f} | "
                     f"{row['counts']} | {row['refused']} | {'-' if differ is None else differ} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
