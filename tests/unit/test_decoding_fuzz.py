"""Property-based fuzzing of image decoding: every input ends as an array or a per-image error."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from services.cell_classifier.decoding import ImageRejected, decode_image
from shared.preprocessing import IMAGE_SIZE
from tests.helpers.images import encode, fullsize_images

LIMIT = 40_000_000


def _real_encodings() -> dict[str, bytes]:
    with Image.open(fullsize_images()[0][1]) as image:
        cell = image.convert("RGB").resize((96, 97))
    return {"jpeg": encode(cell, "JPEG", quality=90), "png": encode(cell, "PNG"), "tiff": encode(cell, "TIFF"),
            "bmp": encode(cell, "BMP")}


REAL = _real_encodings()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_reject(data: bytes) -> None:
    try:
        array = decode_image(data, LIMIT)
    except ImageRejected as rejected:
        assert str(rejected)
        return
    assert array.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and array.dtype == np.uint8


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    _decode_or_reject(data)


@FUZZ
@given(st.sampled_from(sorted(REAL)), st.floats(0.0, 1.0))
def test_truncated_real_files(kind, keep):
    data = REAL[kind]
    _decode_or_reject(data[: int(len(data) * keep)])


@FUZZ
@given(st.sampled_from(sorted(REAL)), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1,
                                               max_size=20))
def test_bit_flipped_real_files(kind, flips):
    data = bytearray(REAL[kind])
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    _decode_or_reject(bytes(data))


@FUZZ
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1), st.sampled_from([0, 2, 4, 6]),
       st.sampled_from([8, 16]))
def test_huge_declared_png_dimensions(width, height, colour_type, depth):
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))
    if width * height > LIMIT:
        with pytest.raises(ImageRejected, match="too many pixels"):
            decode_image(data, LIMIT)
    else:
        _decode_or_reject(data)


@FUZZ
@given(st.integers(1, 2**16 - 1), st.integers(1, 2**16 - 1))
def test_huge_declared_tiff_dimensions(width, height):
    header = io.BytesIO()
    Image.new("L", (4, 4)).save(header, format="TIFF")
    data = bytearray(header.getvalue())
    # patch ImageWidth (256) and ImageLength (257) in the first IFD, both SHORT values
    ifd = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[ifd: ifd + 2])[0]
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[entry: entry + 4])
        if tag in (256, 257) and kind == 3:
            data[entry + 8: entry + 10] = struct.pack("<H", width if tag == 256 else height)
    _decode_or_reject(bytes(data))
