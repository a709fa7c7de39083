"""aml-export-reviewed DIR: the cells a haematologist reviewed, as labelled training data.

For the newest version of every reviewed report (status final or amended) each cell's stored
thumbnail (at most 144x144 px; the gateway keeps no originals) is written as
``DIR/<label>/<sha256>.jpg`` under the reviewer's label, and ``DIR/cells.csv`` lists
sha256, label, model_label (the model's label where the reviewer corrected it), report_id,
split_group (what training splits by: the report's first version's id, shared by reports that share
cells), reviewed_by, reviewed_at, cell_model (the cell model's name and version) and file. No patient ids are written (the report
id links back for those allowed to look). A cell seen in several reports is written once, under
the label of the newest review. ``python -m training.train_cells --extra-labelled DIR`` trains on it.

Training reads the label folders, so a re-export into the same DIR leaves exactly the current
cells: it removes the ``<label>/<sha256>.jpg`` files of cells relabelled (now under another label),
erased or no longer reviewed since, and says how many. Anything else in DIR is left alone; DIR must
be new, empty or an earlier export of the same report store (``export.json`` names the store's id),
else the export refuses it rather than delete files it did not make: an export of another store (a
DATABASE_URL not set in a new shell finds the default SQLite store, empty) would otherwise remove
every cell. A label folder that is a symbolic link is refused too (its files are not DIR's).

Reads the report store directly (DATABASE_URL, DATABASE_SCHEMA, DATA_DIR as for the gateway).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from gateway.fhir import chain_id
from gateway.settings import GatewaySettings
from gateway.store.database import current_revision, make_engine, revision_at_least
from gateway.store.repository import ReportStore, StoreUnavailable
from shared.vocabulary import CELL_LABELS

COLUMNS = ["sha256", "label", "model_label", "report_id", "split_group", "reviewed_by", "reviewed_at", "cell_model",
           "file"]
_EXPORTED_NAME = re.compile(r"[0-9a-f]{64}\.jpg")


MARKER = "export.json"  # {"store": <the report store's id>}: whose export DIR is


def _check_out(out: Path, store_id: str) -> None:
    """``out`` is new, empty or an earlier export of this store: only then are its ``<label>/<sha256>.jpg``
    files ours to remove. Its label folders must be real folders (never links to files elsewhere)."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        listing = out / "cells.csv"
        if not listing.is_file() or not _is_listing(listing):
            raise FileExistsError(f"{out} is not empty and not an earlier export (no cells.csv): choose a new or "
                                  "empty folder (a re-export removes the cell images that are no longer current)")
        exported_from = _exported_from(out)
        if exported_from is not None and exported_from != store_id:
            raise FileExistsError(
                f"{out} is an export of another report store ({exported_from}, this one is {store_id}): a re-export "
                "would remove its cells. Check DATABASE_URL (and DATABASE_SCHEMA, DATA_DIR), or choose a new folder")
    linked = [label for label in CELL_LABELS if (out / label).is_symlink()]
    if linked:
        raise FileExistsError(f"{out}/{linked[0]} is a symbolic link: the export writes and removes cell images only "
                              "in label folders of its own")


async def _check_unmarked_export(out: Path, store: ReportStore) -> None:
    """An export made before exports recorded their store (no export.json): it is this store's only if the
    reports its cells came from are here; else a re-export (e.g. from a shell whose DATABASE_URL finds another,
    empty store) would remove every cell and stamp the folder as this store's."""
    listing = out / "cells.csv"
    if (out / MARKER).exists() or not listing.is_file():
        return
    with open(listing, newline="") as handle:
        report_ids = sorted({row["report_id"] for row in csv.DictReader(handle) if row.get("report_id")})
    if report_ids and not await store.known_report_ids(report_ids[:1000]):
        raise FileExistsError(
            f"{out} is an earlier export whose {len(report_ids)} report(s) are none of them in this report store: "
            "check DATABASE_URL (and DATABASE_SCHEMA, DATA_DIR), or choose a new folder")


