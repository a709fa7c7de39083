"""The report's quality warning, end to end: quiet on images like the training data, loud on images that
look like another scanner, stain or focus (simulated here by recolouring, grayscale and blur)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from services.cell_classifier.settings import DEFAULT_MODEL_DIR
from tests.helpers.hl7 import obx_by_code, segments
from tests.helpers.images import deepapl_images, encode, fullsize_images
from tests.helpers.keys import AUTH
from tests.helpers.uploads import classified

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(plain_gateway):
    return plain_gateway


def held_out_patient_images() -> list[tuple[str, bytes]]:
    """Cells of DeepAPL patients the committed model never trained on."""
    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    test_patients = tuple(card["training"]["deepapl_patients"]["test"][:3])
    paths = deepapl_images("Lymphocyte", 15, test_patients) + deepapl_images("Blast, no lineage spec", 15,
                                                                               test_patients)
    return [(f"{p.parent.name}-{p.name}", p.read_bytes()) for p in paths]


def recoloured(gains: tuple[float, float, float]) -> list[tuple[str, bytes]]:
    out = []
    for _, path in fullsize_images():
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) * np.array(gains, np.float32)
        out.append((path.name, encode(Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)), "JPEG", quality=92)))
    return out


def blurred(radius: float) -> list[tuple[str, bytes]]:
    """Out of focus: the colours stay as in training, so only the sharpness statistic can tell."""
    return [(p.name, encode(Image.open(p).convert("RGB").filter(ImageFilter.GaussianBlur(radius)), "JPEG", quality=92))
            for _, p in fullsize_images()]


def grayscale() -> list[tuple[str, bytes]]:
    return [(p.name, encode(Image.open(p).convert("L"), "PNG")) for _, p in fullsize_images()]


def hl7_quality_rows(url: str, patient: str) -> dict[str, list[str]]:
    """The stored report as the LIS gets it over HL7 v2: the OBX rows by code, and the NTE."""
    response = httpx.get(f"{url}/patients/{patient}/classification",
                         headers={**AUTH, "Accept": "application/hl7-v2"}, timeout=10)
    assert response.status_code == 200, response.text
    return obx_by_code(response.text) | {"NTE": segments(response.text, "NTE")[-1]}


def test_quiet_on_images_like_the_training_data(gateway):
    for patient, files in (("Q-pbc", [(p.name, p.read_bytes()) for _, p in fullsize_images()]),
                           ("Q-jhh", held_out_patient_images())):
        report = classified(gateway.url, patient, files)
        quality = report["quality"]
        assert quality["looks_out_of_domain"] is False, (patient, quality)
        assert quality["appearance_distance"] < quality["appearance_threshold"]
        assert not any("look unlike" in w for w in report["warnings"]), report["warnings"]
        quality_rows = hl7_quality_rows(gateway.url, patient)
        assert quality_rows["image-set-quality"][8] == "N" and quality_rows["appearance-distance"][8] == "N"


@pytest.mark.parametrize("name,files", [("stain", lambda: recoloured((0.8, 1.0, 1.3))),
                                        ("yellow", lambda: recoloured((1.1, 1.05, 0.7))),
                                        ("grayscale", grayscale),
                                        ("blurred", lambda: blurred(3.0))])
def test_warns_on_images_unlike_the_training_data(gateway, name, files):
    report = classified(gateway.url, f"Q-odd-{name}", files())
    quality = report["quality"]
    assert quality["looks_out_of_domain"] is True and quality["review_every_cell"] is True, quality
    assert quality["appearance_distance"] > quality["appearance_threshold"]
    assert any("look unlike" in w and "review every cell" in w for w in report["warnings"])
    fhir = httpx.get(f"{gateway.url}/patients/Q-odd-{name}/classification",
                     headers={**AUTH, "Accept": "application/fhir+json"}, timeout=10).json()
    quality_observation = next(o for o in fhir["contained"] if o.get("id") == "quality")
    assert quality_observation["interpretation"][0]["coding"][0]["code"] == "A"
    assert "look unlike" in fhir["conclusion"]
    quality_rows = hl7_quality_rows(gateway.url, f"Q-odd-{name}")
    assert quality_rows["image-set-quality"][5].startswith("N^") and quality_rows["image-set-quality"][8] == "A"
    assert quality_rows["appearance-distance"][8] == "A"
    assert float(quality_rows["appearance-distance"][5]) == pytest.approx(quality["appearance_distance"], abs=1e-3)
    opening, _, rest = quality_rows["NTE"][3].partition("Automated pre-classification")
    assert "REVIEW EVERY CELL" in opening and "look unlike" in rest  # before the boilerplate (after an APL alert)
