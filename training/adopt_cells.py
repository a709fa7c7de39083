"""Serve a trained cell-model candidate: copy it into the served model folder and redo what depends on it.

    make adopt-cells CANDIDATE=DIR    (python -m training.adopt_cells DIR [--steps check copy quantize apl robustness])

For a candidate (the ``--out`` folder of ``make train-cells``) that the rule fixed before its run has adopted
(docs/cell_model_experiments.md); on 2 cores the whole chain takes about an hour. The steps, in order:

1. ``check``: the candidate's card and files (float, and int8 if it was quantized already) pass the service's own
   check (vocabulary, input shape, sha256) and its version is above the served one's;
2. ``copy``: its network, card, card text and confusion matrix into the served folder, with its int8 file when
   it was quantized already (``python -m training.quantize_cells --model-dir DIR``, as an adoption rule may
   require before it decides); the served int8 file and APL cell head, which were made from the old network
   (the service would refuse them), are removed;
3. ``quantize``: ``training.quantize_cells`` (the int8 file, and whether it meets its criterion, into the card);
   skipped when the served folder already holds an int8 file the service accepts for the new network;
4. ``apl``: ``training.train_apl`` with the alert's minor version raised (its cell head reads this network's
   embedding, so the old one no longer fits);
5. ``robustness``: ``training.robustness`` (docs/cell_robustness.md).

Each step prints what it does; a step that fails stops the chain, and ``--steps`` resumes from any of them.
What is left by hand is printed at the end (benchmarks, the subtype stage-1 figures, the README and the
Makefile's train-cells recipe).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from services.cell_classifier.inference import CARD_FILE, ModelIntegrityError, check_model, model_variants
from services.cell_classifier.settings import DEFAULT_MODEL_DIR
from services.subtype.apl import APL_CARD_FILE
from services.subtype.settings import DEFAULT_MODEL_DIR as SUBTYPE_MODEL_DIR

STEPS = ("check", "copy", "quantize", "apl", "robustness")
CANDIDATE_FILES = ("cell_cnn.onnx", "cell_cnn.keras", CARD_FILE, "MODEL_CARD.md", "confusion_matrix.png")
LEFT_BY_HAND = (
    "make cell-service, then python -m training.service_check --in-process (and --as-originals): no label may "
    "differ from in process; the README's through-the-service figures from its tables",
    "make bench-cells, and docs/benchmarks.md from its output",
    "python -m training.subtype_stage1_oof, and the README's stage-1 figures on the new counts",
    "the README's figures (\"How good is it\") and docs/cell_model_experiments.md",
    "the Makefile's train-cells recipe, if the candidate's differs",
)


class AdoptionError(ValueError):
    """The candidate cannot be served: what is wrong and what to do."""


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError as error:
        raise AdoptionError(f"version {version!r} is not of the form MAJOR.MINOR.PATCH") from error


def next_minor(version: str) -> str:
    """``1.2.0`` -> ``1.3.0``: a model retrained on another network's embedding, same recipe."""
    major, minor, *_ = version_tuple(version) + (0, 0)
    return f"{major}.{minor + 1}.0"


def variant_files(card: dict) -> list[str]:
    """The serving variants' files a cell card lists beside its float network (int8)."""
    return [entry["file"] for name, entry in model_variants(card).items() if name != "float"]


def made_from_network(card: dict) -> list[str]:
    """The files a cell card lists beside its float network that were made from it: the other serving
    variants (int8) and the APL cell head, which reads its embedding."""
    return variant_files(card) + ([card["apl_cell_head"]["file"]] if card.get("apl_cell_head") else [])


