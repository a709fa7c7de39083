"""A report as an HL7 v2.5.1 ORU^R01 message (built and checked with hl7apy), for LIS interfaces
that do not speak FHIR.

- MSH: sender AML-CLASSIFIER, message control id = the first 20 characters of the report version's id (MSH-10
  is at most 20 in v2.5.1; one per version), processing id P, character set UNICODE UTF-8 (MSH-18).
- PID-3: the patient id (assigning authority AML, type PI). PID-5: name type U (the gateway
  never holds names).
- OBR: the panel LOINC 57021-8 as in the FHIR report, OBR-3 (filler order number) the id of the
  report's first version, the same for every version (so that a LIS replaces the preliminary result
  with the final or corrected one instead of filing a new order), OBR-7 when this version's result was
  produced (the models' time for version 1, the review's for later versions), OBR-22 when this version was made, OBR-25 the result status (P preliminary, F final,
  C corrected = amended), OBR-32 the reviewer.
- OBX: one per leukocyte category (same LOINC codes as the FHIR Observations, % of leukocytes),
  nucleated RBC 58413-6, smudge cells, AML probability and the predicted subtype under local
  codes (coding system L), the APL probability (local code apl-probability, %, OBX-7 the alert
  threshold, OBX-8 ``AA`` critical abnormal when the APL alert fires, else ``N``); the report's
  quality, as the FHIR report's ``quality`` Observation carries it: ``image-set-quality`` (CWE,
  HL7 table 0136 ``Y``/``N``: are the images fit for automated counts; ``N`` and OBX-8 ``A`` when
  every cell is to be reviewed), ``unclassified-fraction`` and ``appearance-distance`` (OBX-7 the
  patient threshold, OBX-8 ``A`` when the images look unlike the training data); OBX-11 carries
  the same status as OBR-25.
- NTE: the APL alert and the review-every-cell instruction first, then the reviewer's comment, then the
  report's warnings (as in the FHIR report's conclusion). The comment is carried whole (the API takes at
  most 4000 characters); the warnings come last and are cut where the note would pass 2000 characters,
  keeping at least 200 of them (NTE-3 is FT, up to 65536 characters in v2.5.1).
"""

from __future__ import annotations

import re
from datetime import datetime

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from gateway.fhir import DIFFERENTIAL_LOINC, NUCLEATED_RBC_LOINC, chain_id
from shared.schemas import REVIEW_COMMENT_MAX, PatientReport

HL7_MEDIA_TYPE = "application/hl7-v2"
RESULT_STATUS = {"preliminary": "P", "final": "F", "amended": "C"}
# HL7 delimiters and every control character (C0, DEL, C1): MLLP frames a message with 0x0B and 0x1C, and a
# LIS parser may stop at a NUL, so none of them may reach free text
_SPECIAL = re.compile(r"[|^~\\&\x00-\x1f\x7f-\x9f]")
NOTE_MAX = 2000  # the note's length before the warnings are cut (a longer comment makes a longer note)
WARNINGS_MIN = 200  # the warnings' room however long the comment


def _text(value: str, limit: int = 200) -> str:
    """Free text without HL7 delimiters (the message stays parseable whatever a reviewer typed)."""
    return _SPECIAL.sub(" ", value)[:limit].strip()


def _ts(iso: str | None) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso).strftime("%Y%m%d%H%M%S%z")


def _quality_observations(report: PatientReport) -> list[tuple[str, ...]]:
    """The report's quality as OBX rows (none for a report made without a quality object)."""
    quality = report.quality
    if quality is None:
        return []
    review = "A" if quality.review_every_cell else "N"
    rows: list[tuple[str, ...]] = [
        ("CWE", "image-set-quality^Image set fit for automated counts (N: review every cell)^L",
         "N^No^HL70136" if quality.review_every_cell else "Y^Yes^HL70136", "", "", review),
        ("NM", "unclassified-fraction^Share of cells the model could not place^L",
         f"{quality.unclassified_fraction:.4f}", "1^ratio^UCUM")]
    if quality.appearance_distance is not None:
        limit = f"<{quality.appearance_threshold:.2f}" if quality.appearance_threshold is not None else ""
        rows.append(("NM", "appearance-distance^Median distance of the images' appearance from the training images'^L",
                     f"{quality.appearance_distance:.3f}", "", limit, "A" if quality.looks_out_of_domain else "N"))
    return rows


