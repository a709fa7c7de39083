import io

import numpy as np
import pytest
from PIL import Image

from services.cell_classifier.decoding import ImageRejected, decode_image
from shared.preprocessing import IMAGE_SIZE
from tests.helpers.images import encode, fullsize_images, png_bomb

LIMIT = 40_000_000


@pytest.fixture(scope="module")
def jpeg_bytes() -> bytes:
    return fullsize_images()[0][1].read_bytes()


@pytest.fixture(scope="module")
def cell(jpeg_bytes) -> Image.Image:
    return Image.open(io.BytesIO(jpeg_bytes)).convert("RGB")


@pytest.mark.parametrize("fmt,mode,options", [
    ("PNG", "RGB", {}), ("PNG", "RGBA", {}), ("PNG", "L", {}), ("TIFF", "RGB", {}), ("TIFF", "CMYK", {}),
    ("BMP", "RGB", {}), ("JPEG", "CMYK", {}), ("JPEG", "L", {}), ("TIFF", "RGB", {"compression": "tiff_lzw"}),
])
def test_supported_inputs_decode(cell, fmt, mode, options):
    array = decode_image(encode(cell.convert(mode), fmt, **options), LIMIT)
    assert array.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and array.dtype == np.uint8


def test_sixteen_bit_png_decodes(cell):
    gray = (np.asarray(cell.convert("L"), dtype=np.uint16) * 257)
    array = decode_image(encode(Image.fromarray(gray), "PNG"), LIMIT)
    assert array.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and array.std() > 5


def test_real_jpeg_decodes(jpeg_bytes):
    assert decode_image(jpeg_bytes, LIMIT).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"this is not an image at all", "not a decodable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a decodable image"),
])
def test_garbage_is_rejected(data, message):
    with pytest.raises(ImageRejected, match=message):
        decode_image(data, LIMIT)


def test_truncated_jpeg_is_rejected(jpeg_bytes):
    with pytest.raises(ImageRejected, match="corrupt or truncated"):
        decode_image(jpeg_bytes[: len(jpeg_bytes) // 2], LIMIT)


def test_decompression_bomb_is_rejected_without_decoding():
    bomb = png_bomb(30000, 30000)
    assert len(bomb) < 100_000
    with pytest.raises(ImageRejected, match="too many pixels"):
        decode_image(bomb, LIMIT)


def test_pixel_limit_is_configurable(cell):
    with pytest.raises(ImageRejected, match="too many pixels"):
        decode_image(encode(cell, "PNG"), max_pixels=100 * 100)


def test_unsupported_format_is_named(cell):
    with pytest.raises(ImageRejected, match="unsupported format GIF"):
        decode_image(encode(cell, "GIF"), LIMIT)
