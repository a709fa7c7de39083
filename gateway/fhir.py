"""A patient report as a FHIR R4 DiagnosticReport with contained Observations and Devices.

``id`` is the report version's id, ``identifier`` the id of the report's first version, the same for
every version (a LIS then replaces the preliminary result with the final or amended one). Every
contained resource is referenced from the report (FHIR rule dom-3): the Observations from ``result``,
the Devices from the Observations they produced; the APL models' Devices are left out when there is
no APL Observation.

Validated in the tests with the ``fhir.resources`` package's R4B models (R4B shares R4's
DiagnosticReport, Observation and Device structure).
"""

from __future__ import annotations

from shared.schemas import PatientReport

FHIR_MEDIA_TYPE = "application/fhir+json"
LOINC = "http://loinc.org"
LOCAL = "urn:aml-classifier:codes"
PATIENT_IDENTIFIER_SYSTEM = "urn:aml-classifier:patient-id"
REVIEWER_KEY_SYSTEM = "urn:aml-classifier:reviewer-key"  # identifies a personal API key (gateway.keys --reviewer)
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
APL_CODE = "apl-probability"
APL_TEXT = "Probability of acute promyelocytic leukaemia (PML::RARA) from the cell images and counts"
APL_CELL_HEAD_EXTENSION = "urn:aml-classifier:apl-cell-head"

# leukocyte category -> (LOINC code, display); per 100 leukocytes. Blasts and promyelocytes have no
# "by Automated count" code: 26446-5 and 26524-9 are LOINC's method-less codes for them (the ones labs
# send for a reviewed smear differential).
DIFFERENTIAL_LOINC: dict[str, tuple[str, str]] = {
    "blast": ("26446-5", "Blasts/100 leukocytes in Blood"),
    "promyelocyte": ("26524-9", "Promyelocytes/100 leukocytes in Blood"),
    "neutrophil": ("770-8", "Neutrophils/100 leukocytes in Blood by Automated count"),
    "lymphocyte": ("736-9", "Lymphocytes/100 leukocytes in Blood by Automated count"),
    "monocyte": ("5905-5", "Monocytes/100 leukocytes in Blood by Automated count"),
    "eosinophil": ("713-8", "Eosinophils/100 leukocytes in Blood by Automated count"),
    "basophil": ("706-2", "Basophils/100 leukocytes in Blood by Automated count"),
    "ig": ("71695-1", "Immature granulocytes/100 leukocytes in Blood by Automated count"),
}
NUCLEATED_RBC_LOINC = ("58413-6", "Nucleated erythrocytes/100 leukocytes [Ratio] in Blood by Automated count")


def chain_id(report: PatientReport) -> str:
    """The report's id across all its versions: version 1's report_id (reports stored before the
    store kept it: their own report_id, or the request id of a report never stored)."""
    return report.first_report_id or report.report_id or report.request_id


