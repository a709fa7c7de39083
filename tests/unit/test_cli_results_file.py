"""aml-classify's results file survives a kill: the header is on disk before the first patient is sent,
and an empty file (a run killed before it wrote anything) gets a header on the next run."""

from __future__ import annotations

import csv

import pytest

from gateway import cli
from tests.helpers.reports import sample_report


@pytest.fixture
def patients(tmp_path):
    root = tmp_path / "patients"
    for name in ("PAT-A", "PAT-B"):
        (root / name).mkdir(parents=True)
        (root / name / "c0.jpg").write_bytes(b"not sent anywhere")
    return root


def _fake_gateway(monkeypatch, out, seen_sizes):
    def classify(client, folder):
        seen_sizes.append(out.stat().st_size)  # what a kill now would leave on disk
        return sample_report(folder.name).model_dump(), None

    monkeypatch.setattr(cli, "classify_patient", classify)


def test_an_empty_results_file_gets_a_header(patients, tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    out.touch()  # a run killed during its first patient left this
    sizes: list[int] = []
    _fake_gateway(monkeypatch, out, sizes)
    assert cli.main([str(patients), "--out", str(out), "--api-key", "aml_x_" + "y" * 20]) == 0
    assert next(csv.reader(open(out, newline=""))) == cli.COLUMNS
    assert [r["patient_id"] for r in csv.DictReader(open(out, newline=""))] == ["PAT-A", "PAT-B"]
    header_size = len(",".join(cli.COLUMNS)) + 2
    assert sizes[0] == header_size and sizes[1] > header_size, "header and each row on disk at once"

    sizes.clear()
    assert cli.main([str(patients), "--out", str(out), "--api-key", "aml_x_" + "y" * 20]) == 0
    assert sizes == [], "a rerun accepts the file and sends no patient again"


def test_a_new_results_file_has_its_header_on_disk_before_the_first_patient(patients, tmp_path, monkeypatch):
    out = tmp_path / "new.csv"
    sizes: list[int] = []
    _fake_gateway(monkeypatch, out, sizes)
    assert cli.main([str(patients), "--out", str(out), "--api-key", "aml_x_" + "y" * 20]) == 0
    assert sizes[0] == len(",".join(cli.COLUMNS)) + 2
