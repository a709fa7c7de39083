"""The two decoder paths of shared.preprocessing agree on real images, and training reads files as the service does.

``draft`` (the default) decodes a JPEG at 1/2, 1/4 or 1/8 scale in libjpeg's DCT domain where that
still leaves 1.5x the network input (168 px) on both sides; ``full`` (version 1) decodes every file at
full size. Stated tolerance, in 8-bit steps of the 112x112x3 network input, per image: mean absolute
difference <= 2.0 and 99th percentile <= 16. Measured on the 64 full-size originals: mean 0.84
(worst image 1.23), 99th percentile at most 11. Formats that cannot be scaled while decoding (PNG,
TIFF, BMP) and JPEGs under 336 px on a side (the 224 px PBC and 144 px DeepAPL training copies) take
the same path in both: identical arrays.
"""

import io

import numpy as np
import pytest
from PIL import Image

from services.cell_classifier.decoding import decode_image
from shared.preprocessing import DECODERS, IMAGE_SIZE, preprocess_file, request_scale
from tests.helpers.images import DEEPAPL_DIR, deepapl_images, encode, fullsize_images

LIMIT = 40_000_000
MEAN_TOLERANCE = 2.0
P99_TOLERANCE = 16.0


def both(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    return decode_image(data, LIMIT, "full").astype(int), decode_image(data, LIMIT, "draft").astype(int)


def assert_close(full: np.ndarray, draft: np.ndarray) -> None:
    difference = np.abs(full - draft)
    assert full.shape == draft.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert difference.mean() <= MEAN_TOLERANCE, difference.mean()
    assert np.percentile(difference, 99) <= P99_TOLERANCE, np.percentile(difference, 99)


@pytest.fixture(scope="module")
def originals() -> list[bytes]:
    return [path.read_bytes() for _, path in fullsize_images()]


@pytest.fixture(scope="module")
def cell() -> Image.Image:
    with Image.open(fullsize_images()[0][1]) as image:
        return image.convert("RGB")


def test_fullsize_jpegs_agree_within_tolerance(originals):
    means = []
    for data in originals:
        full, draft = both(data)
        assert_close(full, draft)
        means.append(np.abs(full - draft).mean())
    assert np.mean(means) <= 1.2, "on average the paths differ by about one 8-bit step"


def test_draft_decodes_a_fullsize_jpeg_at_half_scale(originals):
    with Image.open(io.BytesIO(originals[0])) as image:
        assert image.size == (360, 363)
        assert request_scale(image)
        assert image.size == (180, 182), "the smallest libjpeg scale that keeps 112 px on both sides"
    with Image.open(io.BytesIO(originals[0])) as image:
        assert not request_scale(image, decoder="full")
        assert image.size == (360, 363)


def test_draft_scale_leaves_one_and_a_half_times_the_input():
    for size, decoded in (((360, 363), (180, 182)), ((336, 340), (168, 170)), ((335, 400), (335, 400)),
                          ((224, 224), (224, 224)), ((1000, 1008), (250, 252)), ((2000, 2000), (250, 250))):
        data = encode(Image.new("RGB", size, (200, 120, 160)), "JPEG")
        with Image.open(io.BytesIO(data)) as image:
            assert request_scale(image) == (decoded != size)
            assert image.size == decoded, size


@pytest.mark.parametrize("kind", ["grayscale JPEG", "CMYK JPEG", "progressive JPEG", "1000 px JPEG"])
def test_other_jpegs_agree_within_tolerance(cell, kind):
    image = {"grayscale JPEG": cell.convert("L"), "CMYK JPEG": cell.convert("CMYK"),
             "1000 px JPEG": cell.resize((1000, 1008), Image.Resampling.BICUBIC)}.get(kind, cell)
    data = encode(image, "JPEG", quality=92, progressive=kind == "progressive JPEG")
    with Image.open(io.BytesIO(data)) as opened:
        assert request_scale(opened), "large enough to decode scaled down"
    assert_close(*both(data))


@pytest.mark.parametrize("kind", ["PNG", "TIFF", "BMP", "grayscale PNG", "grayscale TIFF", "16-bit PNG",
                                  "16-bit TIFF", "RGBA PNG", "224 px JPEG"])
def test_formats_without_scaled_decoding_are_identical(cell, kind):
    if kind.startswith("16-bit"):
        image = Image.fromarray(np.asarray(cell.convert("L"), dtype=np.uint16) * 257)
        assert image.mode == "I;16"
    elif kind.startswith("grayscale"):
        image = cell.convert("L")
    elif kind == "RGBA PNG":
        image = cell.convert("RGBA")
    elif kind == "224 px JPEG":
        image = cell.resize((224, 224), Image.Resampling.LANCZOS)  # a PBC training copy: decoded whole
    else:
        image = cell
    fmt = kind.split()[-1]
    full, draft = both(encode(image, fmt))
    assert np.array_equal(full, draft)


def test_deepapl_copies_are_decoded_whole():
    """The DeepAPL training copies are 144x144: nothing to scale, the same input as before."""
    paths = deepapl_images("Lymphocyte", 3)
    if not paths:
        pytest.skip(f"no DeepAPL images under {DEEPAPL_DIR}")
    for path in paths:
        full, draft = both(path.read_bytes())
        assert np.array_equal(full, draft)


@pytest.mark.parametrize("decoder", DECODERS)
def test_training_reads_files_as_the_service_does(tmp_path, originals, cell, decoder):
    """training.pbc_dataset loads through shared.preprocessing.preprocess_file: the service's arrays."""
    files = {"jpg": originals[1], "png": encode(cell, "PNG"),
             "tif": encode(Image.fromarray(np.asarray(cell.convert("L"), dtype=np.uint16) * 257), "TIFF")}
    for suffix, data in files.items():
        path = tmp_path / f"cell.{suffix}"
        path.write_bytes(data)
        assert np.array_equal(preprocess_file(path, decoder=decoder), decode_image(data, LIMIT, decoder))


def test_unknown_decoder_is_refused(originals):
    with pytest.raises(ValueError, match="decoder"):
        decode_image(originals[0], LIMIT, "fast")
