"""The second reading's page in a real headless Chromium: read blind, nothing lost on a reload, the readings
downloaded as the worklist CSV that train_cells --second-reading takes, and continued from that file elsewhere."""

from __future__ import annotations

import csv

import pytest

from shared.vocabulary import CELL_TYPES
from tests.conftest import require_training_stack
from tests.helpers.images import deepapl_images

pytestmark = pytest.mark.integration


def _rows(data_root):
    """Worklist rows of real DeepAPL cells (what main() writes; the network's figures are made up here)."""
    rows = []
    for stored, network in (("monocyte", "smudge"), ("lymphocyte", "blast"), ("blast", "lymphocyte")):
        (path,) = deepapl_images(stored.capitalize() if stored != "blast" else "Blast, no lineage spec", 1)
        rows.append({"image": path.resolve().relative_to(data_root).as_posix(), "source": "deepapl",
                     "patient": path.parent.name, "stored_label": stored, "expert_class": "Monocyte, \"atypical\"",
                     "network_label": network, "network_probability": "0.950", "stored_label_probability": "0.010",
                     "second_reading": ""})
    return rows


def test_read_blind_resume_after_reload_and_download_the_filled_worklist(browser, tmp_path):
    require_training_stack()  # training.second_reading reads the data sets through training.pbc_dataset (sklearn)
    from training.second_reading import COLUMNS, read_readings, write_html

    (sample,) = deepapl_images("Lymphocyte", 1)
    data_root = sample.resolve().parents[3]
    rows = _rows(data_root)
    page_path = tmp_path / "worklist.html"
    write_html(rows, data_root, "aml-cell-resnet 2.3.0 (int8)", 0.9, page_path)

    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.goto(page_path.as_uri())
    assert page.inner_text("#progress").startswith("0 of 3 cells read")
    hidden = page.locator("td.labels")
    assert hidden.count() == 3 * len(rows) and not any(hidden.nth(i).is_visible() for i in range(hidden.count())), \
        "stored label, network's answer and file name (PBC's name the type) hidden: a blind first pass"
    assert rows[0]["image"] in hidden.nth(2).text_content()
    options = page.locator("select.reading").first.locator("option").all_inner_texts()
    assert options[1:-1] == list(CELL_TYPES) and options[0] == "not read" and options[-1].startswith("exclude")

    page.select_option("select.reading[data-row='0']", "monocyte")
    page.select_option("select.reading[data-row='2']", "exclude")
    assert page.inner_text("#progress").startswith("2 of 3 cells read")
    page.reload()
    assert page.input_value("select.reading[data-row='0']") == "monocyte", "a reading survives a reload"
    assert page.input_value("select.reading[data-row='2']") == "exclude"
    assert page.inner_text("#progress").startswith("2 of 3 cells read")
    page.check("#show-labels")
    assert page.locator("td.labels").first.is_visible()
    assert "monocyte" in page.locator("td.labels").first.inner_text()

    with page.expect_download() as download:
        page.click("#download")
    filled = tmp_path / "readings.csv"
    download.value.save_as(filled)
    with open(filled, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert list(written[0]) == list(COLUMNS)
    assert [{k: v for k, v in row.items() if k != "second_reading"} for row in written] == \
        [{k: v for k, v in row.items() if k != "second_reading"} for row in rows], "every row as listed, quotes kept"
    readings = read_readings(filled)
    assert [(r.image, r.stored_label, r.reading) for r in readings] == [
        (rows[0]["image"], "monocyte", "monocyte"), (rows[2]["image"], "blast", "exclude")]
    context.close()

    # another machine, or a browser that cleared its data: continue from the downloaded file
    elsewhere = browser.new_context()
    page = elsewhere.new_page()
    page.goto(page_path.as_uri())
    assert page.inner_text("#progress").startswith("0 of 3 cells read")
    with open(filled, "a", newline="") as handle:  # plus a row of another worklist and a reading not understood
        handle.write("deepapl_discovery/images/Patient_99/0001.jpg,deepapl,Patient_99,blast,,,,,blast\r\n")
    lines = filled.read_text().splitlines()
    lines[2] = lines[2][:lines[2].rindex(",") + 1] + "Plasma cell"
    filled.write_text("\ufeff" + "\r\n".join(lines) + "\r\n")  # as a spreadsheet saves it
    page.set_input_files("#load", str(filled))
    page.wait_for_function("document.getElementById('loaded').textContent !== ''")
    status = page.inner_text("#loaded")
    assert status.startswith("2 readings loaded from readings.csv"), status
    assert "1 of cells not in this worklist left out" in status and "1 not a cell type or exclude" in status
    assert page.input_value("select.reading[data-row='0']") == "monocyte"
    assert page.input_value("select.reading[data-row='1']") == ""
    assert page.input_value("select.reading[data-row='2']") == "exclude"
    assert page.inner_text("#progress").startswith("2 of 3 cells read")
    page.reload()
    assert page.input_value("select.reading[data-row='2']") == "exclude", "loaded readings are kept like chosen ones"

    not_a_worklist = tmp_path / "notes.csv"
    not_a_worklist.write_text("cell,comment\n1,looks odd\n")
    page.set_input_files("#load", str(not_a_worklist))
    page.wait_for_function("document.getElementById('loaded').textContent.includes('notes.csv')")
    assert "not a worklist" in page.inner_text("#loaded")
    assert page.inner_text("#progress").startswith("2 of 3 cells read"), "nothing changed"
    elsewhere.close()
