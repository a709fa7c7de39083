"""The one preprocessing function shared by training and serving.

Any decoded image (any size, any mode: RGB, grayscale, RGBA, 16-bit, CMYK, palette)
becomes an ``IMAGE_SIZE`` x ``IMAGE_SIZE`` x 3 ``uint8`` RGB array:

1. mode conversion to 8-bit RGB (alpha is composited on white, 16-bit is scaled to
   8-bit, CMYK goes through PIL's conversion);
2. a resize of the whole image (no crop) to the square network input with PIL's
   antialiased bilinear filter, so that a 224 px training copy and a 360x363
   original of the same cell give nearly the same array;
3. white balance (``white_balance``): each channel is scaled so that the image's bright
   background (the plasma between the red cells) has the colour the two training hospitals'
   scanners give it. Both are CellaVision systems whose backgrounds agree to a few grey levels,
   so their images barely change, while another scanner's white balance or a bluer/redder stain
   reaches the network in familiar colours (docs/cell_robustness.md: a bluer cast cost 2.0.0
   20 points of accuracy on leukaemic blood, 1 with the white balance).

Files are read at the scale the network needs (``preprocess_file``, or ``request_scale``
between opening and loading): a JPEG large enough is decoded by libjpeg at 1/2, 1/4 or 1/8 scale
(its DCT-domain downscaling, Pillow's ``Image.draft``), choosing the smallest scale that still
leaves ``DRAFT_MIN_FACTOR`` (1.5) times the input size on both sides, and the antialiased resize
above does the rest. A 360x363 original decodes as 180x182 (the resize then blurs as much as it
did from full size); a 224x224 training copy or a 144x144 DeepAPL cell is decoded whole, as
before. Scaling to exactly the input size in the DCT domain (224 -> 112 with no resize left) was
measured and rejected: its sharper image cost the committed network 0.55 points of PBC validation
accuracy. Other formats are decoded whole. ``decoder="full"`` is the earlier path (every file
decoded at full size), kept to measure against; on the 64 full-size originals the two differ by
0.84/255 on average (tests/unit/test_decoder_paths.py states the tolerance).

Normalisation (x / 127.5 - 1) happens inside the network, so the ONNX input is raw uint8.

The mode conversion of step 1 runs at full size: for 16-bit, 32-bit and float images through float64
arrays, for transparent ones through RGBA composites, several times the memory of an 8-bit image
(``conversion_bytes_per_pixel``). A service bounds it by refusing such images above a lower pixel limit
(services/cell_classifier/decoding.py); the conversion itself, and so every array, is unchanged.
"""

from __future__ import annotations

import math
import os
from typing import BinaryIO

import numpy as np
from PIL import Image

IMAGE_SIZE = 112
# Bump when the arrays ``preprocess_file`` gives change (training caches are keyed by it).
# 1: full decode + resize; 2: JPEG DCT-domain downscaling down to the input size (2.0.0's calibration
# and card metrics used it); 3: the same, but never below DRAFT_MIN_FACTOR x the input size;
# 4: white balance after the resize.
PREPROCESSING_VERSION = 4
DRAFT_MIN_FACTOR = 1.5
DECODERS = ("draft", "full")  # "draft": the current version (the default), "full": version 1
DEFAULT_DECODER = "draft"
_SCALABLE_FORMATS = frozenset({"JPEG", "MPO"})

# White balance: the background of an image is, per channel, the value at its brightest
# WHITE_TOP_FRACTION of pixels (the plasma between the red cells; a cell filling the frame is rarer
# than 97 %). Its gain is WHITE_REFERENCE / background, kept within WHITE_GAIN_LIMITS, applied by a
# lookup table. WHITE_REFERENCE is the median background of the training images of both sources
# (PBC 255/229/204, DeepAPL 255/231/206 at 112 px), so the training data change by a few grey levels.
WHITE_REFERENCE = (255.0, 230.0, 204.0)
WHITE_TOP_FRACTION = 0.03
WHITE_GAIN_LIMITS = (0.67, 1.5)
_LEVELS = np.arange(256, dtype=np.float64)

