"""The appearance distance and the report's quality object: known answers and thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gateway.quality import SMUDGE_WARNING, UNCLASSIFIED_WARNING, assess
from shared.appearance import FEATURE_NAMES, AppearanceReference, appearance_features
from shared.preprocessing import preprocess
from shared.vocabulary import CELL_LABELS
from tests.helpers.images import fullsize_images

APPEARANCE = {"patient_threshold": 5.0, "image_threshold": 9.0}


def test_features_of_a_uniform_image_are_known():
    image = np.full((112, 112, 3), (200, 100, 50), np.uint8)
    features = dict(zip(FEATURE_NAMES, appearance_features(image)))
    assert features["mean_r"] == pytest.approx(200 / 255, abs=1e-4)
    assert features["p90_b"] == pytest.approx(50 / 255, abs=1e-4)
    assert features["std_g"] == pytest.approx(0.0, abs=1e-4)
    assert features["dark_fraction"] == 0.0


def test_mahalanobis_distance_known_answer_and_nearest_source():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (4000, 2))
    b = rng.normal(10.0, 2.0, (4000, 2))
    reference = AppearanceReference.fit({"a": a, "b": b}, ridge=0.0)
    assert reference.distances(np.array([[0.0, 0.0]]))[0] == pytest.approx(0.0, abs=0.1)
    assert reference.distances(np.array([[3.0, 0.0]]))[0] == pytest.approx(3.0, rel=0.05)
    assert reference.distances(np.array([[10.0, 14.0]]))[0] == pytest.approx(2.0, rel=0.05)  # nearest: b
    restored = AppearanceReference(reference.to_dict())
    assert np.allclose(restored.distances(a[:5]), reference.distances(a[:5]))


def test_recolouring_moves_an_image_away_from_its_source():
    images = []
    for _, path in fullsize_images()[::4]:
        with Image.open(path) as image:
            images.append(preprocess(image))
    features = np.stack([appearance_features(i) for i in images])
    reference = AppearanceReference.fit({"pbc": features})
    greenish = np.stack([appearance_features(np.clip(i * np.array([0.7, 1.1, 0.7]), 0, 255).astype(np.uint8))
                         for i in images])
    assert np.median(reference.distances(greenish)) > 3 * np.median(reference.distances(features))


def counts(**given) -> dict[str, int]:
    return {label: given.get(label, 0) for label in CELL_LABELS}


def test_quiet_on_a_familiar_patient():
    quality, warnings = assess(counts(lymphocyte=40, blast=55, smudge=5), [2.0] * 100, APPEARANCE)
    assert warnings == []
    assert quality.looks_out_of_domain is False and quality.review_every_cell is False
    assert quality.appearance_distance == 2.0 and quality.out_of_domain_fraction == 0.0
    assert quality.smudge_fraction == 0.05 and quality.n_cells == 100


def test_unfamiliar_images_warn_and_ask_for_review_of_every_cell():
    distances = [4.0] * 40 + [6.0] * 50 + [12.0] * 10  # median 6.0 > 5.0
    quality, warnings = assess(counts(neutrophil=100), distances, APPEARANCE)
    assert quality.looks_out_of_domain and quality.review_every_cell
    assert quality.out_of_domain_fraction == pytest.approx(0.10)
    assert len(warnings) == 1 and "review every cell" in warnings[0]
    just_below, _ = assess(counts(neutrophil=3), [4.9, 5.0, 5.0], APPEARANCE)
    assert just_below.looks_out_of_domain is False  # the threshold itself is still familiar


def test_unclassified_and_smudge_shares_warn_at_their_thresholds():
    n = 100
    unclassified = round(UNCLASSIFIED_WARNING * n)
    quality, warnings = assess(counts(unclassified=unclassified, lymphocyte=n - unclassified), [1.0] * n, APPEARANCE)
    assert quality.review_every_cell and any("unclassified" in w for w in warnings)
    quality, warnings = assess(counts(unclassified=unclassified - 1, lymphocyte=n - unclassified + 1), [1.0] * n,
                               APPEARANCE)
    assert warnings == [] and not quality.review_every_cell
    smudge = round(SMUDGE_WARNING * n)
    _, warnings = assess(counts(smudge=smudge, lymphocyte=n - smudge), [1.0] * n, APPEARANCE)
    assert any("smudge" in w for w in warnings)


def test_a_model_without_appearance_reference_reports_none():
    quality, warnings = assess(counts(lymphocyte=10), [None] * 10, None)
    assert quality.appearance_distance is None and quality.looks_out_of_domain is False and warnings == []


def test_distances_without_thresholds_say_the_appearance_could_not_be_judged():
    """A cell model met mid-upgrade whose thresholds could not be read: the report says so, never silence."""
    quality, warnings = assess(counts(lymphocyte=10), [9.0] * 10, {})
    assert quality.appearance_distance == 9.0 and quality.looks_out_of_domain is False
    assert len(warnings) == 1 and "could not be judged" in warnings[0]
