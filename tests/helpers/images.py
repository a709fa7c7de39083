"""Real test images from ../shared/data and encoders for every supported input kind."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

from PIL import Image

from shared.vocabulary import CELL_TYPES

DATA_DIR = Path(os.environ.get("AML_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
FULLSIZE_DIR = DATA_DIR / "pbc_fullsize"


def fullsize_images() -> list[tuple[str, Path]]:
    """The 64 full-size originals as (true class, path), 8 per class, in a stable order."""
    items = [(cell_type, path) for cell_type in CELL_TYPES for path in sorted((FULLSIZE_DIR / cell_type).iterdir())]
    if len(items) < len(CELL_TYPES):
        raise FileNotFoundError(f"no images under {FULLSIZE_DIR}: see README, 'Data'")
    return items


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
