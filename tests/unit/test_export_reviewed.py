"""aml-export-reviewed: reviewed cells out of the store as DIR/<label>/<sha256>.jpg + cells.csv, read
back by training.reviewed_dataset (on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import csv

from PIL import Image

from gateway.export_reviewed import export
from gateway.store.database import make_engine, migrate
from gateway.store.repository import ReportStore
from gateway.thumbnails import make_thumbnail
from tests.helpers.images import fullsize_images
from tests.helpers.reports import sample_report
from training.reviewed_dataset import list_cells, split_of


def test_export_reviewed_cells_for_training(database, tmp_path):
    paths = [path for _, path in fullsize_images()[:16]]
    report = sample_report("P-export")
    thumbnails = []
    cells = []
    for cell, path in zip(report.cells, paths):
        thumbnail = make_thumbnail(cell.sha256, path.read_bytes())
        thumbnails.append(thumbnail)
        cells.append(cell)
    corrected = report.cells[0]

    async def fill():
        engine = make_engine(database.settings())
        await migrate(engine, database.schema)
        store = ReportStore(engine)
        try:
            first = await store.add_report(report, "k", {}, thumbnails)
            await store.add_report(sample_report("P-unreviewed", salt="u"), "k2", {}, [])
            base = await store.get(first.report_id)
            new_cells = [c.model_copy(update={"label": "blast", "model_label": c.label}) if c.sha256 == corrected.sha256
                         else c for c in first.cells]
            await store.add_review(base, first.model_copy(update={"status": "final", "cells": new_cells}),
                                   "Dr X", "", True, [{"sha256": corrected.sha256, "label": "blast"}])
        finally:
            await store.close()

    asyncio.run(fill())
    out = tmp_path / "reviewed"
    written = asyncio.run(export(out, database.settings(data_dir=tmp_path)))
    assert written == len(report.cells)
    rows = list(csv.DictReader(open(out / "cells.csv")))
    assert len(rows) == written and "patient_id" not in rows[0] and "P-export" not in (out / "cells.csv").read_text()
    by_sha = {r["sha256"]: r for r in rows}
    assert by_sha[corrected.sha256]["label"] == "blast"
    assert by_sha[corrected.sha256]["model_label"] == corrected.label
    assert (out / "blast" / f"{corrected.sha256}.jpg").is_file()
    assert max(Image.open(out / "blast" / f"{corrected.sha256}.jpg").size) <= 144

    listed = list_cells(out)
    assert len(listed) == written and {label for _, label in listed} <= {c.label for c in report.cells} | {"blast"}
    assert {split_of(p.name) for p, _ in listed} <= {"train", "val", "test"}
    assert split_of(corrected.sha256 + ".jpg") == split_of(corrected.sha256 + ".jpg")
