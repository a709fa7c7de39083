"""A cell model's labelling rule changed without a new network file (the card's `unclassified` threshold):
the gateway labels the cells again under the new rule instead of serving the old rule's labels from its
cache (the per-cell cache key holds the service's ``rules_sha256`` as well as the file's sha256)."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from services.cell_classifier.settings import DEFAULT_MODEL_DIR
from tests.helpers.images import fullsize_images
from tests.helpers.processes import start_cell_service, start_gateway
from tests.helpers.uploads import classified

pytestmark = pytest.mark.integration
STRICT_THRESHOLD = 0.999999  # almost no cell is that sure: nearly every label becomes `unclassified`


@pytest.fixture(scope="module")
def strict_cell_service(tmp_path_factory):
    """The committed network files under a card whose `unclassified` threshold is far stricter."""
    directory = tmp_path_factory.mktemp("strict-cell") / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, directory)
    card = json.loads((directory / "model_card.json").read_text())
    card["unclassified_rule"]["threshold"] = STRICT_THRESHOLD
    (directory / "model_card.json").write_text(json.dumps(card, indent=2))
    process = start_cell_service(tmp_path_factory.mktemp("strict-cell-log"), CELL_MODEL_DIR=str(directory))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateways(tmp_path_factory, cell_service, strict_cell_service, subtype_service, redis_server):
    """Two gateways sharing one Redis cache: one over the committed card, one over the strict card."""
    usual = start_gateway(tmp_path_factory.mktemp("gateway-usual"), cell_service.url, subtype_service.url,
                          redis_server.url)
    strict = start_gateway(tmp_path_factory.mktemp("gateway-strict"), strict_cell_service.url,
                           subtype_service.url, redis_server.url)
    yield usual, strict
    usual.stop()
    strict.stop()


def labels_of_report(url: str, patient: str, files: list[tuple[str, bytes]]) -> dict[str, str]:
    report = classified(url, patient, files, params={"include": "cells"})
    return {cell["filename"]: cell["label"] for cell in report["cells"]}


def test_a_new_threshold_with_the_same_file_labels_the_cells_again(gateways, strict_cell_service, cell_service):
    usual, strict = gateways
    files = [(path.name, path.read_bytes()) for _, path in fullsize_images()[::4]]
    usual_model = httpx.get(f"{cell_service.url}/v1/model", timeout=10).json()
    strict_model = httpx.get(f"{strict_cell_service.url}/v1/model", timeout=10).json()
    assert usual_model["sha256"] == strict_model["sha256"], "the same network file"
    assert usual_model["rules_sha256"] != strict_model["rules_sha256"]

    before = labels_of_report(usual.url, "RULES-USUAL", files)  # fills the shared per-cell cache
    after = labels_of_report(strict.url, "RULES-STRICT", files)

    parts = [("images", (name, data, "image/jpeg")) for name, data in files]
    direct = httpx.post(f"{strict_cell_service.url}/v1/classify", files=parts, timeout=120).json()["results"]
    assert after == {r["filename"]: r["label"] for r in direct}, "the strict rule's own labels"
    assert sum(label == "unclassified" for label in after.values()) > sum(
        label == "unclassified" for label in before.values()) + len(files) // 2
