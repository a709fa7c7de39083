"""training.service_check: our held-out cells posted to a real cell service (with its internal token) give
the labels the same model file gives in process, stored files and full-size JPEGs alike."""

from __future__ import annotations

import numpy as np
import pytest

from shared.vocabulary import CELL_TYPES
from tests.helpers.processes import start_cell_service
from training import service_check

pytestmark = pytest.mark.integration
TOKEN = "service-check-token"


@pytest.fixture(scope="module")
def guarded_cell_service(tmp_path_factory):
    process = start_cell_service(tmp_path_factory.mktemp("cell-guarded"), INTERNAL_TOKEN=TOKEN)
    yield process
    process.stop()


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in ("PBC", "DeepAPL"):
            rows[cells[0]] = cells
    return rows


@pytest.mark.parametrize("as_originals", [False, True], ids=["stored", "as-originals"])
def test_service_labels_match_in_process(guarded_cell_service, tmp_path, monkeypatch, as_originals):
    monkeypatch.setenv("INTERNAL_TOKEN", TOKEN)
    out = tmp_path / "check.md"
    argv = ["--url", guarded_cell_service.url, "--per-class-limit", "10", "--batch", "7", "--in-process",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out)] + (["--as-originals"] if as_originals else [])
    assert service_check.main(argv) == 0
    text = out.read_text()
    assert "int8 on CPUExecutionProvider" in text and ("360x363" in text) == as_originals
    rows = table_rows(text)
    assert set(rows) == {"PBC", "DeepAPL"}
    for source, (_, cells, accuracy_9, _, counts, refused, differ) in rows.items():
        assert int(cells) > 0 and refused == "0" and differ == "0", (source, rows[source])
        assert 0.0 <= float(accuracy_9) <= 1.0
    assert "blasts flagged" in rows["DeepAPL"][4]


def test_a_service_that_refuses_the_caller_stops_the_check(guarded_cell_service, tmp_path, monkeypatch):
    monkeypatch.delenv("INTERNAL_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="answered 401"):
        service_check.main(["--url", guarded_cell_service.url, "--per-class-limit", "10",
                            "--cache-dir", str(tmp_path / "cache")])


def test_refused_images_count_as_wrong():
    labels = np.array([0, 1, 2])
    answered = np.array([0, service_check.REFUSED, service_check.label_index("unclassified")])
    report, _ = service_check.score(labels, answered)
    assert report["accuracy"] == pytest.approx(1 / 3)
    assert service_check.label_index(CELL_TYPES[4]) == 4
