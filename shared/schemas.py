"""Pydantic models of every API schema, in one place."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.vocabulary import CELL_LABELS, CELL_TYPES

CellLabel = Literal[CELL_LABELS]  # type: ignore[valid-type]


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error response."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    request_id: str | None = None


class CellModelInfo(BaseModel):
    name: str
    version: str
    sha256: str
    provider: str = Field(description="onnxruntime execution provider in use, e.g. CPUExecutionProvider")


class CellPrediction(BaseModel):
    filename: str
    label: CellLabel
    confidence: float = Field(ge=0.0, le=1.0, description="calibrated maximum class probability")
    probabilities: dict[str, float] = Field(description=f"one per cell type: {', '.join(CELL_TYPES)}")


class CellError(BaseModel):
    filename: str
    error: str


class ClassifyCellsResponse(BaseModel):
    model: CellModelInfo
    results: list[CellPrediction | CellError] = Field(description="one entry per image, in request order")


class CellModelCard(BaseModel):
    """The model card as trained (training/model_card.py) plus the provider in use."""

    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    sha256: str
    provider: str
    class_order: list[str]
    unclassified_rule: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    detail: str
    checks: dict[str, Any] = Field(default_factory=dict)
