"""How a repeated upload finds its stored report: the images it carries and the models that made the report.

A report chain (version 1 and its reviews) is stored under ``images_key``, the hash of the (image hash, file
name) pairs alone. A repeated upload answers the newest chain head of those images whose models are the
models that answer now (``same_models``): a review made after the subtype service was upgraded names the
new subtype model, and is found under it. Rows stored before revision 0004 have no ``images_key``; they are
found by ``content_key``, which hashes the models' files with the images, as gateways did then, and their
models are compared the same way."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

MODEL_KINDS = ("cell", "subtype", "apl_cell_head", "apl_patient")


def _image_lines(hashes: list[str], images: list[tuple[str, bytes]]) -> list[str]:
    return sorted(f"{sha} {name}" for sha, (name, _) in zip(hashes, images))


def images_key(hashes: list[str], images: list[tuple[str, bytes]]) -> str:
    """The (image hash, file name) pairs of one upload, in any order."""
    return hashlib.sha256("\n".join(["images"] + _image_lines(hashes, images)).encode()).hexdigest()


def _apl_key(models: Mapping) -> list[str]:
    """The APL models' part of a content key (nothing when neither is deployed)."""
    head, patient = models.get("apl_cell_head"), models.get("apl_patient")
    if not head and not patient:
        return []
    return [f"apl {(head or {}).get('sha256')} {(patient or {}).get('sha256')}"]


def _cell_rules_key(models: Mapping) -> list[str]:
    """The cell model's labelling rules' part of a content key (nothing from an older service)."""
    rules = models["cell"].get("rules_sha256")
    return [f"rules {rules}"] if rules else []


def content_key(models: Mapping, hashes: list[str], images: list[tuple[str, bytes]]) -> str:
    """The models' files (and the cell model's rules) with the images, as gateways before revision 0004 keyed a
    report: still stored with each version, and how rows of that time are found."""
    return hashlib.sha256("\n".join(
        [models["cell"]["sha256"], models["subtype"]["sha256"]] + _cell_rules_key(models) + _apl_key(models)
        + _image_lines(hashes, images)).encode()).hexdigest()


def same_model(stored: Mapping | None, current: Mapping | None) -> bool:
    """One model kind: absent on both sides, or the same file and, where both name them, the same rules. Where
    either names no rules (a report made before its service named them), the same name and version as well:
    subtype 2.1.0 and 2.1.1 share every file and differ in their weights, which only the version tells."""
    if stored is None or current is None:
        return stored is None and current is None
    if stored.get("sha256") != current.get("sha256"):
        return False
    rules, now = stored.get("rules_sha256"), current.get("rules_sha256")
    if rules is None or now is None:
        return (stored.get("name"), stored.get("version")) == (current.get("name"), current.get("version"))
    return rules == now


def same_models(stored: Mapping, current: Mapping) -> bool:
    """Whether a stored report's ``models`` are the models that answer now (every kind, ``same_model``)."""
    return all(same_model(stored.get(kind), current.get(kind)) for kind in MODEL_KINDS)
