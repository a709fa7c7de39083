"""Decode one uploaded image into the network input, or say precisely why not."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.preprocessing import (DECODERS, DEFAULT_DECODER, IMAGE_SIZE, RGB_BYTES_PER_PIXEL,
                                  conversion_bytes_per_pixel, preprocess, request_scale)

SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "TIFF", "BMP"})


class ImageRejected(ValueError):
    """The image cannot be classified; the message is safe to show to the caller."""


def wide_mode_pixel_limit(image: Image.Image, max_pixels: int) -> int:
    """The pixel limit of an opened image: ``max_pixels`` scaled down by how much more memory than 8-bit RGB its
    mode's conversion takes (``max_pixels`` itself for 8-bit modes)."""
    return max_pixels * RGB_BYTES_PER_PIXEL // conversion_bytes_per_pixel(image)


def decode_image(data: bytes, max_pixels: int, decoder: str = DEFAULT_DECODER, size: int = IMAGE_SIZE,
                 min_side: int = 1) -> np.ndarray:
    """Bytes of a JPEG/PNG/TIFF/BMP file -> preprocessed ``(size, size, 3)`` uint8 array (``size``: the
    model's input side, from its card), or ``ImageRejected``.

    The file is decoded at the scale the network needs (``shared.preprocessing.request_scale``;
    ``decoder="full"``: at full size, the earlier path, kept for the benchmark).

    ``max_pixels`` is the limit of 8-bit images; 16-bit, 32-bit, float and transparent ones, whose conversion
    to 8-bit RGB takes several times their memory before the resize (a 92 KB single-colour 16-bit PNG of
    6300x6300 took 0.9 GB), get a proportionally lower one (``wide_mode_pixel_limit``), refused before
    decoding, so that no image costs more than an 8-bit RGB one at ``max_pixels``. An image narrower or lower
    than ``min_side`` pixels is refused as too small to show a cell."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, not {decoder!r}")
    if not data:
        raise ImageRejected("empty file")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageRejected(f"too many pixels (limit {max_pixels})") from None
    except UnidentifiedImageError:
        raise ImageRejected("not a decodable image (supported: JPEG, PNG, TIFF, BMP)") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is the image's fault
        raise ImageRejected(f"not a decodable image: {type(exc).__name__}") from None
    with image:
        if image.format not in SUPPORTED_FORMATS:
            raise ImageRejected(f"unsupported format {image.format} (supported: JPEG, PNG, TIFF, BMP)")
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageRejected("image has no pixels")
        if width < min_side or height < min_side:
            raise ImageRejected(f"too small to show a cell: {width}x{height} px (at least {min_side} px a side; "
                                "send the single-cell crop, not a thumbnail)")
        if width * height > max_pixels:
            raise ImageRejected(f"too many pixels: {width}x{height} exceeds the limit of {max_pixels}")
        limit = wide_mode_pixel_limit(image, max_pixels)
        if width * height > limit:
            raise ImageRejected(f"too many pixels for a {image.mode} image: {width}x{height} exceeds the limit of "
                                f"{limit} for 16-bit, 32-bit, float and transparent images")
        try:
            request_scale(image, size, decoder)  # after the pixel check: it sees the file's own size
            image.load()
            return preprocess(image, size)
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
            raise ImageRejected(f"corrupt or truncated image data ({type(exc).__name__})") from None
