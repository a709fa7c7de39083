import numpy as np
import pytest
from PIL import Image

from shared.preprocessing import (IMAGE_SIZE, WHITE_GAIN_LIMITS, WHITE_REFERENCE, background_levels, preprocess,
                                  white_balance)
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


def test_transparent_pixels_become_white_then_the_reference_background():
    image = Image.new("RGBA", (50, 40), (10, 20, 30, 0))
    assert (preprocess(image) == np.array(WHITE_REFERENCE, np.uint8)).all()  # white is a background


def _cell_on_background(background: tuple[int, int, int]) -> Image.Image:
    """A purple cell over a quarter of the frame on a plain background."""
    array = np.empty((112, 112, 3), np.uint8)
    array[:] = background
    array[28:84, 28:84] = (120, 60, 150)
    return Image.fromarray(array)


def test_white_balance_brings_the_background_to_the_reference_and_scales_the_cell_alike():
    cast = (204, 230, 250)  # a bluer scanner: red low, blue high
    balanced = np.asarray(white_balance(_cell_on_background(cast))).astype(float)
    gains = np.array(WHITE_REFERENCE) / np.array(cast)
    assert np.abs(balanced[0, 0] - np.array(WHITE_REFERENCE)).max() <= 0.5
    assert np.abs(balanced[56, 56] - np.rint(np.array([120, 60, 150]) * gains)).max() <= 0.5
    # the training hospitals' own background is left as it is
    home = _cell_on_background(tuple(int(v) for v in WHITE_REFERENCE))
    assert np.array_equal(np.asarray(white_balance(home)), np.asarray(home))


def test_background_is_the_brightest_three_percent_so_a_few_bright_pixels_do_not_set_it():
    array = np.asarray(_cell_on_background((200, 200, 200))).copy()
    array[:10, :10] = 255  # 100 pixels: 0.8 % of the frame, fewer than the top 3 %
    assert background_levels(Image.fromarray(array)).tolist() == [200.0, 200.0, 200.0]


def test_white_balance_gains_are_limited_and_stay_in_range():
    dark = Image.new("RGB", (112, 112), (40, 40, 40))  # no background to go by: at most the largest gain
    assert (np.asarray(white_balance(dark)) == round(40 * WHITE_GAIN_LIMITS[1])).all()
    balanced = np.asarray(white_balance(_cell_on_background((160, 250, 250))))
    assert balanced.dtype == np.uint8 and balanced[0, 0, 0] == round(160 * WHITE_GAIN_LIMITS[1])


def test_a_colour_cast_changes_the_network_input_little_after_white_balance(cell):
    """The reason for the white balance: a bluer scanner's image of a cell gives nearly the input of the
    original (within what clipping at 255 loses)."""
    array = np.asarray(cell).astype(float)
    bluer = Image.fromarray(np.clip(array * [0.85, 1.0, 1.12], 0, 255).astype(np.uint8))
    original, recoloured = preprocess(cell).astype(int), preprocess(bluer).astype(int)
    assert np.abs(original - recoloured).mean() < 2.5
    without = np.asarray(bluer.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(original - without).mean() > 10  # what the network saw before


@pytest.mark.parametrize("size", [(144, 144), (1, 1), (1000, 37)])
def test_any_size(cell, size):
    _shape_ok(preprocess(cell.resize(size)))