_INTEGER_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
# Peak bytes per pixel of a decoded image and its conversion by ``_to_rgb8`` (measured with Pillow 13 at
# 3000x3000): an 8-bit RGB image is held in 4 (Pillow pads it to 32 bits) and needs no conversion; a 16/32-bit
# or float one holds up to three float64 arrays beside itself (at most 4) and its 8-bit results; a transparent
# one its RGBA copy, a white background, their composite and the RGB result.
RGB_BYTES_PER_PIXEL = 4
NUMERIC_BYTES_PER_PIXEL = 4 + 3 * 8
ALPHA_BYTES_PER_PIXEL = 4 * 5


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def conversion_bytes_per_pixel(image: Image.Image) -> int:
    """Peak memory per pixel of an opened (not necessarily loaded) ``image`` decoded and converted to 8-bit
    RGB before the resize: 16-bit, 32-bit, float and transparent images several times
    ``RGB_BYTES_PER_PIXEL``; every other mode counts as 8-bit RGB (what a service's pixel limit is set for)."""
    if image.mode in _INTEGER_MODES or image.mode == "F":
        return NUMERIC_BYTES_PER_PIXEL
    if _has_alpha(image):
        return ALPHA_BYTES_PER_PIXEL
    return RGB_BYTES_PER_PIXEL


def _to_rgb8(image: Image.Image) -> Image.Image:
    if image.mode in _INTEGER_MODES:
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.max() > 1.0 else 1.0
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def background_levels(rgb: Image.Image) -> np.ndarray:
    """Per channel (R, G, B), the value at the image's brightest ``WHITE_TOP_FRACTION`` of pixels."""
    counts = np.asarray(rgb.histogram(), dtype=np.int64).reshape(3, 256)
    from_top = np.cumsum(counts[:, ::-1], axis=1)  # pixels at or above each level, brightest first
    wanted = max(1, math.ceil(WHITE_TOP_FRACTION * rgb.size[0] * rgb.size[1]))
    return 255.0 - np.argmax(from_top >= wanted, axis=1)


def white_balance_gains(background: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(WHITE_REFERENCE) / np.maximum(background, 1.0), *WHITE_GAIN_LIMITS)


def white_balance(rgb: Image.Image) -> Image.Image:
    """Scale each channel so that the background has ``WHITE_REFERENCE``'s colour (step 3 above)."""
    gains = white_balance_gains(background_levels(rgb))
    table = np.minimum(np.rint(_LEVELS[None, :] * gains[:, None]), 255.0).astype(np.uint8)
    return rgb.point(table.ravel().tolist())


def preprocess(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """Return the network input for one decoded image: ``(size, size, 3)`` uint8 RGB."""
    rgb = _to_rgb8(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(white_balance(rgb), dtype=np.uint8)


def request_scale(image: Image.Image, size: int = IMAGE_SIZE, decoder: str = DEFAULT_DECODER) -> bool:
    """Ask the decoder of an opened, not yet loaded ``image`` for the smallest scale that keeps
    ``DRAFT_MIN_FACTOR`` x ``size`` pixels on both sides (JPEG only: 1/2, 1/4 or 1/8 in the DCT
    domain). Returns whether it will decode scaled down. Call it after any check of the file's own
    size: ``image.size`` becomes the decoded size."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, not {decoder!r}")
    if decoder == "full" or image.format not in _SCALABLE_FORMATS:
        return False
    keep = math.ceil(DRAFT_MIN_FACTOR * size)
    if min(image.size) < 2 * keep:
        return False
    before = image.size
    image.draft("RGB", (keep, keep))  # keeps the file's mode (RGB, L, CMYK); only the scale changes
    return image.size != before


def preprocess_file(source: str | os.PathLike | BinaryIO, size: int = IMAGE_SIZE,
                    decoder: str = DEFAULT_DECODER) -> np.ndarray:
    """Open an image file, decode it at the scale the network needs and ``preprocess`` it:
    the one path from a file to the network input, for training and serving alike."""
    with Image.open(source) as image:
        request_scale(image, size, decoder)
        image.load()
        return preprocess(image, size)