def _percent(value: float) -> dict:
    return {"value": round(float(value), 2), "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}


def _observation(ident: str, code: dict, value: dict, device: str, status: str = "final") -> dict:
    return {"resourceType": "Observation", "id": ident, "status": status,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": code, "device": {"reference": f"#{device}"}, **value}


def _ratio(name: str, text: str, value: float) -> dict:
    return {"code": {"coding": [{"system": LOCAL, "code": name}], "text": text},
            "valueQuantity": {"value": round(float(value), 4), "unit": "ratio", "system": "http://unitsofmeasure.org",
                              "code": "1"}}


def _quality_observation(report: PatientReport) -> dict:
    """How far to trust the counts: unclassified and smudge shares, the images' appearance distance."""
    quality = report.quality
    components = [_ratio("unclassified-fraction", "Share of cells the model could not place",
                         quality.unclassified_fraction),
                  _ratio("smudge-fraction", "Share of smudge cells", quality.smudge_fraction)]
    if quality.appearance_distance is not None:
        components.append(_ratio("appearance-distance", "Median distance of the images' appearance from the "
                                 "training images'", quality.appearance_distance))
    observation = _observation(
        "quality", {"coding": [{"system": LOCAL, "code": "image-set-quality"}],
                    "text": "Quality of the image set for automated classification"},
        {"valueBoolean": not quality.review_every_cell, "component": components}, "cell-model")
    if quality.review_every_cell:
        observation["interpretation"] = [{"coding": [{
            "system": INTERPRETATION, "code": "A",
            "display": "Abnormal"}], "text": "review every cell: the automated counts may be wrong"}]
    return observation


def apl_conclusion(report: PatientReport) -> str:
    """The DiagnosticReport's conclusion sentence when the APL alert fires (empty otherwise)."""
    if not report.apl_alert:
        return ""
    return (f"Suspected acute promyelocytic leukaemia (APL probability {100 * report.apl_probability:.0f} %): "
            "urgent confirmation of PML::RARA.")


def _apl_observation(report: PatientReport) -> dict:
    """P(APL) in %, interpretation AA (critical abnormal) exactly when the alert fires."""
    observation = _observation(
        "apl-probability", {"coding": [{"system": LOCAL, "code": APL_CODE, "display": APL_TEXT}], "text": APL_TEXT},
        {"valueQuantity": _percent(100.0 * report.apl_probability),
         "referenceRange": [{"high": _percent(100.0 * report.apl_threshold),
                             "text": "alert at or above this probability"}]},
        "apl-patient-model" if report.models.apl_patient else "subtype-model")
    if report.models.apl_cell_head:  # Observation.device holds one Device: the per-cell head that fed it here
        observation["extension"] = [{"url": APL_CELL_HEAD_EXTENSION,
                                     "valueReference": {"reference": "#apl-cell-head-model",
                                                        "display": "per-cell APL head (cell logits)"}}]
    if report.apl_alert:
        observation["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": "AA",
                                                      "display": "Critical abnormal"}],
                                          "text": "suspected APL: urgent confirmation of PML::RARA"}]
    return observation


def to_diagnostic_report(report: PatientReport) -> dict:
    """Status follows the report (preliminary, final, amended), the Observations' too; the reviewer
    is the ``resultsInterpreter`` (with the personal API key's id as its identifier where one signed)."""
    resource = _diagnostic_report(report)
    for item in resource["contained"]:
        if item["resourceType"] == "Observation":
            item["status"] = report.status
    if report.reviewed_by:
        interpreter = {"display": report.reviewed_by}
        if report.reviewer_key_id:  # a personal key's own name: say which key vouches for it
            interpreter["identifier"] = {"system": REVIEWER_KEY_SYSTEM, "value": report.reviewer_key_id}
        resource["resultsInterpreter"] = [interpreter]
        resource["conclusion"] += (f" Reviewed by {report.reviewed_by} at {report.reviewed_at}"
                                   + (" and signed off." if report.status != "preliminary" else " (not signed off)."))
        if report.review_comment:
            resource["conclusion"] += f" Reviewer's comment: {report.review_comment}"
    if report.supersedes:
        resource["extension"] = [{"url": "urn:aml-classifier:replaces-report", "valueString": report.supersedes}]
    return resource


