"""Training cells to leave out: a list of images whose label is in doubt (``train_cells --exclude-cells FILE``).

FILE holds one image per line, as the end of its path: below the data folder (``deepapl_discovery/images/
Patient_00/0025.jpg``, ``pbc/neutrophil/SNE_12345.jpg``) or shorter, as long as it names one image; every image
whose path ends with those components is left out. Blank lines and ``#`` comments are skipped. Only
training cells are removed. A listed cell of a validation or test split is refused, since leaving it out would
change what the model is measured on, and so is a line that names no image at all (a typo would otherwise
silently exclude nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import numpy as np

from shared.hashing import file_sha256
from training.pbc_dataset import Split

SPLIT_NAMES = ("train", "validation", "test")


def entry_path(text: str) -> str:
    """An image named in a list or a worklist, in the form ``matches`` takes: posix, relative, either slash."""
    return PurePosixPath(text.strip().replace("\\", "/")).as_posix().lstrip("/")


def read_list(path: Path) -> list[str]:
    """The image paths listed in ``path`` (posix form, no blanks, no comments, each once)."""
    entries: list[str] = []
    for line in Path(path).read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            entries.append(entry_path(entry))
    return list(dict.fromkeys(entries))


def _tail(path: str, parts: int) -> str:
    return "/".join(PurePosixPath(Path(path).as_posix()).parts[-parts:])


def matches(paths: list[str], entries: list[str]) -> dict[str, list[int]]:
    """For each entry, the indices of ``paths`` whose last components are the entry's components."""
    found: dict[str, list[int]] = {entry: [] for entry in entries}
    for parts in sorted({len(PurePosixPath(e).parts) for e in entries}):
        wanted = {e for e in entries if len(PurePosixPath(e).parts) == parts}
        for index, path in enumerate(paths):
            tail = _tail(path, parts)
            if tail in wanted:
                found[tail].append(index)
    return found


def held_out_hits(splits: tuple[Split, Split, Split], entries: list[str]) -> tuple[str, list[str]] | None:
    """The first of one source's validation and test splits that ``entries`` name cells of, as (split name, the
    entries naming its cells); None when they name training cells only. Those cells are what a model is measured
    on, so no list may change them."""
    for split_name, split in zip(SPLIT_NAMES[1:], splits[1:]):
        hits = sorted(e for e, rows in matches(split.paths, entries).items() if rows)
        if hits:
            return split_name, hits
    return None


def with_training_cells(splits: tuple[Split, Split, Split], keep: np.ndarray,
                        labels: np.ndarray | None = None) -> tuple[Split, Split, Split]:
    """One source's splits with the training split cut to the cells ``keep`` marks, labelled ``labels`` (the
    training split's own labels unless given); validation and test unchanged."""
    train = splits[0]
    labels = train.labels if labels is None else labels
    return (Split(train.images[keep], labels[keep], [p for p, k in zip(train.paths, keep) if k], train.source),
            *splits[1:])


def exclude(sources: Mapping[str, tuple[Split, Split, Split]], list_file: Path):
    """``sources`` with the listed training cells removed, and the card's record of what was left out.

    Raises ``ValueError`` when a listed image is a validation or test cell or is no image of any split."""
    entries = read_list(list_file)
    kept: dict[str, tuple[Split, Split, Split]] = {}
    named: set[str] = set()
    removed: dict[str, int] = {}
    for source, splits in sources.items():
        held_out = held_out_hits(splits, entries)
        if held_out:
            split_name, hits = held_out
            raise ValueError(f"{list_file}: {len(hits)} listed image(s) are {source} {split_name} cells "
                             f"(e.g. {hits[0]}); only training cells may be left out")
        train = splits[0]
        found = matches(train.paths, entries)
        drop = np.zeros(len(train), bool)
        for entry, rows in found.items():
            if rows:
                named.add(entry)
                drop[rows] = True
        removed[source] = int(drop.sum())
        kept[source] = with_training_cells(splits, ~drop)
    unknown = [e for e in entries if e not in named]
    if unknown:
        raise ValueError(f"{list_file}: {len(unknown)} listed image(s) are no image of any split "
                         f"(e.g. {unknown[0]})")
    return kept, {"list": Path(list_file).name, "sha256": file_sha256(list_file),
                  "cells": int(sum(removed.values())), "by_source": removed}
