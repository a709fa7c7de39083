"""One vocabulary everywhere: the services, the API schemas, FHIR, HL7, the CLI and the subtype features all
speak ``shared/vocabulary.py`` (the page is walked in test_web_page.py), over real processes."""

from __future__ import annotations

import httpx
import pytest

from gateway.cli import COLUMNS
from gateway.fhir import DIFFERENTIAL_LOINC
from shared.vocabulary import CELL_LABELS, CELL_TYPES, LEUKOCYTE_TYPES, NON_LEUKOCYTE_TYPES, UNCLASSIFIED
from tests.helpers.hl7 import obx_by_code
from tests.helpers.images import deepapl_images, fullsize_images
from tests.helpers.keys import AUTH
from tests.helpers.uploads import classified

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(plain_gateway):
    return plain_gateway


def label_enum(spec: dict, schema: str, field: str = "label") -> list[str]:
    prop = spec["components"]["schemas"][schema]["properties"][field]
    return prop["enum"] if "enum" in prop else spec["components"]["schemas"][prop["$ref"].split("/")[-1]]["enum"]


def test_services_and_schemas_share_the_label_set(cell_service, subtype_service, gateway):
    cell_spec = httpx.get(f"{cell_service.url}/openapi.json", timeout=10).json()
    assert label_enum(cell_spec, "CellPrediction") == list(CELL_LABELS)
    card = httpx.get(f"{cell_service.url}/v1/model", timeout=10).json()
    assert card["class_order"] == list(CELL_TYPES)
    assert card["version"].startswith("2.")

    subtype_card = httpx.get(f"{subtype_service.url}/v1/model", timeout=10).json()
    assert subtype_card["feature_names"] == [f"log_frac_{t}" for t in LEUKOCYTE_TYPES]
    assert subtype_card["version"].startswith("2.")
    subtype_spec = httpx.get(f"{subtype_service.url}/openapi.json", timeout=10).json()
    counts = subtype_spec["components"]["schemas"]["SubtypeRequest"]["properties"]["counts"]
    assert counts["propertyNames"]["enum"] == list(CELL_LABELS)

    gateway_spec = httpx.get(f"{gateway.url}/openapi.json", timeout=10).json()
    assert label_enum(gateway_spec, "ClassifiedCell") == list(CELL_LABELS)
    for column in [f"count_{label}" for label in CELL_LABELS] + [f"pct_{t}" for t in LEUKOCYTE_TYPES] + \
            [f"per100_{t}" for t in NON_LEUKOCYTE_TYPES]:
        assert column in COLUMNS


def test_report_and_fhir_carry_every_label(gateway):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    files = [(p.name, p.read_bytes()) for _, p in fullsize_images()[::4]]
    files += [(f"apl-{p.parent.name}-{p.name}", p.read_bytes()) for p in deepapl_images("Blast, no lineage spec", 6)]
    files += [(f"smudge-{p.parent.name}-{p.name}", p.read_bytes()) for p in deepapl_images("Smudge cells", 4)]
    report = classified(gateway.url, "P-vocab", files)
    assert list(report["cell_counts"]) == list(CELL_LABELS)
    assert list(report["leukocyte_differential"]) == list(LEUKOCYTE_TYPES)
    assert list(report["per_100_leukocytes"]) == list(NON_LEUKOCYTE_TYPES)
    leukocytes = sum(report["cell_counts"][t] for t in LEUKOCYTE_TYPES)
    assert report["per_100_leukocytes"]["smudge"] == pytest.approx(
        100 * report["cell_counts"]["smudge"] / leukocytes, abs=0.01)

    fhir = httpx.get(f"{gateway.url}/patients/P-vocab/classification",
                     headers={**AUTH, "Accept": "application/fhir+json"}, timeout=10).json()
    resource = DiagnosticReport.model_validate(fhir)
    observations = {o.id: o for o in resource.contained if o.get_resource_type() == "Observation"}
    codes = {o.code.coding[0].code for o in observations.values()}
    assert {"26446-5", "26524-9"} <= codes, "blasts and promyelocytes per 100 leukocytes (LOINC)"
    for label in LEUKOCYTE_TYPES:
        observation = observations[f"diff-{label}"]
        assert float(observation.valueQuantity.value) == pytest.approx(report["leukocyte_differential"][label],
                                                                       abs=0.01)
        if label != UNCLASSIFIED:
            assert observation.code.coding[0].code == DIFFERENTIAL_LOINC[label][0]
    assert "smudge" in observations and "quality" in observations

    hl7 = httpx.get(f"{gateway.url}/patients/P-vocab/classification",
                    headers={**AUTH, "Accept": "application/hl7-v2"}, timeout=10)
    assert hl7.status_code == 200, hl7.text
    obx = {code: fields[5] for code, fields in obx_by_code(hl7.text).items()}
    for label in LEUKOCYTE_TYPES:
        code = "unclassified-per-100-leukocytes" if label == UNCLASSIFIED else DIFFERENTIAL_LOINC[label][0]
        assert float(obx[code]) == pytest.approx(report["leukocyte_differential"][label], abs=0.01), label
    assert float(obx["smudge-cells-per-100-leukocytes"]) == pytest.approx(report["per_100_leukocytes"]["smudge"],
                                                                          abs=0.01)
    assert "image-set-quality" in obx
