"""aml-classify's patient folders: which folders are patients, which files are their images, and what
is refused before any upload (an invalid id, a subfolder, more images or larger ones than the gateway takes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from gateway.settings import GatewaySettings
from shared.schemas import PATIENT_ID_PATTERN

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
PATIENT_ID = re.compile(PATIENT_ID_PATTERN)
HIDDEN_PREFIXES = (".", "@")  # macOS "._x.jpg" and ".DS_Store", ".ipynb_checkpoints", Synology "@eaDir"
SYSTEM_FOLDERS = {"system volume information", "$recycle.bin", "lost+found", "#recycle", "#snapshot"}

# the gateway's own defaults (MAX_IMAGES, GATEWAY_MAX_IMAGE_BYTES), read from its settings rather than copied
DEFAULT_MAX_IMAGES = GatewaySettings.model_fields["max_images"].default
DEFAULT_MAX_IMAGE_MIB = GatewaySettings.model_fields["max_image_bytes"].default / 2 ** 20


class PatientProblem(ValueError):
    """A patient folder that must not be sent (its text is the row's error)."""


class Limits(NamedTuple):
    max_images: int
    max_image_bytes: int
    retries: int


def is_hidden(path: Path) -> bool:
    """Not data: hidden files, NAS and OS metadata (AppleDouble "._x.jpg", "@eaDir", recycle bins)."""
    return path.name.startswith(HIDDEN_PREFIXES) or path.name.lower() in SYSTEM_FOLDERS


def patient_folders(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not is_hidden(p))


def check_patient_id(name: str) -> None:
    """The gateway's own rule, checked before any image is read: a folder such as "PAT#2" would
    otherwise be posted as another patient ("PAT") or answered with a 404/422 after a full upload."""
    if not PATIENT_ID.fullmatch(name):
        raise PatientProblem(f"not a valid patient id: {name!r} (1-64 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit); rename the folder")


def patient_images(folder: Path) -> list[Path]:
    """The images directly in ``folder``. A visible subfolder is refused: its images would be left out
    and the differential reported from a fraction of the patient's cells."""
    entries = [p for p in folder.iterdir() if not is_hidden(p)]
    subfolders = sorted(p.name for p in entries if p.is_dir())
    if subfolders:
        raise PatientProblem(f"subfolder(s) {', '.join(subfolders[:5])} in the patient folder: put a patient's "
                             "images directly in its folder")
    return sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES)


def check_limits(images: list[Path], limits: Limits) -> dict[Path, int]:
    """Refuse what the gateway would refuse with 413, before uploading it on every rerun; the images'
    sizes in bytes, which the upload then holds them to."""
    if len(images) > limits.max_images:
        raise PatientProblem(f"{len(images)} images, more than --max-images {limits.max_images} "
                             "(the gateway's MAX_IMAGES)")
    sizes = {p: _size(p) for p in images}
    too_big = [p for p in images if sizes[p] > limits.max_image_bytes]
    if too_big:
        mib = limits.max_image_bytes / 2 ** 20
        named = ", ".join(f"{p.name} ({sizes[p] / 2 ** 20:.1f} MiB)" for p in too_big[:5])
        raise PatientProblem(f"image(s) over --max-image-mib {mib:g} (the gateway's GATEWAY_MAX_IMAGE_BYTES): {named}")
    return sizes


def unreadable(path: Path, exc: OSError) -> PatientProblem:
    return PatientProblem(f"cannot read {path.name}: {exc.strerror or type(exc).__name__}"
                          + (" (a broken link?)" if path.is_symlink() else ""))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise unreadable(path, exc) from exc
