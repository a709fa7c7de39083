"""aml-export-reviewed: reviewed cells out of the store as DIR/<label>/<sha256>.jpg + cells.csv, read
back by training.reviewed_dataset (on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import csv

import pytest
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
    written, removed = asyncio.run(export(out, database.settings(data_dir=tmp_path)))
    assert written == len(report.cells) and removed == 0
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


def _files(out) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*.jpg")}


def test_re_export_leaves_exactly_the_current_cells(database, tmp_path):
    """Training reads the label folders: a relabelled cell (blast, then promyelocyte) must be under its
    new label only, and an erased patient's cells must go; files the export did not make stay."""
    paths = [path for _, path in fullsize_images()[:16]]
    report = sample_report("P-relabel")
    thumbnails = [make_thumbnail(cell.sha256, path.read_bytes()) for cell, path in zip(report.cells, paths)]
    other = sample_report("P-erased", salt="e")
    other_thumbnails = [make_thumbnail(cell.sha256, path.read_bytes()) for cell, path in zip(other.cells, paths)]
    cell = report.cells[0]
    engine_settings = database.settings()

    async def review(report_id: str, label: str, status: str) -> str:
        store = ReportStore(make_engine(engine_settings))
        try:
            base = await store.get(report_id)
            cells = [c.model_copy(update={"label": label, "model_label": cell.label}) if c.sha256 == cell.sha256
                     else c for c in base.report.cells]
            new = await store.add_review(base, base.report.model_copy(update={"status": status, "cells": cells}),
                                         "Dr X", "", True, [{"sha256": cell.sha256, "label": label}])
            return new.report_id
        finally:
            await store.close()

    async def fill() -> str:
        engine = make_engine(engine_settings)
        await migrate(engine, database.schema)
        store = ReportStore(engine)
        try:
            first = await store.add_report(report, "k", {}, thumbnails)
            erased = await store.add_report(other, "k2", {}, other_thumbnails)
            base = await store.get(erased.report_id)
            await store.add_review(base, erased.model_copy(update={"status": "final"}), "Dr Y", "", True, [])
            return first.report_id
        finally:
            await store.close()

    async def erase(patient_id: str) -> None:
        store = ReportStore(make_engine(engine_settings))
        try:
            await store.erase(patient_id)
        finally:
            await store.close()

    first_id = asyncio.run(fill())
    final_id = asyncio.run(review(first_id, "blast", "final"))
    out = tmp_path / "reviewed"
    asyncio.run(export(out, database.settings(data_dir=tmp_path)))
    assert f"blast/{cell.sha256}.jpg" in _files(out)
    (out / "NOTES.txt").write_text("mine")
    (out / "blast" / "mine.jpg").write_bytes(b"not made by the export")

    asyncio.run(review(final_id, "promyelocyte", "amended"))
    asyncio.run(erase("P-erased"))
    written, removed = asyncio.run(export(out, database.settings(data_dir=tmp_path)))
    rows = list(csv.DictReader(open(out / "cells.csv")))
    assert written == len(rows) == len(report.cells)
    assert removed == 1 + len(other.cells), "the relabelled cell's old image and the erased patient's, counted"
    assert _files(out) == {r["file"] for r in rows} | {"blast/mine.jpg"}, "exactly the current cells"
    assert f"promyelocyte/{cell.sha256}.jpg" in _files(out) and f"blast/{cell.sha256}.jpg" not in _files(out)
    assert not any(c.sha256 in name for c in other.cells for name in _files(out)), "erased patient's cells gone"
    assert (out / "NOTES.txt").read_text() == "mine"
    assert {label for path, label in list_cells(out) if path.name != "mine.jpg"} == {r["label"] for r in rows}


def test_export_refuses_a_folder_that_is_not_an_earlier_export(database, tmp_path):
    async def migrate_only():
        engine = make_engine(database.settings())
        await migrate(engine, database.schema)
        await engine.dispose()

    asyncio.run(migrate_only())
    out = tmp_path / "training-data"
    (out / "blast").mkdir(parents=True)
    (out / "blast" / f"{'a' * 64}.jpg").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError, match="earlier export"):
        asyncio.run(export(out, database.settings(data_dir=tmp_path)))
    assert (out / "blast" / f"{'a' * 64}.jpg").read_bytes() == b"someone else's"
    assert asyncio.run(export(tmp_path / "new", database.settings(data_dir=tmp_path))) == (0, 0)
    assert asyncio.run(export(tmp_path / "new", database.settings(data_dir=tmp_path))) == (0, 0), "its own: rerun"


def _store_with_one_review(settings, patient: str = "P-mine") -> list[str]:
    """A migrated store holding one signed-off report of 4 cells; their sha256s."""
    paths = [path for _, path in fullsize_images()[:4]]
    report = sample_report(patient).model_copy()
    report = report.model_copy(update={"cells": report.cells[:4]})
    thumbnails = [make_thumbnail(cell.sha256, path.read_bytes()) for cell, path in zip(report.cells, paths)]

    async def fill():
        engine = make_engine(settings)
        await migrate(engine, settings.database_schema)
        store = ReportStore(engine)
        try:
            first = await store.add_report(report, "k", {}, thumbnails)
            await store.add_review(await store.get(first.report_id), first.model_copy(update={"status": "final"}),
                                   "Dr X", "", True, [])
        finally:
            await store.close()

    asyncio.run(fill())
    return [cell.sha256 for cell in report.cells]


