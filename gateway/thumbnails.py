"""Cell thumbnails for review: one bounded JPEG per uploaded image, by the sha256 of its bytes.

Size bound: at most ``MAX_SIDE`` x ``MAX_SIDE`` pixels (aspect kept), JPEG quality ``QUALITY``:
about 4-8 KB for a PBC cell image, never more than ``MAX_BYTES`` (larger results are stored at
lower quality), so 2000 cells of a patient stay under 16 MB.
"""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from gateway.store.repository import Thumbnail

MAX_SIDE = 144
QUALITY = 85
MAX_BYTES = 8 * 1024
MAX_PIXELS = 64_000_000


def make_thumbnail(sha256: str, data: bytes) -> Thumbnail | None:
    """None when the image cannot be decoded (those cells are listed under ``failed`` anyway)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                return None
            image.draft("RGB", (MAX_SIDE * 2, MAX_SIDE * 2))
            image = image.convert("RGB")
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    except Exception:  # noqa: BLE001 - any undecodable image simply has no thumbnail
        return None
    for quality in (QUALITY, 70, 50, 30):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= MAX_BYTES:
            break
    return Thumbnail(sha256, buffer.getvalue(), image.width, image.height)


def make_thumbnails(images: dict[str, bytes]) -> list[Thumbnail]:
    """sha256 -> bytes of the images to keep -> their thumbnails (undecodable ones left out); Pillow
    releases the GIL while decoding and resizing, so a few threads use the cores."""
    if len(images) < 32:
        made = [make_thumbnail(sha, data) for sha, data in images.items()]
    else:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            made = list(pool.map(lambda item: make_thumbnail(*item), images.items()))
    return [t for t in made if t is not None]
