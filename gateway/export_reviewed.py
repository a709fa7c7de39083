"""aml-export-reviewed DIR: the cells a haematologist reviewed, as labelled training data.

For the newest version of every reviewed report (status final or amended) each cell's stored
thumbnail (at most 144x144 px; the gateway keeps no originals) is written as
``DIR/<label>/<sha256>.jpg`` under the reviewer's label, and ``DIR/cells.csv`` lists
sha256, label, model_label (the model's label where the reviewer corrected it), report_id,
reviewed_by, reviewed_at, cell and subtype model versions. No patient ids are written (the report
id links back for those allowed to look). A cell seen in several reports is written once, under
the label of the newest review. ``python -m training.train_cells --extra-labelled DIR`` trains on it.

Reads the report store directly (DATABASE_URL, DATABASE_SCHEMA, DATA_DIR as for the gateway).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from pathlib import Path

from gateway.settings import GatewaySettings
from gateway.store.database import current_revision, make_engine
from gateway.store.repository import ReportStore, StoreUnavailable
from shared.vocabulary import CELL_LABELS

COLUMNS = ["sha256", "label", "model_label", "report_id", "reviewed_by", "reviewed_at", "cell_model", "file"]


async def export(out: Path, settings: GatewaySettings) -> int:
    store = ReportStore(make_engine(settings))
    try:
        if await current_revision(store.engine) is None:
            raise StoreUnavailable("this database holds no report store (no migrations applied): point DATABASE_URL "
                                   "(and DATABASE_SCHEMA, DATA_DIR) at the gateway's database")
        heads = await store.reviewed_heads()
        chosen: dict[str, dict] = {}
        for stored in heads:  # oldest first: a newer review of the same cell wins
            report = stored.report
            for cell in report.cells or []:
                chosen[cell.sha256] = {
                    "sha256": cell.sha256, "label": cell.label, "model_label": cell.model_label or "",
                    "report_id": report.report_id, "reviewed_by": report.reviewed_by or "",
                    "reviewed_at": report.reviewed_at or "",
                    "cell_model": f"{report.models.cell['name']} {report.models.cell['version']}"}
        written = []
        shas = sorted(chosen)
        for i in range(0, len(shas), 500):
            jpegs = await store.thumbnails(shas[i: i + 500])
            for sha in shas[i: i + 500]:
                row = chosen[sha]
                if sha not in jpegs or row["label"] not in CELL_LABELS:
                    continue
                path = out / row["label"] / f"{sha}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(jpegs[sha])
                written.append({**row, "file": str(path.relative_to(out))})
    finally:
        await store.close()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "cells.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(written)
    return len(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aml-export-reviewed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output directory (DIR/<label>/<sha256>.jpg, DIR/cells.csv)")
    args = parser.parse_args(argv)
    try:
        n = asyncio.run(export(args.out, GatewaySettings()))
    except (StoreUnavailable, OSError) as exc:
        print(f"aml-export-reviewed: {exc}", file=sys.stderr)
        return 1
    print(f"{n} reviewed cells written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
