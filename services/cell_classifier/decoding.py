"""Decode one uploaded image into the network input, or say precisely why not."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.preprocessing import DECODERS, DEFAULT_DECODER, IMAGE_SIZE, preprocess, request_scale

SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "TIFF", "BMP"})


class ImageRejected(ValueError):
    """The image cannot be classified; the message is safe to show to the caller."""


def decode_image(data: bytes, max_pixels: int, decoder: str = DEFAULT_DECODER, size: int = IMAGE_SIZE) -> np.ndarray:
    """Bytes of a JPEG/PNG/TIFF/BMP file -> preprocessed ``(size, size, 3)`` uint8 array (``size``: the
    model's input side, from its card), or ``ImageRejected``.

    The file is decoded at the scale the network needs (``shared.preprocessing.request_scale``;
    ``decoder="full"``: at full size, the earlier path, kept for the benchmark)."""
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
        if width * height > max_pixels:
            raise ImageRejected(f"too many pixels: {width}x{height} exceeds the limit of {max_pixels}")
        try:
            request_scale(image, size, decoder)  # after the pixel check: it sees the file's own size
            image.load()
            return preprocess(image, size)
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
            raise ImageRejected(f"corrupt or truncated image data ({type(exc).__name__})") from None
