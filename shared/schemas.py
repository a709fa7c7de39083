"""Pydantic models of every API schema, in one place."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.subtypes import PATIENT_CLASSES
from shared.vocabulary import CELL_LABELS, CELL_TYPES, LEUKOCYTE_TYPES, NON_LEUKOCYTE_TYPES

CellLabel = Literal[CELL_LABELS]  # type: ignore[valid-type]


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error response."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    request_id: str | None = None


class ModelIdentity(BaseModel):
    name: str
    version: str
    sha256: str


class AplModelIdentity(ModelIdentity):
    rules_sha256: str | None = Field(
        None, description="sha256 of what else decides an assessment: features, pooling, alert threshold, cell "
                          "minimum and the APL cell head expected (None: a service older than this field)")


class CellModelInfo(BaseModel):
    name: str
    version: str
    sha256: str = Field(description="sha256 of the network file that runs")
    rules_sha256: str | None = Field(
        None, description="sha256 of what else decides a label: the preprocessing version, the input size, the "
                          "`unclassified` rule and the appearance reference (None: a service older than this field). "
                          "A client that caches answers keys them by both hashes")
    provider: str = Field(description="onnxruntime execution provider in use, e.g. CPUExecutionProvider")
    variant: str = Field("float", description="the model file that runs: float, or int8 (quantized, same card)")
    apl_head: ModelIdentity | None = Field(
        None, description="the per-cell APL head run on the CNN's embeddings (None: this model has no APL head, "
                          "`apl_logit` is null)")


class CellPrediction(BaseModel):
    filename: str
    label: CellLabel
    confidence: float = Field(ge=0.0, le=1.0, description="calibrated maximum class probability")
    probabilities: dict[str, float] = Field(description=f"one per cell type: {', '.join(CELL_TYPES)}")
    appearance_distance: float | None = Field(
        None, ge=0.0, description="how far the image's colour, density and sharpness statistics are from the "
                                  "training images' (Mahalanobis distance to the nearest training source; thresholds "
                                  "in the model card's `appearance`)")
    apl_logit: float | None = Field(
        None, description="the per-cell APL head's log-odds that this cell comes from a patient with acute "
                          "promyelocytic leukaemia (None: no APL head loaded)")


class CellError(BaseModel):
    filename: str
    error: str


class ClassifyCellsResponse(BaseModel):
    model: CellModelInfo
    results: list[CellPrediction | CellError] = Field(description="one entry per image, in request order")


class CellModelCard(BaseModel):
    """The model card as trained (training/model_card.py) plus the provider and variant in use;
    ``file`` and ``sha256`` are those of the file that runs (the variants: ``serving_variants``)."""

    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    sha256: str
    rules_sha256: str | None = Field(None, description="as in `CellModelInfo`")
    provider: str
    variant: str = "float"
    class_order: list[str]
    unclassified_rule: dict[str, Any]
    apl_head: ModelIdentity | None = Field(None, description="the per-cell APL head in use (None: absent)")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    detail: str
    checks: dict[str, Any] = Field(default_factory=dict)


# --- subtype service -------------------------------------------------------------------------

CellCount = Annotated[int, Field(strict=True, ge=0, le=10_000_000)]
PatientClass = Literal[PATIENT_CLASSES]  # type: ignore[valid-type]
AplLogit = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]
MAX_APL_CELLS = 50_000
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class SubtypeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    counts: dict[CellLabel, CellCount] = Field(
        description=f"cells counted per label ({', '.join(CELL_LABELS)}); missing labels count 0",
        examples=[{"neutrophil": 12, "lymphocyte": 30, "monocyte": 8, "blast": 41, "smudge": 6}],
    )
    apl_cell_logits: list[AplLogit] | None = Field(
        None, min_length=1, max_length=MAX_APL_CELLS,
        description="the cell service's `apl_logit` of every labelled cell of the patient (finite numbers); "
                    "with `apl_cell_head_sha256`, the answer carries an APL assessment")
    apl_cell_head_sha256: str | None = Field(
        None, pattern=SHA256_PATTERN,
        description="sha256 of the APL cell head that computed the logits; one the APL model was not trained on "
                    "gives no assessment and a warning")


class AplAssessment(BaseModel):
    """The patient-level APL alert (issue 10): logistic regression over pooled per-cell APL logits and counts."""

    probability: float = Field(ge=0.0, le=1.0, description="P(acute promyelocytic leukaemia, PML::RARA)")
    alert: bool = Field(description="probability >= threshold: suspected APL, urgent confirmation of PML::RARA")
    threshold: float = Field(ge=0.0, le=1.0, description="chosen in cross-validation for sensitivity >= 0.90")
    n_cells: int = Field(ge=1, description="cells whose logits were pooled")
    features: dict[str, float]
    model: AplModelIdentity


class SubtypeModelInfo(BaseModel):
    name: str
    version: str
    sha256: str = Field(description="sha256 over the member files' hashes")
    rules_sha256: str | None = Field(
        None, description="sha256 of what else decides an answer: each stage's classes, members and voting weights, "
                          "the features and the leukocyte minimum (None: a service older than this field)")


class SubtypePrediction(BaseModel):
    model: SubtypeModelInfo
    aml_probability: float = Field(ge=0.0, le=1.0)
    prediction: PatientClass
    probabilities: dict[str, float] = Field(description=f"one per class: {', '.join(PATIENT_CLASSES)}")
    features: dict[str, float]
    per_100_leukocytes: dict[str, float] = Field(
        description="cells that are not leukocytes (erythroblast, platelet, smudge) per 100 leukocytes")
    apl: AplAssessment | None = Field(
        None, description="APL alert from the cells' APL logits (None: no logits sent, no APL model loaded, or "
                          "logits of another APL cell head; the warnings say which)")
    warnings: list[str]


class SubtypeModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    sha256: str
    classes: list[str]
    feature_names: list[str]
    rules_sha256: str = Field(description="the sha256 of the card's decision fields, as in answers' `model`")
    apl: dict[str, Any] | None = Field(None, description="the APL model's card (apl_card.json) with its "
                                                         "`rules_sha256`; None: absent")


# --- gateway ---------------------------------------------------------------------------------

PATIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class FailedImage(BaseModel):
    filename: str
    error: str


class ClassifiedCell(BaseModel):
    filename: str
    sha256: str
    label: CellLabel = Field(description="the reviewer's label where a reviewer corrected it, else the model's")
    confidence: float = Field(description="the model's confidence in its own label")
    appearance_distance: float | None = None
    model_label: CellLabel | None = Field(None, description="the model's label, kept beside a reviewer's correction "
                                                            "(None: not corrected)")
    apl_logit: float | None = Field(None, description="the cell's APL log-odds (None: no APL head)")


class AplCell(BaseModel):
    """One of the cells that drove the APL probability (reviewers look at these first)."""

    filename: str
    sha256: str
    apl_logit: float


class ReportQuality(BaseModel):
    """How far to trust this report (gateway/quality.py; thresholds in the cell model card)."""

    n_cells: int = Field(description="images that received a label")
    unclassified_fraction: float = Field(ge=0, le=1, description="share of labelled images the model could not place")
    smudge_fraction: float = Field(ge=0, le=1, description="share of labelled images that are smudge cells")
    appearance_distance: float | None = Field(
        None, description="median over the cells of the distance of their appearance (colour, density) from the "
                          "training images'; None when the cell model has no appearance reference")
    appearance_threshold: float | None = Field(None, description="above this median the images look unfamiliar")
    out_of_domain_fraction: float | None = Field(
        None, description="share of cells whose own distance exceeds the per-image threshold")
    looks_out_of_domain: bool = Field(description="the images look unlike anything the model was trained on")
    review_every_cell: bool = Field(description="the counts are not to be trusted without reviewing every cell")


class ModelsUsed(BaseModel):
    cell: dict[str, str] = Field(description="name, version, sha256 (the network file) and, where the cell service "
                                             "reports it, rules_sha256 (the rules that turn its output into labels)")
    subtype: dict[str, str]
    apl_cell_head: dict[str, str] | None = Field(None, description="the cell service's per-cell APL head")
    apl_patient: dict[str, str] | None = Field(None, description="the subtype service's patient-level APL model")


ReportStatus = Literal["preliminary", "final", "amended"]


class PatientReport(BaseModel):
    patient_id: str
    report_id: str | None = Field(None, description="this version's id (GET /reports/{report_id})")
    version: int = Field(1, ge=1, description="1: the models' report; +1 per review")
    status: ReportStatus = Field("preliminary", description="preliminary: the models' (or a reviewer's unsigned) "
                                 "result; final: signed off by a reviewer; amended: a final report corrected later")
    supersedes: str | None = Field(None, description="the version this one replaces")
    first_report_id: str | None = Field(
        None, description="version 1's report_id: the report's identifier across all its versions (HL7 OBR-3, "
                          "the FHIR identifier), so that a final or amended version replaces the earlier result")
    reviewed_by: str | None = Field(None, description="who reviewed this version: the name a personal API key "
                                                      "belongs to, or the name a shared key's request gave")
    reviewer_key_id: str | None = Field(
        None, description="the id of the personal API key the review was made with: `reviewed_by` is then the "
                          "name that key belongs to, checked by the gateway; null when the name was given as free "
                          "text (a shared key, e.g. a LIS that signs its own users in) or no review")
    reviewed_at: str | None = Field(None, description="UTC, ISO 8601")
    review_comment: str | None = None
    request_id: str
    created_at: str = Field(description="UTC, ISO 8601")
    n_images: int
    n_classified: int = Field(description=f"images labelled with one of the {len(CELL_TYPES)} cell types")
    n_unclassified: int
    n_failed: int
    n_duplicates: int = Field(0, ge=0, description="images whose content repeats an earlier image of the upload "
                                                   "(byte for byte): the same cell, counted once")
    failed: list[FailedImage]
    cell_counts: dict[str, int] = Field(description=f"one per label: {', '.join(CELL_LABELS)}")
    leukocyte_differential: dict[str, float] = Field(
        description=f"percent of leukocytes: {', '.join(LEUKOCYTE_TYPES)}")
    per_100_leukocytes: dict[str, float] = Field(
        default_factory=dict, description=f"cells that are not leukocytes, per 100 leukocytes: "
                                          f"{', '.join(NON_LEUKOCYTE_TYPES)}")
    quality: ReportQuality | None = Field(None, description="how far to trust this report")
    aml_probability: float
    prediction: PatientClass
    probabilities: dict[str, float]
    apl_probability: float | None = Field(
        None, ge=0.0, le=1.0, description="P(acute promyelocytic leukaemia) from the cells' APL evidence and the "
                                          "counts (None: no APL model)")
    apl_alert: bool | None = Field(None, description="apl_probability >= apl_threshold: suspected APL, urgent "
                                                     "confirmation of PML::RARA")
    apl_threshold: float | None = Field(None, description="the APL model's alert threshold")
    apl_top_cells: list[AplCell] = Field(
        default_factory=list, description="the (at most 10) cells with the highest APL logit, highest first")
    models: ModelsUsed
    cached: bool
    warnings: list[str]
    cells: list[ClassifiedCell] | None = Field(None, description="with ?include=cells")


# --- report store and review ------------------------------------------------------------------


class ReportSummary(BaseModel):
    id: str
    patient_id: str
    version: int
    status: ReportStatus
    created_at: str
    supersedes: str | None = None
    superseded_by: str | None = Field(None, description="the newer version of this report, if any")
    reviewed_by: str | None = None
    reviewer_key_id: str | None = Field(None, description="as in the report: set when a personal key signed")
    reviewed_at: str | None = None
    prediction: str
    apl_alert: bool | None = Field(None, description="the version's APL alert (None: no APL assessment)")
    models: ModelsUsed


class ReportList(BaseModel):
    patient_id: str
    reports: list[ReportSummary] = Field(description="newest first")


class CellCorrection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern=SHA256_PATTERN, description="the cell's image hash, as in `cells`")
    label: CellLabel


REVIEW_COMMENT_MAX = 4000  # characters; the HL7 note carries a comment whole


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reviewer: str | None = Field(
        None, min_length=1, max_length=128,
        description="who checked the cells (name or staff id). With a personal API key (one that names its "
                    "reviewer) it may be left out, and if given must be that name; with a shared key it is required")
    corrections: list[CellCorrection] = Field(default_factory=list, max_length=10_000)
    comment: str = Field("", max_length=REVIEW_COMMENT_MAX,
                         description="free text; line breaks and tabs allowed, no other control characters")
    sign_off: bool = Field(False, description="true: the new version is final (amended when correcting a final one)")

    @field_validator("reviewer", mode="before")
    @classmethod
    def _blank_is_none(cls, value):  # "" or spaces: no name given (a personal key signs; a shared key's is 422)
        return (value.strip() or None) if isinstance(value, str) else value

    @field_validator("comment")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        """A NUL cannot be stored by PostgreSQL (it answered 503, every retry alike) and control characters frame
        or cut messages to a LIS: refused here (422) rather than changed silently."""
        bad = sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) == "Cc" and c not in "\t\n\r"})
        if bad:
            raise ValueError(f"comment: control characters are not allowed ({', '.join(bad[:5])})")
        return value


class KeyIdentity(BaseModel):
    """What the gateway knows of the caller's API key (GET /me): never the key or its hash."""
    key_id: str
    scopes: list[str] = Field(description="sorted")
    reviewer: str | None = Field(None, description="the person a personal key belongs to: its reviews are signed "
                                                   "with this name; null for a shared key")
    review_requires_personal_key: bool = Field(description="this gateway refuses reviews made with shared keys")


class ErasureResult(BaseModel):
    patient_id: str
    reports_deleted: int
    thumbnails_deleted: int
    cache_entries_deleted: int
