"""FHIR DiagnosticReport and HL7 v2.5.1 ORU^R01 for each report status, validated by fhir.resources
and by hl7apy's own parser."""

from __future__ import annotations

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from gateway.fhir import DIFFERENTIAL_LOINC, NUCLEATED_RBC_LOINC, to_diagnostic_report
from gateway.hl7 import RESULT_STATUS, _text, to_oru_r01
from shared.schemas import REVIEW_COMMENT_MAX
from tests.helpers.reports import sample_report

REVIEWED = {"preliminary": {}, "final": {"reviewed_by": "Dr. Ada|Lovelace^&", "reviewed_at": "2026-11-28T13:00:00+00:00",
                                         "version": 2, "supersedes": "1" * 32, "review_comment": "two blasts"},
            "amended": {"reviewed_by": "Dr B", "reviewer_key_id": "drb", "reviewed_at": "2026-11-29T13:00:00+00:00",
                        "version": 3, "supersedes": "2" * 32}}  # signed with Dr B's personal key


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
        assert order.OBR.obr_32.obr_32_1.to_er7() == f"{report.reviewer_key_id or ''}&{_clean(report.reviewed_by)}"


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
        identifier = resource.resultsInterpreter[0].identifier
        assert (identifier.value if identifier else None) == report.reviewer_key_id
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


def _chain() -> list:
    """Versions 1 (preliminary), 2 (final) and 3 (amended) of one report, as the store makes them."""
    first = report_with("preliminary").model_copy(update={"report_id": "1" * 32, "first_report_id": "1" * 32})
    final = report_with("final").model_copy(update={"report_id": "2" * 32, "supersedes": "1" * 32,
                                                    "first_report_id": "1" * 32})
    amended = report_with("amended").model_copy(update={"report_id": "3" * 32, "supersedes": "2" * 32,
                                                        "first_report_id": "1" * 32})
    return [first, final, amended]


def test_versions_of_one_report_share_the_lis_order_and_identifier():
    """A final (F) or amended (C) result replaces the preliminary one in the LIS only when it names the
    same order: OBR-3 and the FHIR identifier are the chain's, MSH-10 and the FHIR id each version's."""
    messages = [parse(to_oru_r01(report)) for report in _chain()]
    orders = [m.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.OBR for m in messages]
    assert {o.obr_3.to_er7() for o in orders} == {"1" * 32 + "^AML-CLASSIFIER"}
    assert [o.obr_25.to_er7() for o in orders] == ["P", "F", "C"]
    assert len({m.msh.msh_10.to_er7() for m in messages}) == 3
    resources = [to_diagnostic_report(report) for report in _chain()]
    assert {r["identifier"][0]["value"] for r in resources} == {"1" * 32}
    assert [r["id"] for r in resources] == ["1" * 32, "2" * 32, "3" * 32]


def test_reports_stored_without_a_chain_id_fall_back_to_their_own_id():
    report = report_with("preliminary")
    assert report.first_report_id is None
    obr = parse(to_oru_r01(report)).ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.OBR
    assert obr.obr_3.to_er7() == "9" * 32 + "^AML-CLASSIFIER"
    assert to_diagnostic_report(report)["identifier"][0]["value"] == "9" * 32
    unsaved = report.model_copy(update={"report_id": None})
    assert to_diagnostic_report(unsaved)["identifier"][0]["value"] == unsaved.request_id


def _references(node, skip=None) -> set[str]:
    """Every ``reference`` string in ``node`` (a FHIR resource as JSON), leaving out the object ``skip``."""
    if node is skip:
        return set()
    if isinstance(node, dict):
        found = {node["reference"]} if isinstance(node.get("reference"), str) else set()
        return found.union(*(_references(value, skip) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_references(value, skip) for value in node))
    return set()


def assert_contained_are_referenced(resource: dict) -> None:
    """FHIR dom-3: each contained resource is referenced ("#id") from elsewhere in the resource."""
    for item in resource.get("contained", []):
        assert f"#{item['id']}" in _references(resource, skip=item), f"contained {item['id']} is never referenced"