@contextmanager
def _replacing(path: Path) -> Iterator[TextIO]:
    """``path`` written in one step: a kill leaves the old file or the new one, never part of one."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as handle:
        yield handle
    os.replace(partial, path)


def _write_marker(out: Path, store_id: str) -> None:
    """export.json, after cells.csv (a kill between leaves a folder the next run accepts)."""
    with _replacing(out / MARKER) as handle:
        handle.write(json.dumps({"store": store_id}) + "\n")


def _is_listing(path: Path) -> bool:
    with open(path, newline="") as handle:
        return next(csv.reader(handle), [])[:1] == COLUMNS[:1]


def _exported_from(out: Path) -> str | None:
    """The store id an earlier export recorded (None: an export made before ids were recorded)."""
    try:
        return json.loads((out / MARKER).read_text())["store"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        raise FileExistsError(f"{out / MARKER} is not readable as an export's marker: choose a new folder, or "
                              "remove that file if this folder is an export of this store") from None


def _write_listing(out: Path, rows: list[dict]) -> None:
    """cells.csv, replaced in one step (a kill leaves the old listing or the new one)."""
    with _replacing(out / "cells.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _remove_stale(out: Path, current: set[Path]) -> int:
    """Remove the ``<label>/<sha256>.jpg`` files not in this export (a cell relabelled, erased or no
    longer reviewed since an earlier one); other files stay."""
    removed = 0
    for label in CELL_LABELS:
        folder = out / label
        if not folder.is_dir():
            continue
        for path in folder.iterdir():  # a link named like a cell is removed itself, never what it points to
            if _EXPORTED_NAME.fullmatch(path.name) and path not in current and (path.is_file() or path.is_symlink()):
                path.unlink()
                removed += 1
    return removed


def split_groups(reports: list) -> dict[str, str]:
    """Report chain id -> the group training splits it by: the smallest chain id among the chains that share a
    cell with it, directly or through others. A chain keeps its group when it is amended (its id does not
    change), and a patient's re-upload that repeats some images of an earlier report joins that report's
    group, so no report's cells sit on both sides of a split."""
    parent: dict[str, str] = {}

    def root(chain: str) -> str:
        while parent.setdefault(chain, chain) != chain:
            parent[chain] = parent[parent[chain]]
            chain = parent[chain]
        return chain

    first_chain_of_cell: dict[str, str] = {}
    for report in reports:
        chain = root(chain_id(report))
        for cell in report.cells or []:
            other = root(first_chain_of_cell.setdefault(cell.sha256, chain))
            chain = root(chain)
            if other != chain:
                keep, drop = sorted((other, chain))
                parent[drop] = keep
    return {chain: root(chain) for chain in list(parent)}


async def export(out: Path, settings: GatewaySettings) -> tuple[int, int]:
    """(cells written, stale cell images removed)."""
    store = ReportStore(make_engine(settings))
    try:
        revision = await current_revision(store.engine)
        if revision is None:
            raise StoreUnavailable("this database holds no report store (no migrations applied): point DATABASE_URL "
                                   "(and DATABASE_SCHEMA, DATA_DIR) at the gateway's database")
        if not revision_at_least(revision, "0003"):
            raise StoreUnavailable(f"the report store is at revision {revision}: upgrade it first (python -m "
                                   "gateway.store migrate, or start the upgraded gateway)")
        store_id = await store.identity()
        _check_out(out, store_id)
        await _check_unmarked_export(out, store)
        heads = await store.reviewed_heads()
        group_of = split_groups([stored.report for stored in heads])
        chosen: dict[str, dict] = {}
        for stored in heads:  # oldest first: a newer review of the same cell wins
            report = stored.report
            for cell in report.cells or []:
                chosen[cell.sha256] = {
                    "sha256": cell.sha256, "label": cell.label, "model_label": cell.model_label or "",
                    "report_id": report.report_id, "split_group": group_of[chain_id(report)],
                    "reviewed_by": report.reviewed_by or "",
                    "reviewed_at": report.reviewed_at or "",
                    "cell_model": f"{report.models.cell['name']} {report.models.cell['version']}"}
        written = []
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "cells.csv").exists():  # marks DIR as an export before any image: a killed run can rerun
            _write_listing(out, [])
        _write_marker(out, store_id)
        shas = sorted(chosen)
        for i in range(0, len(shas), 500):
            jpegs = await store.thumbnails(shas[i: i + 500])
            for sha in shas[i: i + 500]:
                row = chosen[sha]
                if sha not in jpegs or row["label"] not in CELL_LABELS:
                    continue
                path = out / row["label"] / f"{sha}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.is_symlink():  # replace the link itself: never write through it
                    path.unlink()
                path.write_bytes(jpegs[sha])
                written.append({**row, "file": str(path.relative_to(out))})
    finally:
        await store.close()
    _write_listing(out, written)
    removed = _remove_stale(out, {out / row["file"] for row in written})
    return len(written), removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aml-export-reviewed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output directory (DIR/<label>/<sha256>.jpg, DIR/cells.csv): "
                        "new, empty or an earlier export")
    args = parser.parse_args(argv)
    try:
        n, removed = asyncio.run(export(args.out, GatewaySettings()))
    except (StoreUnavailable, OSError) as exc:
        print(f"aml-export-reviewed: {exc}", file=sys.stderr)
        return 1
    print(f"{n} reviewed cells written to {args.out}" + (f"; {removed} cell image(s) no longer current removed"
                                                         if removed else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
