"""A second technologist's reading of the training cells the served network and their label disagree on.

The cell model's record (docs/cell_model_experiments.md) ends on this: no recipe change moved the home figure,
and about a fifth of the network's wrong answers are confident ones, the first labels to doubt. This module
turns that into a worklist a reader can work through, and takes the readings back into training:

    python -m training.second_reading --out DIR [--model-dir services/cell_classifier/model]
                                      [--min-confidence 0.9] [--sources deepapl pbc]

scores every training cell (training patients only: the validation and test cells are what the model is
measured on, and are never re-read here) with the served ONNX model, as the service would, and lists the cells
whose stored label is not the network's answer although the network gives its answer at least
``--min-confidence``, the least likely stored labels first. It writes

- ``DIR/worklist.csv``: ``image`` (the path below the data folder), ``source``, ``patient``, ``stored_label``,
  ``expert_class`` (DeepAPL's CellaVision class, PBC's file-name type), ``network_label``,
  ``network_probability``, ``stored_label_probability`` and an empty ``second_reading`` column;
- ``DIR/worklist.html``: the same rows with each cell's picture, one self-contained page to read in: a reading
  is chosen per cell, the stored label, the network's answer and the file name stay hidden until the reader
  asks for them (a blind first pass), the readings are kept in the browser across reloads, a button
  downloads the worklist with its ``second_reading`` column filled (``worklist-readings.csv``), and such a
  file loads back into the page (another machine, a browser that cleared its data).

A reading is the cell type the reader sees (the vocabulary's names: ``lymphocyte``, ``blast``, ...; the stored
label again to confirm it) or ``exclude`` (cannot tell, or not a usable cell); blank for a cell not read. The
CSV may as well be filled in a spreadsheet. Then

    make train-cells TRAIN_ARGS="--second-reading DIR/worklist-readings.csv ..."

trains with those readings: confirmed cells keep their label, re-read cells take the reader's, excluded cells
are left out, and the model card records the file's sha256 and the counts (``training.second_reading``). A
reading of a cell that is not a training cell, a value outside the vocabulary, or a row whose stored label is
no longer the cell's (a worklist made from other data) stops the run, so nothing is applied silently wrong.

The pictures in the page are the data set's own images: the page, like the CSV, stays with the reader and is
never committed (DeepAPL: research use only).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import html
import json
import mimetypes
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from shared.hashing import file_sha256
from shared.vocabulary import CELL_TYPES
from training.excluded_cells import entry_path, held_out_hits, matches, with_training_cells

COLUMNS = ("image", "source", "patient", "stored_label", "expert_class", "network_label", "network_probability",
           "stored_label_probability", "second_reading")
EXCLUDE = "exclude"
OUTCOMES = ("confirmed", "relabelled", "left_out")  # what a reading does to its cell, as the card counts them
DEFAULT_MIN_CONFIDENCE = 0.9
REPO_ROOT = Path(__file__).resolve().parents[1]


def discordant(probabilities: np.ndarray, labels: np.ndarray, min_confidence: float) -> np.ndarray:
    """Indices of the cells whose network answer (its top class, given at least ``min_confidence``) is not their
    label, the least likely labels first (ties: the more confident answer first)."""
    top = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(top)), top]
    chosen = np.flatnonzero((top != labels) & (confidence >= min_confidence))
    stored = probabilities[chosen, labels[chosen]]
    return chosen[np.lexsort((-confidence[chosen], stored))]


@dataclass(frozen=True)
class Reading:
    row: int  # line in the CSV (the header is line 1)
    image: str
    stored_label: str
    reading: str


def read_readings(path: Path) -> list[Reading]:
    """The filled rows of a worklist (a blank ``second_reading``: not read). Raises ``ValueError`` for a value
    outside the vocabulary, a file without the worklist's columns, or an image read twice."""
    readings: list[Reading] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:  # a spreadsheet may save it with a BOM
        reader = csv.DictReader(handle)
        missing = {"image", "stored_label", "second_reading"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a worklist of training.second_reading (no {', '.join(sorted(missing))} "
                             f"column)")
        seen: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            value = (row["second_reading"] or "").strip().lower()
            if not value:
                continue
            if value not in CELL_TYPES and value != EXCLUDE:
                raise ValueError(f"{path}, line {line}: second_reading {value!r} is neither a cell type "
                                 f"({', '.join(CELL_TYPES)}) nor {EXCLUDE!r}")
            image = entry_path(row["image"])
            if image in seen:
                raise ValueError(f"{path}, line {line}: {image} was read already on line {seen[image]}")
            seen[image] = line
            readings.append(Reading(line, image, row["stored_label"].strip(), value))
    return readings


def apply(sources: Mapping, path: Path):
    """``sources`` (``{name: (train, validation, test)}`` of ``training.pbc_dataset.Split``) with the readings of
    the worklist at ``path`` applied to the training cells, and the card's record of them.

    Raises ``ValueError`` when a read image is a validation or test cell, is no image at all, or no longer has
    the stored label the worklist shows."""
    readings = read_readings(path)
    by_image = {r.image: r for r in readings}
    images = list(by_image)
    found_anywhere: set[str] = set()
    changed = {}
    by_source: dict[str, dict[str, int]] = {}
    relabelled_as: Counter[str] = Counter()
    for source, splits in sources.items():
        held_out = held_out_hits(splits, images)
        if held_out:
            split_name, hits = held_out
            raise ValueError(f"{path}, line {by_image[hits[0]].row}: {hits[0]} is a {source} {split_name} "
                             f"cell; only training cells are re-read (the others are what the model is "
                             f"measured on)")
        train = splits[0]
        labels = train.labels.copy()
        keep = np.ones(len(train), bool)
        counts = Counter()
        for image, rows in matches(train.paths, images).items():
            if not rows:
                continue
            found_anywhere.add(image)
            reading = by_image[image]
            for index in rows:
                stored = CELL_TYPES[int(train.labels[index])]
                if reading.stored_label != stored:
                    raise ValueError(f"{path}, line {reading.row}: {image} is labelled {stored} in the data, the "
                                     f"worklist says {reading.stored_label!r} (a worklist of other data?)")
                if reading.reading == EXCLUDE:
                    keep[index] = False
                    counts["left_out"] += 1
                elif reading.reading == stored:
                    counts["confirmed"] += 1
                else:
                    labels[index] = CELL_TYPES.index(reading.reading)
                    counts["relabelled"] += 1
                    relabelled_as[f"{stored} -> {reading.reading}"] += 1
        by_source[source] = {k: counts[k] for k in OUTCOMES}
        changed[source] = with_training_cells(splits, keep, labels)
    unknown = [r for r in readings if r.image not in found_anywhere]
    if unknown:
        raise ValueError(f"{path}, line {unknown[0].row}: {unknown[0].image} is no image of any split "
                         f"({len(unknown)} such rows; a worklist of other data, or a cell --exclude-cells left out?)")
    totals = {k: sum(s[k] for s in by_source.values()) for k in OUTCOMES}
    return changed, {"list": Path(path).name, "sha256": file_sha256(path), "read": len(readings), **totals,
                     "by_source": by_source, "relabelled_as": dict(sorted(relabelled_as.items()))}


def describe(record: dict) -> str:
    """One line for the log and the model card."""
    return (f"{record['read']} cells re-read ({record['list']}, sha256 {record['sha256'][:12]}...): "
            f"{record['confirmed']} confirmed, {record['relabelled']} relabelled, {record['left_out']} left out")


def expert_class_of(path: str, source: str, deepapl_classes: Mapping[str, str]) -> str:
    """DeepAPL: the CellaVision class the technologist verified; PBC: the type in the file name (``SNE``)."""
    if source == "deepapl":
        return deepapl_classes.get(Path(path).as_posix(), "")
    name = Path(path).name
    return name.split("_", 1)[0] if "_" in name else ""


def worklist_rows(paths: list[str], labels: np.ndarray, probabilities: np.ndarray, source: str, data_root: Path,
                  min_confidence: float, deepapl_classes: Mapping[str, str]) -> list[dict]:
    """The worklist's rows for one source's training cells (``probabilities``: the served model's)."""
    rows = []
    for index in discordant(probabilities, labels, min_confidence):
        path = paths[index]
        top = int(probabilities[index].argmax())
        rows.append({
            "image": PurePosixPath(Path(path).resolve().relative_to(data_root.resolve())).as_posix(),
            "source": source,
            "patient": Path(path).parent.name if source == "deepapl" else "",
            "stored_label": CELL_TYPES[int(labels[index])],
            "expert_class": expert_class_of(path, source, deepapl_classes),
            "network_label": CELL_TYPES[top],
            "network_probability": f"{probabilities[index, top]:.3f}",
            "stored_label_probability": f"{probabilities[index, labels[index]]:.3f}",
            "second_reading": ""})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


_PAGE_SCRIPT = r"""
// The reading form of worklist.html (training.second_reading): readings kept in localStorage, downloaded as the
// filled worklist CSV, and loaded back from such a file.
"use strict";
const ROWS = JSON.parse(document.getElementById("rows").textContent);
const CONFIG = JSON.parse(document.getElementById("config").textContent);
const selects = Array.from(document.querySelectorAll("select.reading"));
const selectOf = new Map(selects.map(select => [ROWS[select.dataset.row].image, select]));
let saved = {};
try { saved = JSON.parse(localStorage.getItem(CONFIG.storage_key) || "{}"); } catch (error) { saved = {}; }

function progress() {
  const read = selects.filter(select => select.value !== "").length;
  document.getElementById("progress").textContent = read + " of " + selects.length + " cells read ";
}
function record(image, value) {
  if (value) saved[image] = value; else delete saved[image];
  localStorage.setItem(CONFIG.storage_key, JSON.stringify(saved));
}
for (const [image, select] of selectOf) {
  if (saved[image]) select.value = saved[image];
  select.addEventListener("change", () => { record(image, select.value); progress(); });
}
progress();
document.getElementById("show-labels").addEventListener("change", event => {
  document.body.classList.toggle("blind", !event.target.checked);
});

function field(value) {
  const text = String(value ?? "");
  return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}
document.getElementById("download").addEventListener("click", () => {
  const lines = [CONFIG.columns.join(",")];
  for (const select of selects) {
    const row = {...ROWS[select.dataset.row], second_reading: select.value};
    lines.push(CONFIG.columns.map(column => field(row[column])).join(","));
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\r\n") + "\r\n"], {type: "text/csv"}));
  link.download = "worklist-readings.csv";
  link.click();
  URL.revokeObjectURL(link.href);
});

function parseCsv(text) {  // RFC 4180: quoted fields, doubled quotes, CRLF or LF
  const records = [];
  let record = [], value = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { value += '"'; i++; }
      else if (c === '"') quoted = false;
      else value += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { record.push(value); value = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      record.push(value); records.push(record); record = []; value = "";
    } else value += c;
  }
  if (value !== "" || record.length) { record.push(value); records.push(record); }
  return records;
}
document.getElementById("load").addEventListener("change", async event => {
  const file = event.target.files[0];
  const status = document.getElementById("loaded");
  if (!file) return;
  const records = parseCsv((await file.text()).replace(/^\uFEFF/, ""));
  const header = records.length ? records[0].map(name => name.trim()) : [];
  const imageAt = header.indexOf("image"), readingAt = header.indexOf("second_reading");
  if (imageAt < 0 || readingAt < 0) {
    status.textContent = file.name + " is not a worklist (no image or second_reading column): nothing loaded";
    return;
  }
  let loaded = 0, elsewhere = 0, unknown = 0;
  for (const fields of records.slice(1)) {
    const reading = (fields[readingAt] || "").trim().toLowerCase();
    if (!reading) continue;
    const select = selectOf.get((fields[imageAt] || "").trim());
    if (!select) { elsewhere++; continue; }
    if (!Array.from(select.options).some(option => option.value === reading)) { unknown++; continue; }
    select.value = reading;
    record(ROWS[select.dataset.row].image, reading);
    loaded++;
  }
  progress();
  status.textContent = loaded + " readings loaded from " + file.name
    + (elsewhere ? "; " + elsewhere + " of cells not in this worklist left out" : "")
    + (unknown ? "; " + unknown + " not a cell type or exclude, left out" : "");
  event.target.value = "";
});
"""


def _script_json(value) -> str:
    """JSON to embed in a <script> element: no "</" can end the element early."""
    return json.dumps(value).replace("</", "<\\/")


def write_html(rows: list[dict], data_root: Path, model: str, min_confidence: float, path: Path) -> None:
    """One self-contained page to read the cells in: a reading per cell chosen on the page, kept in the browser
    until the reader downloads them as a filled worklist CSV (the file ``--second-reading`` takes).

    The stored label, the network's answer and the file name (PBC's carry the type) are hidden until the reader
    chooses to see them, so that a first pass can be blind; the page counts the cells read."""
    worklist_id = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    config = {"columns": list(COLUMNS), "storage_key": f"second-reading:{worklist_id}"}
    options = "".join(f'<option value="{value}">{label}</option>' for value, label in
                      [("", "not read"), *((t, t) for t in CELL_TYPES), (EXCLUDE, "exclude (cannot tell)")])
    cells = []
    for number, row in enumerate(rows, start=1):
        picture = base64.b64encode((data_root / row["image"]).read_bytes()).decode()
        kind = mimetypes.guess_type(row["image"])[0] or "image/jpeg"
        cells.append(
            f"<tr><td>{number}</td><td><img alt=\"cell {number}\" src=\"data:{kind};base64,{picture}\"></td>"
            f"<td><select class=\"reading\" data-row=\"{number - 1}\" aria-label=\"reading of cell {number}\">"
            f"{options}</select></td>"
            f"<td class=\"labels\"><b>{html.escape(row['stored_label'])}</b><br>{html.escape(row['expert_class'])}</td>"
            f"<td class=\"labels\">{html.escape(row['network_label'])} {row['network_probability']}<br>"
            f"(stored label {row['stored_label_probability']})</td>"
            f"<td class=\"labels\"><code>{html.escape(row['image'])}</code><br>{html.escape(row['source'])} "
            f"{html.escape(row['patient'])}</td></tr>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Second reading: {len(rows)} training cells</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}}img{{width:216px;height:216px}}
body.blind .labels{{display:none}}#bar{{position:sticky;top:0;background:#fff;padding:.5em 0}}</style></head>
<body class="blind"><h1>Second reading: {len(rows)} training cells</h1>
<p>The stored label of each cell below is not what {html.escape(model)} answers, although it gives its answer at
least {min_confidence:g}; the least likely stored labels come first. Choose what you see for each cell: a cell
type, or <i>exclude</i> when it cannot be told or is not a usable cell; leave <i>not read</i> for a cell you skip.
The labels and the file names (PBC's name the type) are hidden so that you can read blind first. Your readings
are kept in this browser; download them now and then (a browser that clears its data at log-off loses them), and
continue from the downloaded file on any machine. Give the final file to <code>train_cells --second-reading</code>.
Research use only: these are the data sets' own images (see the model card); keep this page and the files with
you.</p>
<div id="bar"><span id="progress"></span>
<label><input type="checkbox" id="show-labels"> show the stored label, the network's answer and the file</label>
<button id="download">Download the readings (CSV)</button>
<label>continue from a downloaded file: <input type="file" id="load" accept=".csv,text/csv"></label>
<span id="loaded" role="status"></span></div>
<table><thead><tr><th>#</th><th>cell</th><th>your reading</th><th class="labels">stored label<br>(expert class)</th>
<th class="labels">network</th><th class="labels">image</th></tr></thead><tbody>
{chr(10).join(cells)}
</tbody></table>
<script id="rows" type="application/json">{_script_json(rows)}</script>
<script id="config" type="application/json">{_script_json(config)}</script>
<script>{_PAGE_SCRIPT}</script></body></html>
"""
    path.write_text(page)


def main(argv: list[str] | None = None) -> None:
    from services.cell_classifier.inference import CellModel
    from services.cell_classifier.settings import DEFAULT_MODEL_DIR
    from training import deepapl_dataset, pbc_dataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for worklist.csv and worklist.html")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--variant", choices=("auto", "float", "int8"), default="auto",
                        help="the model file that scores the cells (auto: the service's choice on CPU)")
    parser.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE,
                        help="list a cell when the network gives another class at least this probability")
    parser.add_argument("--sources", nargs="+", choices=("deepapl", "pbc"), default=["deepapl", "pbc"])
    parser.add_argument("--per-class-limit", type=int, default=None, help="a few cells per class (smoke runs)")
    parser.add_argument("--cache-dir", default=str(REPO_ROOT / ".cache"))
    args = parser.parse_args(argv)
    if not 0.0 <= args.min_confidence <= 1.0:
        parser.error("--min-confidence is a probability, between 0 and 1")

    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    model = CellModel(args.model_dir, "cpu", variant=args.variant)
    name = f"{model.card['name']} {model.card['version']} ({model.variant})"
    deepapl_root, pbc_root = deepapl_dataset.data_dir(), pbc_dataset.data_dir()
    roots = {"deepapl": deepapl_root, "pbc": pbc_root}
    if len({root.resolve().parent for root in (roots[s] for s in args.sources)}) != 1:
        raise SystemExit("the sources' folders must sit in one data folder (as ../shared/data/ holds them), so that "
                         "each row names its image below it")
    data_root = roots[args.sources[0]].resolve().parent
    deepapl_classes = ({c.path.as_posix(): c.expert_class for c in deepapl_dataset.verified_cells(deepapl_root)}
                       if "deepapl" in args.sources else {})
    rows: list[dict] = []
    for source in args.sources:
        module = deepapl_dataset if source == "deepapl" else pbc_dataset
        train = module.split_dataset(roots[source], cache_dir, args.per_class_limit)[0]
        probabilities = np.concatenate([model.predict(train.images[i: i + 256]) for i in range(0, len(train), 256)])
        listed = worklist_rows(train.paths, train.labels, probabilities, source, data_root, args.min_confidence,
                               deepapl_classes)
        agree = float(np.mean(probabilities.argmax(axis=1) == train.labels))
        print(f"{source}: {len(train)} training cells, {agree:.3f} answered with their label by {name}; "
              f"{len(listed)} listed", flush=True)
        rows += listed
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "worklist.csv")
    write_html(rows, data_root, name, args.min_confidence, args.out / "worklist.html")
    print(f"wrote {args.out / 'worklist.csv'} and worklist.html ({len(rows)} cells). Read them on the page and "
          f"download the readings (or fill the CSV's second_reading column), then: make train-cells "
          f"TRAIN_ARGS=\"--second-reading FILE ...\"", flush=True)


if __name__ == "__main__":
    main()