def to_oru_r01(report: PatientReport, sending_facility: str = "LAB", receiving_application: str = "LIS") -> str:
    """The report as ER7 text (segments separated by carriage returns)."""
    status = RESULT_STATUS[report.status]
    message = Message("ORU_R01", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
    msh = message.msh
    msh.msh_3 = "AML-CLASSIFIER"
    msh.msh_4 = _text(sending_facility)
    msh.msh_5 = _text(receiving_application)
    msh.msh_7 = _ts(report.reviewed_at or report.created_at)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = (report.report_id or report.request_id)[:20]
    msh.msh_11 = "P"
    msh.msh_12 = "2.5.1"
    msh.msh_18 = "UNICODE UTF-8"  # names and comments are Unicode; an empty MSH-18 would mean ASCII
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    patient = result.add_group("ORU_R01_PATIENT")
    patient.pid.pid_1 = "1"
    patient.pid.pid_3 = f"{report.patient_id}^^^AML^PI"
    patient.pid.pid_5 = "^^^^^^U"
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.obr
    obr.obr_1 = "1"
    obr.obr_3 = f"{chain_id(report)}^AML-CLASSIFIER"
    obr.obr_4 = "57021-8^CBC W Auto Differential panel - Blood^LN"
    obr.obr_7 = _ts(report.created_at if report.version == 1 else (report.reviewed_at or report.created_at))
    obr.obr_22 = _ts(report.reviewed_at or report.created_at)
    obr.obr_25 = status
    if report.reviewed_by:
        # OBR-32.1 (CNN): ID number & family name; the ID is the personal key that vouches for the name
        obr.obr_32 = f"{report.reviewer_key_id or ''}&{_text(report.reviewed_by)}"

    observations: list[tuple[str, ...]] = []  # (type, code^text^system, value, units[, range, abnormal flag])
    for category, (code, display) in DIFFERENTIAL_LOINC.items():
        observations.append(("NM", f"{code}^{display}^LN", f"{report.leukocyte_differential[category]:.2f}",
                             "%^%^UCUM"))
    observations.append(("NM", "unclassified-per-100-leukocytes^Unclassified leukocytes/100 leukocytes^L",
                         f"{report.leukocyte_differential['unclassified']:.2f}", "%^%^UCUM"))
    leukocytes = sum(report.cell_counts[c] for c in report.leukocyte_differential)
    nrbc = 100.0 * report.cell_counts["erythroblast"] / leukocytes if leukocytes else 0.0
    smudge = 100.0 * report.cell_counts.get("smudge", 0) / leukocytes if leukocytes else 0.0
    observations.append(("NM", f"{NUCLEATED_RBC_LOINC[0]}^{NUCLEATED_RBC_LOINC[1]}^LN", f"{nrbc:.2f}",
                         "/100{WBCs}^/100 WBC^UCUM"))
    observations.append(("NM", "smudge-cells-per-100-leukocytes^Smudge cells/100 leukocytes^L", f"{smudge:.2f}",
                         "/100{WBCs}^/100 WBC^UCUM"))
    observations.append(("NM", "aml-probability^Probability of AML from the leukocyte differential^L",
                         f"{report.aml_probability:.4f}", "1^probability^UCUM"))
    observations.append(("CWE", "aml-genetic-subtype^Predicted AML genetic subtype (or control)^L",
                         f"{report.prediction}^{report.prediction}^L", ""))
    if report.apl_probability is not None and report.apl_threshold is not None:
        observations.append(("NM", "apl-probability^Probability of acute promyelocytic leukaemia (PML::RARA)^L",
                             f"{100 * report.apl_probability:.2f}", "%^%^UCUM",
                             f"<{100 * report.apl_threshold:.2f}", "AA" if report.apl_alert else "N"))
    observations += _quality_observations(report)
    for i, (kind, code, value, units, *flags) in enumerate(observations, start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(i)
        obx.obx_2 = kind
        obx.obx_3 = code
        obx.obx_5 = value
        if units:
            obx.obx_6 = units
        if flags:
            if flags[0]:
                obx.obx_7 = flags[0]
            obx.obx_8 = flags[1]
        obx.obx_11 = status
    note = ("SUSPECTED APL: urgent confirmation of PML::RARA. " if report.apl_alert else "")
    if report.quality is not None and report.quality.review_every_cell:
        note += "REVIEW EVERY CELL: the automated counts may be wrong. "
    note += (f"Automated pre-classification from {report.n_images} cell images; decision support only. "
            + (f"Reviewed by {_text(report.reviewed_by)}." if report.reviewed_by else "Not yet reviewed."))
    if report.review_comment:  # whole (the API takes at most 4000 characters), before the warnings
        note += f" Comment: {_text(report.review_comment, REVIEW_COMMENT_MAX)}"
    if report.warnings:
        # the warnings fill the note up to NOTE_MAX characters (at least WARNINGS_MIN of them however long the
        # comment), the cut visible: more warnings than fit (the FHIR report has them all)
        warnings = " Warnings: " + "; ".join(report.warnings) + "."
        room = max(NOTE_MAX - len(note), WARNINGS_MIN)
        note += warnings if len(warnings) <= room else warnings[:room - 3] + "..."
    nte = order.add_segment("NTE")
    nte.nte_1 = "1"
    nte.nte_3 = _text(note, len(note))
    message.validate()
    return message.to_er7() + "\r"
