"""FHIR DiagnosticReport and HL7 v2.5.1 ORU^R01 for each report status, validated by fhir.resources
and by hl7apy's own parser."""

from __future__ import annotations

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from gateway.fhir import DIFFERENTIAL_LOINC, NUCLEATED_RBC_LOINC, to_diagnostic_report
from gateway.hl7 import RESULT_STATUS, _text, to_oru_r01
from tests.helpers.reports import sample_report

REVIEWED = {"preliminary": {}, "final": {"reviewed_by": "Dr. Ada|Lovelace^&", "reviewed_at": "2026-11-28T13:00:00+00:00",
                                         "version": 2, "supersedes": "1" * 32, "review_comment": "two blasts"},
            "amended": {"reviewed_by": "Dr B", "reviewed_at": "2026-11-29T13:00:00+00:00", "version": 3,
                        "supersedes": "2" * 32}}


def report_with(status: str):
    return sample_report().model_copy(update={"status": status, "report_id": "9" * 32, **REVIEWED[status]})


def _clean(name: str) -> str:
    return _text(name)


def parse(text: str):
    return parse_message(text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)


@pytest.mark.parametrize("status", ["preliminary", "final", "amended"])
def test_hl7_oru_r01_parses_and_carries_the_status(status):
    report = report_with(status)
    text = to_oru_r01(report)
    message = parse(text)
    assert message.validate()
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and message.msh.msh_12.to_er7() == "2.5.1"
    result = message.ORU_R01_PATIENT_RESULT
    assert result.ORU_R01_PATIENT.PID.pid_3.to_er7().split("^")[0] == "P-1"
    order = result.ORU_R01_ORDER_OBSERVATION
    assert order.OBR.obr_25.to_er7() == RESULT_STATUS[status] == {"preliminary": "P", "final": "F", "amended": "C"}[status]
    observations = [g.OBX for g in order.ORU_R01_OBSERVATION]
    codes = {o.obx_3.to_er7().split("^")[0]: o for o in observations}
    expected = {code for code, _ in DIFFERENTIAL_LOINC.values()} | {NUCLEATED_RBC_LOINC[0]}
    assert expected <= set(codes)
    assert all(o.obx_11.to_er7() == RESULT_STATUS[status] for o in observations)
    assert float(codes["770-8"].obx_5.to_er7()) == pytest.approx(report.leukocyte_differential["neutrophil"], abs=0.01)
    assert float(codes["26446-5"].obx_5.to_er7()) == pytest.approx(report.leukocyte_differential["blast"], abs=0.01)
    if report.reviewed_by:
        interpreter = order.OBR.obr_32.to_er7()
        assert _clean(report.reviewed_by) in interpreter and "|" not in interpreter


@pytest.mark.parametrize("status", ["preliminary", "final", "amended"])
def test_fhir_status_and_results_interpreter(status):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    report = report_with(status)
    resource = DiagnosticReport.model_validate(to_diagnostic_report(report))
    assert resource.status == status
    observations = [r for r in resource.contained if r.get_resource_type() == "Observation"]
    assert {o.status for o in observations} == {status}
    fhir_codes = {o.code.coding[0].code for o in observations}
    hl7_codes = {o.obx_3.to_er7().split("^")[0]
                 for o in [g.OBX for g in parse(to_oru_r01(report)).ORU_R01_PATIENT_RESULT
                           .ORU_R01_ORDER_OBSERVATION.ORU_R01_OBSERVATION]}
    loinc = {code for code, _ in DIFFERENTIAL_LOINC.values()} | {NUCLEATED_RBC_LOINC[0]}
    assert loinc <= fhir_codes and loinc <= hl7_codes, "the same LOINC codes in both"
    if status == "preliminary":
        assert not resource.resultsInterpreter
        assert resource.conclusion.startswith("Preliminary")
    else:
        assert resource.resultsInterpreter[0].display == report.reviewed_by
        assert "signed off" in resource.conclusion


def _quality(review: bool, unfamiliar: bool):
    from shared.schemas import ReportQuality

    return ReportQuality(n_cells=16, unclassified_fraction=0.125, smudge_fraction=0.0625,
                         appearance_distance=7.5 if unfamiliar else 2.9, appearance_threshold=4.17,
                         out_of_domain_fraction=0.9 if unfamiliar else 0.0, looks_out_of_domain=unfamiliar,
                         review_every_cell=review)


def _observations_by_code(report) -> tuple[dict, str]:
    """The HL7 message of ``report``: its OBX segments by code, and the NTE text."""
    order = parse(to_oru_r01(report)).ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
    return {g.OBX.obx_3.to_er7().split("^")[0]: g.OBX for g in order.ORU_R01_OBSERVATION}, order.NTE.nte_3.to_er7()


@pytest.mark.parametrize("unfamiliar", [True, False])
def test_hl7_carries_the_quality_and_the_review_every_cell_instruction(unfamiliar):
    warning = "these images look unlike the images the cell model was trained on: review every cell"
    report = report_with("preliminary").model_copy(update={
        "quality": _quality(review=unfamiliar, unfamiliar=unfamiliar), "warnings": [warning] if unfamiliar else []})
    codes, note = _observations_by_code(report)
    fit = codes["image-set-quality"]
    assert fit.obx_2.to_er7() == "CWE"
    assert fit.obx_5.to_er7().split("^")[0] == ("N" if unfamiliar else "Y")
    assert fit.obx_8.to_er7() == ("A" if unfamiliar else "N")
    assert float(codes["unclassified-fraction"].obx_5.to_er7()) == pytest.approx(0.125)
    distance = codes["appearance-distance"]
    assert float(distance.obx_5.to_er7()) == pytest.approx(7.5 if unfamiliar else 2.9)
    assert distance.obx_7.to_er7() == "<4.17"
    assert distance.obx_8.to_er7() == ("A" if unfamiliar else "N")
    assert all(o.obx_11.to_er7() == "P" for o in codes.values())
    if unfamiliar:
        assert note.startswith("REVIEW EVERY CELL") and "look unlike" in note
    else:
        assert "REVIEW EVERY CELL" not in note and "Warnings" not in note


def test_hl7_without_a_quality_object_has_no_quality_rows():
    codes, note = _observations_by_code(report_with("final"))
    assert not {"image-set-quality", "unclassified-fraction", "appearance-distance"} & set(codes)
    assert "REVIEW EVERY CELL" not in note