def _another_empty_store(database, tmp_path):
    """Settings of a second, migrated and empty store (what a shell without DATABASE_URL would find)."""
    other = database.settings(database_url=f"sqlite:///{tmp_path / 'other.db'}", database_schema=None)

    async def migrate_other():
        engine = make_engine(other)
        await migrate(engine, None)
        await engine.dispose()

    asyncio.run(migrate_other())
    return other


def test_an_export_of_another_store_is_refused_not_emptied(database, tmp_path):
    """A shell without DATABASE_URL finds another (empty) store: re-exporting it into an earlier export
    would remove every cell; it is refused, and nothing is touched."""
    mine = database.settings(data_dir=tmp_path)
    shas = _store_with_one_review(mine)
    out = tmp_path / "reviewed"
    assert asyncio.run(export(out, mine))[0] == len(shas)
    before = _files(out)
    other = _another_empty_store(database, tmp_path)
    with pytest.raises(FileExistsError, match="another report store"):
        asyncio.run(export(out, other))
    assert _files(out) == before and len(before) == len(shas)
    assert asyncio.run(export(out, mine)) == (len(shas), 0), "its own store may re-export"


def test_a_label_folder_that_is_a_link_is_refused_and_its_files_kept(database, tmp_path):
    mine = database.settings(data_dir=tmp_path)
    shas = _store_with_one_review(mine)
    out = tmp_path / "reviewed"
    asyncio.run(export(out, mine))
    pool = tmp_path / "shared-pool"
    pool.mkdir()
    (pool / f"{'b' * 64}.jpg").write_bytes(b"a pool's image, named like a cell")
    for label in {p.parent.name for p in out.rglob("*.jpg")}:
        for image in (out / label).iterdir():
            image.unlink()
        (out / label).rmdir()
    (out / "blast").symlink_to(pool, target_is_directory=True)
    with pytest.raises(FileExistsError, match="symbolic link"):
        asyncio.run(export(out, mine))
    assert (pool / f"{'b' * 64}.jpg").read_bytes() == b"a pool's image, named like a cell"
    assert len(shas) == 4


def test_an_unmarked_earlier_export_is_this_stores_only_if_its_reports_are_here(database, tmp_path):
    """Exports made before export.json existed: another (empty) store must not empty one and stamp it as its own;
    this store re-exports it and marks it."""
    mine = database.settings(data_dir=tmp_path)
    shas = _store_with_one_review(mine)
    out = tmp_path / "reviewed"
    asyncio.run(export(out, mine))
    (out / "export.json").unlink()  # as an export made before this change left it
    before = _files(out)
    other = _another_empty_store(database, tmp_path)
    with pytest.raises(FileExistsError, match="none of them in this report store"):
        asyncio.run(export(out, other))
    assert _files(out) == before and not (out / "export.json").exists()
    assert asyncio.run(export(out, mine)) == (len(shas), 0)
    assert (out / "export.json").is_file(), "marked as this store's from now on"



def test_split_groups_survive_amendments_and_join_reports_that_share_cells(database, tmp_path):
    """Training splits by ``split_group``: an amendment (a new version id) moves no cell, and a re-upload that
    repeats some of an earlier report's images is split with it, so no report's cells are on both sides."""
    from gateway.store.repository import Thumbnail
    from training.reviewed_dataset import report_of_cells

    first = sample_report("P-split")
    again = sample_report("P-split").model_copy(update={"cells": first.cells[:4] + sample_report(
        "P-split", salt="more").cells[:4]})
    alone = sample_report("P-alone", salt="alone")

    async def reviewed(store, report):
        thumbnails = [Thumbnail(c.sha256, b"\xff\xd8jpeg-" + c.sha256.encode()[:8], 10, 10) for c in report.cells]
        stored = await store.add_report(report, report.patient_id, {}, thumbnails)
        base = await store.get(stored.report_id)
        return await store.add_review(base, stored.model_copy(update={"status": "final"}), "Dr S", "", True, [])

    async def fill():
        engine = make_engine(database.settings())
        await migrate(engine, database.schema)
        store = ReportStore(engine)
        try:
            signed = [await reviewed(store, report) for report in (first, again, alone)]
            amended = await store.add_review(await store.get(signed[0].report_id),
                                             signed[0].model_copy(update={"status": "amended"}), "Dr S",
                                             "a comment only", True, [])
            return signed, amended
        finally:
            await store.close()

    signed, amended = asyncio.run(fill())
    out = tmp_path / "split-export"
    asyncio.run(export(out, database.settings(data_dir=tmp_path)))
    groups = report_of_cells(out)
    assert len(groups) == len(first.cells) + 4 + len(alone.cells)
    shared = {groups[c.sha256] for c in first.cells} | {groups[c.sha256] for c in again.cells}
    assert shared == {min(signed[0].first_report_id, signed[1].first_report_id)}
    assert {groups[c.sha256] for c in alone.cells} == {signed[2].first_report_id}
    assert amended.first_report_id == signed[0].first_report_id and amended.report_id != signed[0].report_id, \
        "the amended version has a new id but keeps its chain, and so its group"
