"""shared.appearance.appearance_features (integer histograms) gives the colour and density statistics of the
earlier float32 version on real cells of both sources; its sharpness statistic falls with blur; the service
refuses a card whose reference was fitted on other features."""

import json

import numpy as np
import pytest

from services.cell_classifier.decoding import decode_image
from services.cell_classifier.settings import DEFAULT_MODEL_DIR
from PIL import Image, ImageFilter

from services.cell_classifier.errors import ModelIntegrityError
from services.cell_classifier.inference import check_model
from shared.appearance import FEATURE_NAMES, AppearanceReference, appearance_features, sharpness
from tests.helpers.images import deepapl_images, fullsize_images

FEATURE_TOLERANCE = 2e-5  # float32 rounding of the earlier version
DISTANCE_TOLERANCE = 2e-3  # the service reports distances to 3 decimals


def float32_features(image: np.ndarray) -> np.ndarray:
    """The earlier implementation of the colour and density statistics, verbatim, then the sharpness."""
    pixels = image[::2, ::2].reshape(-1, 3).astype(np.float32) / 255.0
    low, high = np.percentile(pixels, [10, 90], axis=0)
    luminance = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    background = np.percentile(luminance, 90)
    dark = float(np.mean(luminance < 0.75 * background))
    return np.concatenate([pixels.mean(axis=0), pixels.std(axis=0), low, high, [dark, sharpness(image)]]).astype(
        np.float64)


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


def test_sharpness_falls_with_blur_on_real_cells_whatever_their_source():
    for paths in ([p for _, p in fullsize_images()][:16], deepapl_images("Lymphocyte", 8) + deepapl_images(
            "Blast, no lineage spec", 8)):
        for path in paths:
            image = Image.open(path).convert("RGB")
            sharp = sharpness(np.asarray(image))
            slightly, very = (sharpness(np.asarray(image.filter(ImageFilter.GaussianBlur(r)))) for r in (1.0, 2.0))
            assert sharp > slightly > very, (path, sharp, slightly, very)
    assert sharpness(np.full((112, 112, 3), 200, np.uint8)) == 0.0  # flat: no detail, no edges


def test_the_service_refuses_a_card_fitted_on_other_appearance_features(tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir)
    check_model(model_dir, "cpu")  # the committed card: fitted on today's features
    card_path = model_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    card["appearance"]["feature_names"] = list(FEATURE_NAMES[:-1])
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="appearance_reference"):
        check_model(model_dir, "cpu")
    del card["appearance"]["feature_names"]  # a card from before the names were recorded
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="earlier version"):
        check_model(model_dir, "cpu")


def test_refitting_the_reference_rewrites_only_the_cards_appearance_section(tmp_path):
    import shutil

    from training import appearance_reference

    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir)
    before = json.loads((model_dir / "model_card.json").read_text())
    before["appearance"] = {"reference": before["appearance"]["reference"]}  # as fitted before feature_names
    (model_dir / "model_card.json").write_text(json.dumps(before))
    with pytest.raises(ModelIntegrityError):
        check_model(model_dir, "cpu")
    appearance_reference.main(["--model-dir", str(model_dir), "--per-class-limit", "12", "--cache-dir", ""])
    after = json.loads((model_dir / "model_card.json").read_text())
    assert {k for k in after if after[k] != before[k]} == {"appearance"}
    assert after["appearance"]["feature_names"] == list(FEATURE_NAMES)
    assert set(after["appearance"]["reference"]) == {"pbc", "deepapl"}
    assert 0 < after["appearance"]["patient_threshold"] < after["appearance"]["image_threshold"]
    assert "refitted" in (model_dir / "MODEL_CARD.md").read_text()
    check_model(model_dir, "cpu")  # served again
