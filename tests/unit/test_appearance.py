"""shared.appearance.appearance_features (integer histograms) gives the statistics of the earlier float32
version, against which the model card's appearance reference was fitted, on real cells of both sources."""

import json

import numpy as np
import pytest

from services.cell_classifier.decoding import decode_image
from services.cell_classifier.settings import DEFAULT_MODEL_DIR
from shared.appearance import AppearanceReference, appearance_features
from tests.helpers.images import deepapl_images, fullsize_images

FEATURE_TOLERANCE = 2e-5  # float32 rounding of the earlier version
DISTANCE_TOLERANCE = 2e-3  # the service reports distances to 3 decimals


def float32_features(image: np.ndarray) -> np.ndarray:
    """The earlier implementation, verbatim."""
    pixels = image[::2, ::2].reshape(-1, 3).astype(np.float32) / 255.0
    low, high = np.percentile(pixels, [10, 90], axis=0)
    luminance = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    background = np.percentile(luminance, 90)
    dark = float(np.mean(luminance < 0.75 * background))
    return np.concatenate([pixels.mean(axis=0), pixels.std(axis=0), low, high, [dark]]).astype(np.float64)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    files = [path.read_bytes() for _, path in fullsize_images()]
    for expert in ("Blast, no lineage spec", "Smudge cells", "Lymphocyte", "Erythroblast"):
        files += [path.read_bytes() for path in deepapl_images(expert, 4)]
    return [decode_image(data, 40_000_000) for data in files]


def test_features_match_the_float32_version(images):
    for image in images:
        assert np.abs(appearance_features(image) - float32_features(image)).max() <= FEATURE_TOLERANCE


def test_distances_match_the_float32_version(images):
    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    reference = AppearanceReference(card["appearance"]["reference"])
    for image in images:
        assert abs(reference.distances(appearance_features(image))[0]
                   - reference.distances(float32_features(image))[0]) <= DISTANCE_TOLERANCE


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 7, 3), (112, 112, 3)])
def test_edge_sizes_and_flat_images(shape):
    rng = np.random.default_rng(0)
    for image in (np.full(shape, 200, np.uint8), rng.integers(0, 256, shape, dtype=np.uint8)):
        assert np.abs(appearance_features(image) - float32_features(image)).max() <= FEATURE_TOLERANCE
