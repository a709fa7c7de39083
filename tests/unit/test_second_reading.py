"""training.second_reading: the worklist of training cells the served network and their label disagree on, and
a reader's second reading taken back into training (train_cells --second-reading)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")  # training.pbc_dataset (the Split) needs the training extra

from shared.vocabulary import CELL_TYPES
from training.pbc_dataset import Split
from training.second_reading import COLUMNS, apply, discordant, read_readings

NEUTROPHIL, LYMPHOCYTE, BLAST = (CELL_TYPES.index(t) for t in ("neutrophil", "lymphocyte", "blast"))


def _split(paths: list[str], labels: list[int], source: str) -> Split:
    images = np.arange(len(paths), dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    return Split(images, np.asarray(labels, dtype=np.int64), paths, source)


@pytest.fixture()
def sources():
    root = "/data/shared/data/deepapl_discovery/images"
    train = [f"{root}/Patient_00/000{i}.jpg" for i in range(4)]
    return {"deepapl": (_split(train, [LYMPHOCYTE, LYMPHOCYTE, BLAST, NEUTROPHIL], "deepapl"),
                        _split([f"{root}/Patient_01/0000.jpg"], [BLAST], "deepapl"),
                        _split([f"{root}/Patient_02/0000.jpg"], [BLAST], "deepapl"))}


def _worklist(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """rows: (image below the data folder, stored label, second reading)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for image, stored, reading in rows:
            writer.writerow({"image": image, "source": "deepapl", "stored_label": stored,
                             "second_reading": reading})
    return path


def test_discordant_lists_confident_disagreements_least_likely_label_first():
    probabilities = np.array([[0.95, 0.05, 0.0],   # label 0, agrees: not listed
                              [0.92, 0.08, 0.0],   # label 1, confident disagreement, label at 0.08
                              [0.60, 0.40, 0.0],   # label 1, disagreement under the minimum: not listed
                              [0.01, 0.0, 0.99],   # label 0, confident disagreement, label at 0.01
                              [0.0, 0.97, 0.03]])  # label 2, label at 0.03
    labels = np.array([0, 1, 1, 0, 2])
    assert discordant(probabilities, labels, 0.9).tolist() == [3, 4, 1]
    assert discordant(probabilities, labels, 0.5).tolist() == [3, 4, 1, 2]
    assert discordant(probabilities, labels, 1.0).tolist() == []


def test_readings_relabel_confirm_and_leave_out_training_cells(tmp_path, sources):
    worklist = _worklist(tmp_path / "worklist.csv", [
        ("deepapl_discovery/images/Patient_00/0000.jpg", "lymphocyte", " Blast "),  # relabelled
        ("deepapl_discovery/images/Patient_00/0001.jpg", "lymphocyte", ""),  # not read
        ("deepapl_discovery/images/Patient_00/0002.jpg", "blast", "blast"),  # confirmed
        ("deepapl_discovery/images/Patient_00/0003.jpg", "neutrophil", "exclude")])  # left out
    changed, record = apply(sources, worklist)
    train = changed["deepapl"][0]
    assert [p.rsplit("/", 1)[1] for p in train.paths] == ["0000.jpg", "0001.jpg", "0002.jpg"]
    assert train.labels.tolist() == [BLAST, LYMPHOCYTE, BLAST]
    assert np.array_equal(train.images, sources["deepapl"][0].images[:3])  # images stay with their paths
    assert sources["deepapl"][0].labels.tolist() == [LYMPHOCYTE, LYMPHOCYTE, BLAST, NEUTROPHIL]  # input untouched
    assert changed["deepapl"][1] is sources["deepapl"][1] and changed["deepapl"][2] is sources["deepapl"][2]
    assert (record["read"], record["confirmed"], record["relabelled"], record["left_out"]) == (3, 1, 1, 1)
    assert record["by_source"] == {"deepapl": {"confirmed": 1, "relabelled": 1, "left_out": 1}}
    assert record["relabelled_as"] == {"lymphocyte -> blast": 1}
    assert record["list"] == "worklist.csv" and len(record["sha256"]) == 64


