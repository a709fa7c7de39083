import numpy as np
import pytest
from PIL import Image

from shared.preprocessing import IMAGE_SIZE, preprocess
from tests.helpers.images import fullsize_images


@pytest.fixture(scope="module")
def cell() -> Image.Image:
    _, path = fullsize_images()[0]
    with Image.open(path) as image:
        return image.convert("RGB")


def _shape_ok(array: np.ndarray) -> None:
    assert array.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert array.dtype == np.uint8


def test_fullsize_original_becomes_network_input(cell):
    assert cell.size == (360, 363)
    _shape_ok(preprocess(cell))


def test_resized_training_copy_matches_original(cell):
    """A 224 px copy (as in the training data) and the original give nearly the same input."""
    copy = cell.resize((224, 224), Image.Resampling.LANCZOS)
    difference = np.abs(preprocess(copy).astype(int) - preprocess(cell).astype(int))
    assert difference.mean() < 2.0


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb8(cell, mode):
    if mode in ("I;16", "I", "F"):
        gray = np.asarray(cell.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(gray) if mode == "I;16" else Image.fromarray(gray).convert(mode)
        assert image.mode == mode
    else:
        image = cell.convert(mode)
    array = preprocess(image)
    _shape_ok(array)
    assert array.std() > 5, "content survives the conversion"


def test_sixteen_bit_scaled_not_clipped(cell):
    gray8 = np.asarray(cell.convert("L"))
    sixteen = Image.fromarray(gray8.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    eight = preprocess(cell.convert("L")).astype(int)
    assert np.abs(preprocess(sixteen).astype(int) - eight).max() <= 2


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (50, 40), (10, 20, 30, 0))
    assert (preprocess(image) == 255).all()


@pytest.mark.parametrize("size", [(144, 144), (1, 1), (1000, 37)])
def test_any_size(cell, size):
    _shape_ok(preprocess(cell.resize(size)))
