"""Focus normalisation: an image out of focus is sharpened back into the training images' focus range.

The cell model learnt from two CellaVision hospitals whose images are sharp; a blurred blast loses the
fine chromatin and nucleoli that tell it from a lymphocyte (docs/cell_robustness.md). An image is taken
as out of focus when both of its ``shared.appearance.sharpness`` statistics (of the preprocessed network
input) are low:

- the cell's (the central half) below ``FOCUS_FLOOR``, the 1st percentile of the training images of both
  sources, and
- the whole image's below ``WHOLE_IMAGE_FLOOR``: a dense, smooth nucleus (lymphocytes, erythroblasts) can
  look soft in the centre of a sharp image, but then the red cells' edges around it are still sharp.
  Sharpening such cells cost accuracy (the centre alone: 0.2-1.2 points on PBC cells under a mild blur);
  the whole-image floor was chosen on our validation splits as the highest that leaves the cells as
  stored untouched and costs PBC cells under a mild blur or magnification at most 0.3 points.

Such an image gets an unsharp mask of radius ``FOCUS_RADIUS`` px at the smallest of ``FOCUS_AMOUNTS`` that
brings the cell's sharpness to ``FOCUS_TARGET`` (the training images' median), or the largest amount when
none does. Every other image is left exactly as it is: sharpening every image wrecked sharp ones (accuracy
on the DeepAPL test patients 0.85 -> 0.70). README "How good is it" gives the measurements.

Per image, not per patient: the service sees one image at a time. The appearance check reads the image
*before* this step, so a lab whose images are soft still gets its quality warning: sharpening recovers part
of what blur costs, not all.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from shared.appearance import sharpness

# The training images of both sources (20,291 network inputs at 112 px, preprocessing version 4): cell
# sharpness 1st percentile -0.31, median 0.026.
FOCUS_FLOOR = -0.30
WHOLE_IMAGE_FLOOR = -0.45
FOCUS_TARGET = 0.027
FOCUS_RADIUS = 1.0
FOCUS_AMOUNTS = (25, 50, 75, 100, 125, 150, 175, 200)  # percent, PIL's UnsharpMask


def out_of_focus(image: np.ndarray) -> bool:
    """Whether a preprocessed ``(H, W, 3)`` uint8 image is below both focus floors."""
    return sharpness(image) < FOCUS_FLOOR and sharpness(image, whole=True) < WHOLE_IMAGE_FLOOR


def normalise_focus(rgb: Image.Image) -> tuple[Image.Image, bool]:
    """Return ``rgb`` sharpened into the training images' focus range when it is out of focus, else ``rgb``
    itself; and whether it was sharpened."""
    if not out_of_focus(np.asarray(rgb)):
        return rgb, False
    sharpened = rgb
    for amount in FOCUS_AMOUNTS:
        sharpened = rgb.filter(ImageFilter.UnsharpMask(radius=FOCUS_RADIUS, percent=amount, threshold=0))
        if sharpness(np.asarray(sharpened)) >= FOCUS_TARGET:
            break
    return sharpened, True
