"""training.reviewed_dataset: a lab's reviewed cells (aml-export-reviewed DIR) as extra labelled data."""

from __future__ import annotations

import pytest

from gateway.thumbnails import make_thumbnail
from tests.helpers.images import fullsize_images
from training.reviewed_dataset import list_cells, split_of


def export_like(root, n_per_label: int = 6):
    """DIR/<label>/<sha256>.jpg as aml-export-reviewed writes them (thumbnails), plus folders to ignore."""
    import hashlib

    written = 0
    for label, path in fullsize_images():
        folder = root / label
        if folder.is_dir() and len(list(folder.iterdir())) >= n_per_label:
            continue
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{sha}.jpg").write_bytes(make_thumbnail(sha, data).jpeg)
        written += 1
    (root / "unclassified").mkdir()
    (root / "unclassified" / ("0" * 64 + ".jpg")).write_bytes(b"x")
    (root / "cells.csv").write_text("sha256,label\n")
    return written


def test_list_and_split(tmp_path):
    written = export_like(tmp_path)
    cells = list_cells(tmp_path)
    assert len(cells) == written, "unclassified and non-label folders are left out"
    assert all(path.parent.name == label for path, label in cells)
    splits = [split_of(path.name) for path, _ in cells]
    assert set(splits) <= {"train", "val", "test"} and splits.count("train") > splits.count("test")
    with pytest.raises(FileNotFoundError):
        list_cells(tmp_path / "missing")


def test_split_dataset_arrays(tmp_path):
    pytest.importorskip("sklearn")  # training.pbc_dataset needs the training extra
    from shared.preprocessing import IMAGE_SIZE
    from training.reviewed_dataset import split_dataset

    written = export_like(tmp_path, n_per_label=3)
    train, val, test = split_dataset(tmp_path, cache_dir=None)
    assert len(train) + len(val) + len(test) == written
    assert train.images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3) and train.source == "reviewed"
    assert all(s.images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3) for s in (train, val, test))


def test_train_cells_takes_extra_labelled(tmp_path):
    pytest.importorskip("sklearn")
    from training.train_cells import load_data, parse_args
    from tests.helpers.images import DATA_DIR

    export_like(tmp_path / "reviewed", n_per_label=2)
    args = parse_args(["--extra-labelled", str(tmp_path / "reviewed"), "--no-deepapl", "--per-class-limit", "12",
                       "--cache-dir", "", "--data-dir", str(DATA_DIR / "pbc")])
    sources, edits = load_data(args)
    assert set(sources) == {"pbc", "reviewed"}
    assert edits == {"excluded_training_cells": None, "second_reading": None}
    assert sum(len(split) for split in sources["reviewed"]) == len(list_cells(tmp_path / "reviewed"))


def test_cells_of_one_report_share_a_split(tmp_path):
    from training.reviewed_dataset import report_of_cells, split_key

    export_like(tmp_path, n_per_label=4)
    cells = list_cells(tmp_path)
    rows = [f"{path.stem},{label},,report-{i % 3},Dr A,2026-12-07,m,{label}/{path.name}"
            for i, (path, label) in enumerate(cells)]
    (tmp_path / "cells.csv").write_text(
        "sha256,label,model_label,report_id,reviewed_by,reviewed_at,cell_model,file\n" + "\n".join(rows) + "\n")
    reports = report_of_cells(tmp_path)
    assert len(reports) == len(cells)
    by_report: dict[str, set[str]] = {}
    for path, _ in cells:
        by_report.setdefault(reports[path.stem], set()).add(split_of(split_key(path, reports)))
    assert len(by_report) == 3 and all(len(splits) == 1 for splits in by_report.values()), by_report
    assert split_key(tmp_path / "x" / "abc.jpg", reports) == "abc.jpg", "a cell without a report: its file name"


def test_train_cells_refuses_an_export_too_small_to_train_on_before_the_fit(tmp_path):
    """Whole reports go to one split: a small export can leave its training split empty (the appearance fit then
    failed at the end of the run) or with one cell (NaN thresholds in the card, the out-of-domain warning off)."""
    pytest.importorskip("sklearn")
    from training.reviewed_dataset import MIN_TRAINING_CELLS
    from training.train_cells import load_data, parse_args
    from tests.helpers.images import DATA_DIR

    export_like(tmp_path / "reviewed", n_per_label=1)
    cells = list_cells(tmp_path / "reviewed")
    assert sum(split_of(path.name) == "train" for path, _ in cells) < MIN_TRAINING_CELLS
    args = parse_args(["--extra-labelled", str(tmp_path / "reviewed"), "--no-deepapl", "--per-class-limit", "12",
                       "--cache-dir", "", "--data-dir", str(DATA_DIR / "pbc")])
    with pytest.raises(SystemExit, match="fall in its training split"):
        load_data(args)
