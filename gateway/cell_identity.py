"""Which cell model made a cell's answer: the network file, the labelling rules and the APL head. One patient's
cells come from one such model (``pipeline``), and the per-cell cache is keyed by it, so that a new file, a
new threshold or a new head never reads another's cached answers (erasure finds the keys the same way)."""

from __future__ import annotations

from collections.abc import Mapping


def cell_cache_model(cell_sha256: str, rules_sha256: str | None, apl_head_sha256: str | None) -> str:
    """The model part of a per-cell cache key (``cell:<this>:<image sha256>``): the cell model's file hash,
    the hash of the rules that turn its output into labels (where the service reports it), and the APL
    head's where there is one, so that neither a new head nor a new threshold ever reads cached answers."""
    key = f"{cell_sha256}/{rules_sha256}" if rules_sha256 else cell_sha256
    return f"{key}+{apl_head_sha256}" if apl_head_sha256 else key


def cell_cache_key(cache_model: str, image_sha256: str) -> str:
    """The per-cell cache key of one image under one model (``cell_cache_model``): the only place it is built,
    for the lookup, the write and the erasure alike."""
    return f"cell:{cache_model}:{image_sha256}"


def cell_model_identity(model: Mapping) -> tuple[str, str | None, str | None]:
    """What makes a cell's answer: the CNN file, the labelling rules and the APL head (a cell service's
    ``model``)."""
    return model["sha256"], model.get("rules_sha256"), (model.get("apl_head") or {}).get("sha256")


def cell_model_identity_of(models: Mapping) -> tuple[str | None, str | None, str | None]:
    """The same for a report's or the gateway's ``models`` (``cell`` and ``apl_cell_head``)."""
    cell = models.get("cell") or {}
    return cell.get("sha256"), cell.get("rules_sha256"), (models.get("apl_cell_head") or {}).get("sha256")


def cell_cache_model_of(models: Mapping) -> str:
    """``cell_cache_model`` of a stored report's ``models``."""
    return cell_cache_model(*cell_model_identity_of(models))
