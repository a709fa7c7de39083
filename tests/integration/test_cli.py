"""aml-classify against a real gateway: one CSV row per patient, resumes where it stopped; hidden files
and folders are skipped, and a nested or misnamed patient folder is an error row, not a partial result."""

import csv
import os
import subprocess
import sys

import pytest

from tests.helpers.images import fullsize_images
from tests.helpers.keys import CLASSIFY_KEY
from tests.helpers.processes import REPO_ROOT, start_gateway

pytestmark = pytest.mark.integration


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "AML_API_KEY": CLASSIFY_KEY})


def test_batch_reanalysis_and_resume(tmp_path, cell_service, subtype_service):
    gateway = start_gateway(tmp_path, cell_service.url, subtype_service.url)
    try:
        root = tmp_path / "patients"
        images = fullsize_images()
        for index, patient in enumerate(["PAT-A", "PAT-B"]):
            folder = root / patient
            folder.mkdir(parents=True)
            for _, path in images[index::4]:
                (folder / path.name).write_bytes(path.read_bytes())
        (root / "PAT-A" / "._c0.jpg").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS metadata: not an image
        (root / "@eaDir" / "thumbs").mkdir(parents=True)  # Synology metadata: not a patient
        (root / "@eaDir" / "thumbs" / "t.jpg").write_bytes(images[0][1].read_bytes())
        nested = root / "PAT-NESTED" / "slide2"
        nested.mkdir(parents=True)
        (root / "PAT-NESTED" / images[1][1].name).write_bytes(images[1][1].read_bytes())
        (nested / images[2][1].name).write_bytes(images[2][1].read_bytes())
        (root / "PAT#2").mkdir()
        (root / "PAT#2" / images[3][1].name).write_bytes(images[3][1].read_bytes())
        (root / "PAT-EMPTY").mkdir()
        out = tmp_path / "results.csv"
        first = run_cli(str(root), "--out", str(out), "--gateway", gateway.url)
        assert first.returncode == 1, "the empty, nested and misnamed folders are reported as failures"
        rows = list(csv.DictReader(open(out)))
        by_patient = {r["patient_id"]: r for r in rows}
        assert by_patient["PAT-A"]["status"] == "ok" and by_patient["PAT-B"]["status"] == "ok"
        assert int(by_patient["PAT-A"]["n_images"]) == 16
        header = next(csv.reader(open(out)))
        assert header[header.index("aml_probability") + 1:][:2] == ["apl_probability", "apl_alert"]
        for row in (by_patient["PAT-A"], by_patient["PAT-B"]):  # the committed services have an APL model
            assert 0 <= float(row["apl_probability"]) <= 1 and row["apl_alert"] in ("True", "False")
        assert by_patient["PAT-EMPTY"]["status"] == "error" and "no images" in by_patient["PAT-EMPTY"]["error"]
        nested_row = by_patient["PAT-NESTED"]
        assert nested_row["status"] == "error"
        assert "slide2" in nested_row["error"] and "directly in its folder" in nested_row["error"]
        assert by_patient["PAT#2"]["status"] == "error" and "not a valid patient id" in by_patient["PAT#2"]["error"]
        assert "@eaDir" not in by_patient
        assert "5 patients, 0 already" in first.stderr and "5/5 patients" in first.stderr

        second = run_cli(str(root), "--out", str(out), "--gateway", gateway.url)
        assert "2 already in" in second.stderr and "3 to do" in second.stderr
        assert len(list(csv.DictReader(open(out)))) == 8, "done patients are not sent again"
    finally:
        gateway.stop()
