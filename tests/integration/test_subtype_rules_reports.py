"""A subtype model whose voting weights changed with the same member files (as 2.1.0 -> 2.1.1 did) is another
model: a repeated upload gets a new report from it instead of the old weights' stored report; a report
reviewed after the subtype service was upgraded names the new model and is what a repeated upload under that
model answers (never a new preliminary report)."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from services.subtype.settings import DEFAULT_MODEL_DIR
from tests.helpers.images import fullsize_images
from tests.helpers.keys import AUTH, REVIEW_AUTH
from tests.helpers.processes import start_gateway, start_subtype_service
from tests.helpers.uploads import classified

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reweighted_subtype_service(tmp_path_factory):
    """The committed member files under a card whose stage-1 votes are weighted otherwise."""
    directory = tmp_path_factory.mktemp("reweighted-subtype") / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, directory)
    card = json.loads((directory / "model_card.json").read_text())
    card["stages"]["aml_vs_control"]["weights"] = {name: 1.0 for name in card["stages"]["aml_vs_control"]["weights"]}
    (directory / "model_card.json").write_text(json.dumps(card, indent=2))
    process = start_subtype_service(tmp_path_factory.mktemp("reweighted-subtype-log"),
                                    SUBTYPE_MODEL_DIR=str(directory))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateways(tmp_path_factory, cell_service, subtype_service, reweighted_subtype_service):
    """Two gateways over one report database: one with the committed subtype card, one with the reweighted."""
    database = {"DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('shared-db') / 'reports.db'}"}
    usual = start_gateway(tmp_path_factory.mktemp("gateway-usual"), cell_service.url, subtype_service.url,
                          **database)
    reweighted = start_gateway(tmp_path_factory.mktemp("gateway-reweighted"), cell_service.url,
                               reweighted_subtype_service.url, **database)
    yield usual, reweighted
    usual.stop()
    reweighted.stop()


def test_new_weights_make_a_new_report_and_a_review_under_them_is_found_again(gateways):
    usual, reweighted = gateways
    files = [(path.name, path.read_bytes()) for _, path in fullsize_images()[::3]]

    first = classified(usual.url, "SUBTYPE-RULES", files)
    assert classified(usual.url, "SUBTYPE-RULES", files)["cached"] is True, "the same models: the stored report"
    other = classified(reweighted.url, "SUBTYPE-RULES", files)
    assert other["cached"] is False and other["report_id"] != first["report_id"]
    old_subtype, new_subtype = first["models"]["subtype"], other["models"]["subtype"]
    assert old_subtype["sha256"] == new_subtype["sha256"], "the same member files"
    assert old_subtype["rules_sha256"] != new_subtype["rules_sha256"]

    review = httpx.post(f"{reweighted.url}/reports/{first['report_id']}/review", headers=REVIEW_AUTH, timeout=60,
                        json={"reviewer": "Dr Rules", "sign_off": True})
    assert review.status_code == 201, review.text
    signed = review.json()
    assert signed["status"] == "final" and signed["models"]["subtype"] == new_subtype

    again = classified(reweighted.url, "SUBTYPE-RULES", files)
    assert again["cached"] is True and again["report_id"] == signed["report_id"] and again["status"] == "final"
    fhir = httpx.get(f"{reweighted.url}/reports/{signed['report_id']}", timeout=30,
                     headers={**AUTH, "Accept": "application/fhir+json"}).json()
    subtype_device = next(r for r in fhir["contained"] if r["resourceType"] == "Device" and r["id"] == "subtype-model")
    assert {"type": {"text": "rules-sha256"}, "value": new_subtype["rules_sha256"]} in subtype_device["version"]
