"""Cells a lab's haematologists reviewed (``aml-export-reviewed DIR``) as extra labelled data.

DIR holds ``<label>/<sha256>.jpg`` (thumbnails, at most 144x144 px: upscaled to the network
input by the same preprocessing as every image) and optionally ``cells.csv``. Labels are the
vocabulary's cell types; ``unclassified`` cells (a reviewer could not place them either) and
unknown folders are left out. The split is by a hash of the cell's ``split_group`` in ``cells.csv`` (the
id of its report's first version, shared by every later version and by reports that share cells; exports
made before that column: ``report_id``; the file name where a cell has none), 80 / 10 / 10 % train /
validation / test: one report's cells never sit on both sides, and the split is stable however many cells
are added or amended later, so a cell never moves from test to train.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from shared.appearance import FEATURE_NAMES as APPEARANCE_FEATURES
from shared.vocabulary import CELL_TYPES

SUFFIXES = {".jpg", ".jpeg", ".png"}
SPLITS = ("train", "val", "test")
# the fewest training cells a run takes from an export: the appearance reference fits a covariance over the
# appearance features of each source's training cells, which needs more cells than features
MIN_TRAINING_CELLS = len(APPEARANCE_FEATURES) + 1


def split_of(name: str) -> str:
    """train, val or test, from the hash of ``name`` (a report id, or a cell's file name)."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def report_of_cells(root: Path) -> dict[str, str]:
    """sha256 -> the (first listed) group the cell is split by, from ``root/cells.csv``: its ``split_group``, or
    its ``report_id`` in an export made before that column (empty without a listing)."""
    listing = Path(root) / "cells.csv"
    if not listing.is_file():
        return {}
    with listing.open(newline="") as handle:
        reports: dict[str, str] = {}
        for row in csv.DictReader(handle):
            group = row.get("split_group") or row.get("report_id")
            if row.get("sha256") and group:
                reports.setdefault(row["sha256"], group)
    return reports


def split_key(path: Path, reports: dict[str, str]) -> str:
    """What a cell's split is drawn from: its group, else its file name."""
    return reports.get(path.stem, path.name)


def list_cells(root: Path) -> list[tuple[Path, str]]:
    """(path, label) of every usable image under ``root/<label>/``, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no reviewed-cells directory at {root}")
    cells = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in CELL_TYPES:
            continue
        cells += [(path, folder.name) for path in sorted(folder.iterdir()) if path.suffix.lower() in SUFFIXES]
    return cells


def split_dataset(root: Path, cache_dir: Path | None = None, per_class_limit: int | None = None):
    """(train, val, test) ``training.pbc_dataset.Split``s of source ``reviewed``."""
    from shared.preprocessing import IMAGE_SIZE
    from training.pbc_dataset import Split, load_arrays

    cells = list_cells(root)
    if per_class_limit is not None:
        taken: dict[str, int] = {}
        kept = []
        for path, label in cells:
            if taken.get(label, 0) < per_class_limit:
                taken[label] = taken.get(label, 0) + 1
                kept.append((path, label))
        cells = kept
    reports = report_of_cells(root)
    out = []
    for name in SPLITS:
        chosen = [(p, label) for p, label in cells if split_of(split_key(p, reports)) == name]
        paths = [p for p, _ in chosen]
        images = (load_arrays(paths, cache_dir, name="reviewed") if paths
                  else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
        labels = np.asarray([CELL_TYPES.index(label) for _, label in chosen], dtype=np.int64)
        out.append(Split(images, labels, [str(p) for p in paths], "reviewed"))
    return out[0], out[1], out[2]
