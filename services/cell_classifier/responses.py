"""The classify answer as JSON bytes, built from plain dicts (issue 12).

Building pydantic models per cell and dumping them cost more per 1-image request than the rest of
the answer; the same bytes come from pydantic-core's serializer on dicts in the schema's field order
(``shared.schemas.ClassifyCellsResponse`` stays the documented schema; tests/unit/test_cell_responses.py
checks the bytes against it). The model's part is serialised once, at start-up.
"""

from __future__ import annotations

from pydantic_core import to_json

from shared.schemas import CellModelInfo


def model_info_json(info: dict) -> bytes:
    """``CellModelInfo`` of the running model, serialised once."""
    return CellModelInfo(**info).model_dump_json().encode()


def classify_response_json(model_info: bytes, results: list[dict]) -> bytes:
    """``ClassifyCellsResponse`` bytes: ``results`` holds, per image in request order, a prediction
    (filename, label, confidence, probabilities, appearance_distance, apl_logit) or an error
    (filename, error), keys in that order. NaN and infinities become null, as pydantic writes them."""
    return b'{"model":' + model_info + b',"results":' + to_json(results, inf_nan_mode="null") + b"}"
