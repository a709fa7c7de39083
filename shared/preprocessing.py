"""The one preprocessing function shared by training and serving.

Any decoded image (any size, any mode: RGB, grayscale, RGBA, 16-bit, CMYK, palette)
becomes an ``IMAGE_SIZE`` x ``IMAGE_SIZE`` x 3 ``uint8`` RGB array:

1. mode conversion to 8-bit RGB (alpha is composited on white, 16-bit is scaled to
   8-bit, CMYK goes through PIL's conversion);
2. a resize of the whole image (no crop) to the square network input with PIL's
   antialiased bilinear filter, so that a 224 px training copy and a 360x363
   original of the same cell give nearly the same array.

Normalisation (x / 255) happens inside the network, so the ONNX input is raw uint8.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGE_SIZE = 112


def _to_rgb8(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.max() > 1.0 else 1.0
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def preprocess(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """Return the network input for one decoded image: ``(size, size, 3)`` uint8 RGB."""
    rgb = _to_rgb8(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)
