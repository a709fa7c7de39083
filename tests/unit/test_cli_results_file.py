"""aml-classify's results file survives a kill: the header is on disk before the first patient is sent,
an empty file (a run killed before it wrote anything) gets a header on the next run, a row cut short
(power cut, full disk) is removed and its patient redone, each row is synced to disk, and a patient's
last complete row is its result."""

from __future__ import annotations

import csv

import pytest

from gateway import cli
from gateway.batch import results_file
from tests.helpers.reports import sample_report


@pytest.fixture
def patients(tmp_path):
    root = tmp_path / "patients"
    for name in ("PAT-A", "PAT-B"):
        (root / name).mkdir(parents=True)
        (root / name / "c0.jpg").write_bytes(b"not sent anywhere")
    return root


def _fake_gateway(monkeypatch, out, seen_sizes):
    def classify(client, folder, limits):
        seen_sizes.append(out.stat().st_size)  # what a kill now would leave on disk
        return cli.Result(sample_report(folder.name).model_dump(), None)

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


KEY = "aml_x_" + "y" * 20


def _ok_line(patient_id: str) -> str:
    """A complete ok row as this version writes it (via a run's own writer), with its CRLF."""
    import io

    buffer = io.StringIO()
    row = results_file.report_row(patient_id, sample_report(patient_id).model_dump(), None)
    csv.DictWriter(buffer, fieldnames=cli.COLUMNS).writerow(row)
    return buffer.getvalue()


def _header() -> str:
    return ",".join(cli.COLUMNS) + "\r\n"


def _rows(out):
    return list(csv.reader(open(out, newline="")))[1:]


def test_a_row_cut_short_is_removed_and_its_patient_redone(patients, tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.csv"
    torn = _ok_line("PAT-B")[:40]  # the power went while PAT-B's row was being written
    out.write_text(_header() + _ok_line("PAT-A") + torn, newline="")
    sent: list[str] = []
    monkeypatch.setattr(cli, "classify_patient",
                        lambda client, folder, limits: sent.append(folder.name)
                        or cli.Result(sample_report(folder.name).model_dump(), None))
    assert cli.main([str(patients), "--out", str(out), "--api-key", KEY]) == 0
    assert sent == ["PAT-B"], "the torn row is not a result: PAT-B is redone, PAT-A is not"
    err = capsys.readouterr().err
    assert "cut short" in err and "'PAT-B' will be redone" in err
    rows = _rows(out)
    assert [r[0] for r in rows] == ["PAT-A", "PAT-B"]
    assert all(len(r) == len(cli.COLUMNS) for r in rows), "no row was appended onto the torn one"


def test_a_header_cut_short_is_written_again(patients, tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    out.write_text(_header()[:25], newline="")
    _fake_gateway(monkeypatch, out, [])
    assert cli.main([str(patients), "--out", str(out), "--api-key", KEY]) == 0
    assert next(csv.reader(open(out, newline=""))) == cli.COLUMNS
    assert [r[0] for r in _rows(out)] == ["PAT-A", "PAT-B"]


def test_a_foreign_file_without_a_final_newline_is_refused_untouched(patients, tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    out.write_text("name,value\r\nx,1", newline="")
    _fake_gateway(monkeypatch, out, [])
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(patients), "--out", str(out), "--api-key", KEY])
    assert exit_info.value.code == 2
    assert out.read_text() == "name,value\nx,1"


def test_only_complete_ok_rows_count_as_done_and_the_last_row_wins(patients, tmp_path, monkeypatch):
    (patients / "PAT-C").mkdir()
    (patients / "PAT-C" / "c0.jpg").write_bytes(b"x")
    out = tmp_path / "results.csv"
    short_ok = "PAT-A,ok,16\r\n"  # a complete line but not a complete row: not a result
    b_error = "PAT-B,error" + "," * (len(cli.COLUMNS) - 2) + "\r\n"
    c_error = "PAT-C,error" + "," * (len(cli.COLUMNS) - 2) + "\r\n"
    out.write_text(_header() + short_ok + _ok_line("PAT-B") + b_error + c_error + _ok_line("PAT-C"), newline="")
    sent: list[str] = []
    monkeypatch.setattr(cli, "classify_patient",
                        lambda client, folder, limits: sent.append(folder.name)
                        or cli.Result(sample_report(folder.name).model_dump(), None))
    assert cli.main([str(patients), "--out", str(out), "--api-key", KEY]) == 0
    assert sent == ["PAT-A", "PAT-B"], "PAT-A's short row and PAT-B's earlier ok are not results; PAT-C's last is"


def test_the_header_and_every_row_are_synced_to_disk(patients, tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    _fake_gateway(monkeypatch, out, [])
    synced: list[int] = []
    real_fsync = cli.os.fsync
    monkeypatch.setattr(cli.os, "fsync", lambda fd: synced.append(out.stat().st_size) or real_fsync(fd))
    assert cli.main([str(patients), "--out", str(out), "--api-key", KEY]) == 0
    lines = open(out, newline="").read().split("\r\n")[:-1]
    assert len(synced) == 3 and synced[-1] == out.stat().st_size, "header, PAT-A and PAT-B each synced"
    assert synced[0] == len(lines[0]) + 2