def check_candidate(candidate: Path, served: Path) -> dict:
    """The candidate's card, once it passes the service's own check and is newer than the served model."""
    if candidate.resolve() == served.resolve():
        raise AdoptionError(f"{candidate} is the served folder itself (make train-cells writes there unless given "
                            "--out): run only the later steps, --steps quantize apl robustness")
    missing = [name for name in CANDIDATE_FILES if not (candidate / name).is_file()]
    if missing:
        raise AdoptionError(f"{candidate} lacks {', '.join(missing)}: is it the --out folder of make train-cells?")
    try:
        card = json.loads((candidate / CARD_FILE).read_text())
        variants = model_variants(card)
    except (ValueError, KeyError, TypeError) as error:
        raise AdoptionError(f"{candidate / CARD_FILE} is not a cell model card: {error!r}") from error
    for variant in variants:  # float, and int8 when the candidate was quantized already
        try:
            check_model(candidate, "cpu", variant)
        except Exception as error:  # the service's check says why it would refuse the file
            raise AdoptionError(f"the cell service would refuse {candidate} ({variant}): {error}") from error
    served_card = json.loads((served / CARD_FILE).read_text())
    if card["name"] != served_card["name"]:
        raise AdoptionError(f"the candidate is {card['name']}, the served model {served_card['name']}")
    if version_tuple(card["version"]) <= version_tuple(served_card["version"]):
        raise AdoptionError(f"the candidate's version {card['version']} is not above the served "
                            f"{served_card['version']}: train it with --version")
    return card


def copy_candidate(candidate: Path, served: Path) -> tuple[list[str], list[str]]:
    """Copy the candidate's files over the served ones; remove what the served card says was made from the old
    network and the candidate does not replace. Returns (copied, removed)."""
    copied = (*CANDIDATE_FILES, *variant_files(json.loads((candidate / CARD_FILE).read_text())))
    removed = [name for name in made_from_network(json.loads((served / CARD_FILE).read_text()))
               if (served / name).exists() and name not in copied]
    for name in copied:
        shutil.copy2(candidate / name, served / name)
    for name in removed:
        (served / name).unlink()
    return list(copied), removed


def quantized_already(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds an int8 file the service accepts for its float network (``check_model``: made
    from that network, and matching its sha256)."""
    for variant in model_variants(json.loads((model_dir / CARD_FILE).read_text())):
        if variant == "float":
            continue
        try:
            check_model(model_dir, "cpu", variant)
            return True
        except ModelIntegrityError:
            continue
    return False


def run(candidate: Path, steps: tuple[str, ...], served: Path = DEFAULT_MODEL_DIR,
        subtype_dir: Path = SUBTYPE_MODEL_DIR) -> None:
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise AdoptionError(f"unknown steps {unknown}; the steps are {list(STEPS)}")
    if "copy" in steps:
        steps = (*steps, "check")  # never copy an unchecked candidate, even when resuming at the copy
    for step in STEPS:
        if step not in steps:
            continue
        started = time.monotonic()
        print(f"[{step}] ...", flush=True)
        if step == "check":
            card = check_candidate(candidate, served)
            print(f"[check] {card['name']} {card['version']} (sha256 {card['sha256'][:12]}...) can be served",
                  flush=True)
        elif step == "copy":
            copied, removed = copy_candidate(candidate, served)
            print(f"[copy] {', '.join(copied)} into {served}; removed {removed or 'nothing'}", flush=True)
        elif step == "quantize" and quantized_already(served):
            print("[quantize] skipped: the card lists an int8 file made from this network (copied with it)",
                  flush=True)
        elif step == "quantize":
            from training import quantize_cells  # noqa: PLC0415 (TensorFlow-free, but heavy imports)
            quantize_cells.main(["--model-dir", str(served)])
        elif step == "apl":
            from training import train_apl  # noqa: PLC0415
            version = next_minor(json.loads((subtype_dir / APL_CARD_FILE).read_text())["version"])
            print(f"[apl] APL alert {version} on the new embedding", flush=True)
            train_apl.main(["--cell-model-dir", str(served), "--subtype-model-dir", str(subtype_dir),
                            "--version", version])
        elif step == "robustness":
            from training import robustness  # noqa: PLC0415
            robustness.main(["--model-dir", str(served)])
        print(f"[{step}] done in {time.monotonic() - started:.0f} s", flush=True)
    if set(steps) - {"check"}:
        print("left to do by hand:\n" + "\n".join(f"- {item}" for item in LEFT_BY_HAND), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidate", type=Path, help="the --out folder of make train-cells")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), metavar="STEP",
                        help=f"steps to run, in their fixed order (default all: {' '.join(STEPS)})")
    args = parser.parse_args(argv)
    try:
        run(args.candidate, tuple(args.steps))
    except AdoptionError as error:
        parser.exit(2, f"adopt_cells: {error}\n")


if __name__ == "__main__":
    main()
