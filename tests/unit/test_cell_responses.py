"""The classify answer built from dicts (services/cell_classifier/responses.py) is byte for byte what
the documented pydantic schema writes."""

from __future__ import annotations

import json

from services.cell_classifier.responses import classify_response_json, model_info_json
from shared.schemas import CellError, CellModelInfo, CellPrediction, ClassifyCellsResponse
from shared.vocabulary import CELL_TYPES

INFO = {"name": "aml-cell-resnet", "version": "2.0.0", "sha256": "ab" * 32, "provider": "CPUExecutionProvider",
        "variant": "float", "apl_head": None}


def prediction(filename, confidence, appearance, logit) -> dict:
    probabilities = {name: (confidence if i == 0 else (1 - confidence) / (len(CELL_TYPES) - 1))
                     for i, name in enumerate(CELL_TYPES)}
    probabilities[CELL_TYPES[1]] = 3.2e-07
    return {"filename": filename, "label": CELL_TYPES[0], "confidence": confidence, "probabilities": probabilities,
            "appearance_distance": appearance, "apl_logit": logit}


def test_same_bytes_as_the_schema():
    results = [prediction("a.jpg", 0.9876543, 1.234, -2.5), prediction("caf\u00e9 \"q\".png", 1.0, None, None),
               {"filename": "bad.bin", "error": "not a decodable image (supported: JPEG, PNG, TIFF, BMP)"},
               prediction("nan.jpg", 0.5, 0.0, float("nan"))]
    expected = ClassifyCellsResponse(
        model=CellModelInfo(**INFO),
        results=[CellError(**r) if "error" in r else CellPrediction(**r) for r in results]).model_dump_json()
    ours = classify_response_json(model_info_json(INFO), results)
    assert ours == expected.encode()
    assert json.loads(ours)["results"][3]["apl_logit"] is None


def test_model_info_keeps_only_the_schema_fields():
    info = {**INFO, "apl_head": {"name": "apl", "version": "1", "sha256": "cd" * 32, "unknown": 1}}
    assert model_info_json(info) == CellModelInfo(**info).model_dump_json().encode()