def _diagnostic_report(report: PatientReport) -> dict:
    devices = [
        {"resourceType": "Device", "id": f"{kind}-model",
         "deviceName": [{"name": info["name"], "type": "model-name"}],
         "version": [{"value": info["version"]}, {"type": {"text": "sha256"}, "value": info["sha256"]}]
         + ([{"type": {"text": "rules-sha256"}, "value": info["rules_sha256"]}] if info.get("rules_sha256") else [])}
        for kind, info in (("cell", report.models.cell), ("subtype", report.models.subtype),
                           ("apl-cell-head", report.models.apl_cell_head),
                           ("apl-patient", report.models.apl_patient))
        if info
    ]
    observations = []
    for category, (code, display) in DIFFERENTIAL_LOINC.items():
        observations.append(_observation(
            f"diff-{category}", {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            {"valueQuantity": _percent(report.leukocyte_differential[category])}, "cell-model"))
    unclassified = report.leukocyte_differential["unclassified"]
    observations.append(_observation(
        "diff-unclassified",
        {"coding": [{"system": LOCAL, "code": "unclassified-per-100-leukocytes"}],
         "text": "Unclassified leukocytes (cells the model could not place)/100 leukocytes"},
        {"valueQuantity": _percent(unclassified)}, "cell-model"))
    leukocytes = sum(report.cell_counts[c] for c in report.leukocyte_differential)
    nrbc = 100.0 * report.cell_counts["erythroblast"] / leukocytes if leukocytes else 0.0
    smudge = 100.0 * report.cell_counts.get("smudge", 0) / leukocytes if leukocytes else 0.0
    observations.append(_observation(
        "smudge", {"coding": [{"system": LOCAL, "code": "smudge-cells-per-100-leukocytes"}],
                   "text": "Smudge cells/100 leukocytes (not part of the differential)"},
        {"valueQuantity": {"value": round(smudge, 2), "unit": "/100 WBC", "system": "http://unitsofmeasure.org",
                           "code": "/100{WBCs}"}}, "cell-model"))
    observations.append(_observation(
        "nrbc", {"coding": [{"system": LOINC, "code": NUCLEATED_RBC_LOINC[0], "display": NUCLEATED_RBC_LOINC[1]}],
                 "text": NUCLEATED_RBC_LOINC[1]},
        {"valueQuantity": {"value": round(nrbc, 2), "unit": "/100 WBC", "system": "http://unitsofmeasure.org",
                           "code": "/100{WBCs}"}}, "cell-model"))
    observations.append(_observation(
        "aml-probability", {"coding": [{"system": LOCAL, "code": "aml-probability"}],
                            "text": "Probability of AML (vs control) from the leukocyte differential"},
        {"valueQuantity": {"value": round(report.aml_probability, 4), "unit": "probability",
                           "system": "http://unitsofmeasure.org", "code": "1"}}, "subtype-model"))
    observations.append(_observation(
        "subtype", {"coding": [{"system": LOCAL, "code": "aml-genetic-subtype"}],
                    "text": "Predicted AML genetic subtype (or control)"},
        {"valueCodeableConcept": {"coding": [{"system": LOCAL, "code": report.prediction}], "text": report.prediction},
         "component": [{"code": {"coding": [{"system": LOCAL, "code": f"probability-{name}"}],
                                 "text": f"P({name})"},
                        "valueQuantity": {"value": round(p, 4), "unit": "probability",
                                          "system": "http://unitsofmeasure.org", "code": "1"}}
                       for name, p in report.probabilities.items()]}, "subtype-model"))
    if report.quality is not None:
        observations.append(_quality_observation(report))
    if report.apl_probability is not None and report.apl_threshold is not None:
        observations.append(_apl_observation(report))
    referenced = {o["device"]["reference"] for o in observations} | {
        e["valueReference"]["reference"] for o in observations for e in o.get("extension", [])}
    devices = [d for d in devices if f"#{d['id']}" in referenced]  # dom-3: no APL Device without its Observation
    conclusion = apl_conclusion(report) + " " if report.apl_alert else ""
    conclusion += ("Preliminary (automated pre-classification, not yet signed off). "
                   if report.status == "preliminary" else "")
    conclusion += (f"Model prediction: {report.prediction} (P(AML) = {report.aml_probability:.2f}) from "
                  f"{report.n_images} images, {report.n_classified} classified, {report.n_unclassified} unclassified, "
                  f"{report.n_failed} failed. Decision support only.")
    if report.warnings:
        conclusion += " Warnings: " + "; ".join(report.warnings)
    return {
        "resourceType": "DiagnosticReport",
        "id": report.report_id or report.request_id,
        "identifier": [{"system": "urn:aml-classifier:report-id", "value": chain_id(report)}],
        "status": report.status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB",
                                  "display": "Laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": "57021-8", "display": "CBC W Auto Differential panel - Blood"}],
                 "text": "Automated leukocyte differential and AML subtype prediction from smear images"},
        "subject": {"identifier": {"system": PATIENT_IDENTIFIER_SYSTEM, "value": report.patient_id}},
        "issued": report.created_at,
        "contained": devices + observations,
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": conclusion,
    }
