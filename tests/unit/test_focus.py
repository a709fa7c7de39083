"""Focus normalisation (shared.focus): out-of-focus images are sharpened, sharp ones and smooth cells in sharp
images are left exactly as they are, and the service's appearance check reads the image before sharpening."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from services.cell_classifier.app import _decode_upload
from services.cell_classifier.inference import CellModel
from services.cell_classifier.settings import DEFAULT_MODEL_DIR, CellServiceSettings
from shared.appearance import sharpness
from shared.focus import FOCUS_FLOOR, WHOLE_IMAGE_FLOOR, out_of_focus
from shared.preprocessing import IMAGE_SIZE, prepare, white_balance
from tests.helpers.images import deepapl_images, encode, fullsize_images


def _open(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _without_focus_step(image: Image.Image) -> np.ndarray:
    return np.asarray(white_balance(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)))


@pytest.fixture(scope="module")
def cells() -> list[Image.Image]:
    """Real cells as the service receives them: PBC originals and DeepAPL copies, one of each kind that
    tends to look smooth (lymphocytes, erythroblasts) and blasts."""
    paths = [path for _, path in fullsize_images()[::8]]
    paths += deepapl_images("Blast, no lineage spec", 4) + deepapl_images("Lymphocyte", 4)
    return [_open(path) for path in paths]


def test_sharp_cells_reach_the_network_untouched(cells):
    for image in cells:
        prepared = prepare(image)
        assert not prepared.sharpened
        assert prepared.network_input is prepared.before_focus
        np.testing.assert_array_equal(prepared.before_focus, _without_focus_step(image))


def test_an_out_of_focus_cell_is_sharpened_towards_the_training_range(cells):
    for image in cells:
        soft = image.filter(ImageFilter.GaussianBlur(1.5 * image.size[0] / 144))
        prepared = prepare(soft)
        assert prepared.sharpened, "a 1.5 px blur (at 144 px) is out of focus"
        np.testing.assert_array_equal(prepared.before_focus, _without_focus_step(soft))
        before, after = sharpness(prepared.before_focus), sharpness(prepared.network_input)
        assert before < FOCUS_FLOOR
        assert after > before + 0.2
        assert np.abs(prepared.network_input.astype(int) - prepared.before_focus.astype(int)).mean() > 1.0


def test_a_smooth_cell_in_a_sharp_image_is_left_alone(cells):
    """Only the cell (the centre) soft, the red cells around it sharp: a dense nucleus, not a focus fault."""
    image = cells[0].resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    box = (IMAGE_SIZE // 4, IMAGE_SIZE // 4, IMAGE_SIZE - IMAGE_SIZE // 4, IMAGE_SIZE - IMAGE_SIZE // 4)
    smooth_centre = image.copy()
    smooth_centre.paste(image.crop(box).filter(ImageFilter.GaussianBlur(2.0)), box)
    array = np.asarray(white_balance(smooth_centre))
    assert sharpness(array) < FOCUS_FLOOR and sharpness(array, whole=True) >= WHOLE_IMAGE_FLOOR
    assert not out_of_focus(array)
    assert not prepare(smooth_centre).sharpened


def test_the_service_checks_the_appearance_before_sharpening(cells):
    """A soft-focus lab keeps its warning: the distance is the unsharpened image's, which is farther."""
    model = CellModel(DEFAULT_MODEL_DIR, "cpu")
    soft = cells[-1].filter(ImageFilter.GaussianBlur(1.5))
    network_input, distance = _decode_upload(encode(soft, "PNG"), CellServiceSettings(), model)
    prepared = prepare(soft, model.input_size)
    assert prepared.sharpened
    np.testing.assert_array_equal(network_input, prepared.network_input)
    assert distance == model.appearance_distance(prepared.before_focus)
    assert distance > model.appearance_distance(prepared.network_input)