def _with_apl(report, probability: float | None, cell_head: bool = True, patient_model: bool = True):
    models = report.models.model_copy(update={
        "apl_cell_head": {"name": "apl-head", "version": "1.0.0", "sha256": "c" * 64} if cell_head else None,
        "apl_patient": {"name": "apl-patient", "version": "1.0.0", "sha256": "d" * 64} if patient_model else None})
    fields = ({"apl_probability": probability, "apl_threshold": 0.4, "apl_alert": probability >= 0.4}
              if probability is not None else {})
    return report.model_copy(update={"models": models, **fields})


@pytest.mark.parametrize("case", ["no-apl-models", "apl-alert", "apl-no-alert", "models-without-probability",
                                  "head-only", "patient-model-only"])
@pytest.mark.parametrize("status", ["preliminary", "amended"])
def test_fhir_every_contained_resource_is_referenced(case, status):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    base = report_with(status)
    report = {"no-apl-models": base,
              "apl-alert": _with_apl(base, 0.93),
              "apl-no-alert": _with_apl(base, 0.1),
              "models-without-probability": _with_apl(base, None),
              "head-only": _with_apl(base, 0.5, patient_model=False),
              "patient-model-only": _with_apl(base, 0.5, cell_head=False)}[case]
    resource = to_diagnostic_report(report)
    DiagnosticReport.model_validate(resource)
    assert_contained_are_referenced(resource)
    devices = {item["id"] for item in resource["contained"] if item["resourceType"] == "Device"}
    observation = next((o for o in resource["contained"] if o["id"] == "apl-probability"), None)
    assert (observation is not None) == (report.apl_probability is not None)
    if observation is None:
        assert not devices & {"apl-cell-head-model", "apl-patient-model"}
        return
    assert ("apl-cell-head-model" in devices) == (report.models.apl_cell_head is not None)
    assert ("apl-patient-model" in devices) == (report.models.apl_patient is not None)
    assert observation["device"]["reference"] == ("#apl-patient-model" if report.models.apl_patient
                                                  else "#subtype-model")
    if report.models.apl_cell_head:
        assert "#apl-cell-head-model" in _references(observation)


@pytest.mark.parametrize("comment_length", [760, REVIEW_COMMENT_MAX])
def test_hl7_note_keeps_the_reviewer_comment_whole_however_many_warnings(comment_length):
    comment = ("two blasts missed; " * 300)[:comment_length - 4] + " END"  # up to the longest the API takes
    warnings = [f"warning {i}: " + "x" * 300 for i in range(20)]
    report = report_with("final").model_copy(update={"review_comment": comment, "warnings": warnings})
    _, note = _observations_by_code(report)
    assert f"Comment: {_text(comment, len(comment))} Warnings: warning 0" in note, "whole, and before the warnings"
    assert note.endswith("...") and len(note) == max(2000, note.index(" Warnings:") + 200)


def test_hl7_free_text_carries_no_control_characters_and_says_utf8():
    """MLLP frames messages with 0x0B ... 0x1C: a file name or an older stored comment holding them (or a NUL)
    must not reach the message; names and comments are Unicode, and MSH-18 says so."""
    report = sample_report().model_copy(update={
        "status": "final", "version": 2, "reviewed_by": "Dr Jürgen Groß", "reviewed_at": "2026-11-28T13:00:00+00:00",
        "review_comment": "Blasten \x1c\x0b\x00\x07 gezählt — Prüfung\u0085", "warnings": ["file a\x1cb.jpg = c.jpg"]})
    message = to_oru_r01(report)
    assert not [c for c in message if (ord(c) < 32 and c != "\r") or 0x7f <= ord(c) <= 0x9f]
    parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.msh.msh_18.value == "UNICODE UTF-8"
    assert "gezählt — Prüfung" in message and "Groß" in message


def test_a_review_comment_with_control_characters_is_refused_line_breaks_kept():
    from pydantic import ValidationError

    from shared.schemas import ReviewRequest

    assert ReviewRequest(comment="two lines\r\nand a\ttab").comment == "two lines\r\nand a\ttab"
    for bad in ("a\x00b", "mllp \x0b", "end \x1c", "c1 \x85"):
        with pytest.raises(ValidationError, match="control characters"):
            ReviewRequest(comment=bad)
