"""Real test images from ../shared/data and encoders for every supported input kind."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

from PIL import Image

DATA_DIR = Path(os.environ.get("AML_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
FULLSIZE_DIR = DATA_DIR / "pbc_fullsize"
DEEPAPL_DIR = DATA_DIR / "deepapl_discovery"
PBC_FOLDERS = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")


def pbc_label(folder: str, file_name: str) -> str:
    """Vocabulary 2.0 label of a PBC file: its folder, except promyelocytes (``PMY_``) filed under ig."""
    return "promyelocyte" if file_name.startswith("PMY_") else folder


def fullsize_images() -> list[tuple[str, Path]]:
    """The 64 full-size originals as (true label, path), 8 per PBC folder, in a stable order."""
    items = [(pbc_label(folder, path.name), path)
             for folder in PBC_FOLDERS for path in sorted((FULLSIZE_DIR / folder).iterdir())]
    if len(items) < len(PBC_FOLDERS):
        raise FileNotFoundError(f"no images under {FULLSIZE_DIR}: see README, 'Data'")
    return items


def deepapl_images(expert_class: str, n: int, patients: tuple[str, ...] | None = None) -> list[Path]:
    """Up to ``n`` verified DeepAPL images of one expert class (optionally of some patients), stable order."""
    import csv

    with open(DEEPAPL_DIR / "cells.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["verified"] == "1" and r["expert_class"] == expert_class
                and (patients is None or r["patient_id"] in patients)]
    return [DEEPAPL_DIR / r["file"] for r in rows[:n]]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG file that declares a huge 8-bit grayscale image (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 16, 9)  # a few rows; the declared size is what matters
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