@pytest.mark.parametrize("rows, message", [
    ([("deepapl_discovery/images/Patient_01/0000.jpg", "blast", "lymphocyte")], "line 2: .* deepapl validation"),
    ([("deepapl_discovery/images/Patient_02/0000.jpg", "blast", "exclude")], "deepapl test cell"),
    ([("deepapl_discovery/images/Patient_00/0009.jpg", "blast", "exclude")], "no image of any split"),
    ([("deepapl_discovery/images/Patient_00/0000.jpg", "monocyte", "blast")], "labelled lymphocyte in the data"),
    ([("deepapl_discovery/images/Patient_00/0000.jpg", "lymphocyte", "myeloblast")], "neither a cell type"),
    ([("deepapl_discovery/images/Patient_00/0000.jpg", "lymphocyte", "unclassified")], "neither a cell type"),
    ([("deepapl_discovery/images/Patient_00/0000.jpg", "lymphocyte", "blast"),
      ("deepapl_discovery/images/Patient_00/0000.jpg", "lymphocyte", "exclude")], "line 3: .* read already on line 2"),
])
def test_a_reading_that_cannot_be_applied_stops_with_its_line(tmp_path, sources, rows, message):
    with pytest.raises(ValueError, match=message):
        apply(sources, _worklist(tmp_path / "worklist.csv", rows))


def test_a_worklist_saved_by_a_spreadsheet_with_a_byte_order_mark_is_read(tmp_path, sources):
    worklist = _worklist(tmp_path / "worklist.csv", [
        ("deepapl_discovery/images/Patient_00/0000.jpg", "lymphocyte", "blast")])
    worklist.write_bytes(b"\xef\xbb\xbf" + worklist.read_bytes().replace(b"\r\n", b"\n"))
    assert [(r.row, r.image, r.reading) for r in read_readings(worklist)] == [
        (2, "deepapl_discovery/images/Patient_00/0000.jpg", "blast")]


def test_a_file_that_is_not_a_worklist_is_refused(tmp_path, sources):
    listed = tmp_path / "doubtful.txt"
    listed.write_text("deepapl_discovery/images/Patient_00/0000.jpg\n")
    with pytest.raises(ValueError, match="not a worklist"):
        read_readings(listed)


def test_the_worklist_lists_real_training_cells_and_its_readings_go_back_into_them(tmp_path):
    """The served model scores a slice of the real training cells; the rows it writes are disagreements of
    training cells, and a reading written into the file is applied to those very cells."""
    from training import deepapl_dataset, pbc_dataset
    from training.second_reading import main

    out = tmp_path / "worklist"
    main(["--out", str(out), "--per-class-limit", "15", "--cache-dir", "", "--min-confidence", "0.5"])
    with open(out / "worklist.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and set(rows[0]) == set(COLUMNS)
    data_root = deepapl_dataset.data_dir().resolve().parent
    _, validation, test = deepapl_dataset.patient_split(deepapl_dataset.read_patients(deepapl_dataset.data_dir()))
    for row in rows:
        assert (data_root / row["image"]).is_file() and row["second_reading"] == ""
        assert row["network_label"] != row["stored_label"] and float(row["network_probability"]) >= 0.5
        assert float(row["stored_label_probability"]) <= 1.0 - float(row["network_probability"]) + 1e-3
        if row["source"] == "deepapl":
            assert row["patient"] not in set(validation) | set(test) and row["expert_class"]
    stored = [float(r["stored_label_probability"]) for r in rows if r["source"] == "deepapl"]
    assert stored == sorted(stored)
    assert (out / "worklist.html").read_text().count("data:image/jpeg;base64,") == len(rows)

    first, second = rows[0], rows[1]
    rows[0]["second_reading"] = first["network_label"]
    rows[1]["second_reading"] = "exclude"
    with open(out / "worklist.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    sources = {"pbc": pbc_dataset.split_dataset(pbc_dataset.data_dir(), None, 15),
               "deepapl": deepapl_dataset.split_dataset(deepapl_dataset.data_dir(), None, 15)}
    changed, record = apply(sources, out / "worklist.csv")
    assert (record["read"], record["relabelled"], record["left_out"]) == (2, 1, 1)
    relabelled_source = changed[first["source"]][0]
    index = [i for i, p in enumerate(relabelled_source.paths) if p.endswith(first["image"])]
    assert len(index) == 1 and CELL_TYPES[relabelled_source.labels[index[0]]] == first["network_label"]
    assert not any(p.endswith(second["image"]) for p in changed[second["source"]][0].paths)
    assert len(changed[second["source"]][0]) == len(sources[second["source"]][0]) - 1
