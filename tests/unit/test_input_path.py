"""The stored copies against full-size originals read through the service's decoding, on the real originals."""

from __future__ import annotations

from tests.helpers.images import fullsize_images
from training import input_path


def test_copies_chains_against_the_service_path_on_the_originals():
    paths = [path for _, path in fullsize_images()]
    deepapl = input_path.compare_chains(paths, input_path.COPY_SIDES["DeepAPL"], [0.3, 1.0])
    pbc = input_path.compare_chains(paths, input_path.COPY_SIDES["PBC"], [])
    served = deepapl["service_sharpness"]
    assert pbc["service_sharpness"] == served  # the same originals, the same path
    # PBC's 224 px copies are as sharp as the originals through the service; DeepAPL's 144 px copies sharper
    assert abs(pbc["copies"][0.0]["sharpness"] - served) < 0.01
    assert deepapl["copies"][0.0]["sharpness"] > served + 0.01
    # a 0.3 px blur of the 144 px copy brings it to the originals' focus; 1 px is far softer
    assert abs(deepapl["copies"][0.3]["sharpness"] - served) < 0.015
    assert deepapl["copies"][1.0]["sharpness"] < served - 0.2
    for result in (deepapl, pbc):
        assert all(0.5 < row["mean_abs_difference"] < 5.0 for row in result["copies"].values())


def test_the_copy_is_made_as_the_data_folder_made_it():
    _, path = fullsize_images()[0]
    copy = input_path.stored_copy(path, 144)
    assert copy.size == (144, 144) and copy.mode == "RGB"
    assert input_path.network_input(copy).shape == (112, 112, 3)
    assert input_path.network_input(copy, 0.3).shape == (112, 112, 3)
