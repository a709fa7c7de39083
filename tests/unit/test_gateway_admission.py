"""GATEWAY_MAX_UPLOADS_BYTES: while uploads of that many bytes are held, another request gets a fast 503 with
Retry-After before its body is read; a gateway holding nothing takes any one request."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from gateway.admission import UploadBudget, declared_length
from gateway.app import create_app
from gateway.settings import GatewaySettings
from shared.problems import ProblemError
from tests.helpers.keys import API_KEYS_JSON, AUTH


def test_the_budget_holds_and_releases():
    budget = UploadBudget(100)
    with budget.hold(500):  # nothing else held: any one request
        assert budget.held == 500
        with pytest.raises(ProblemError) as refused:
            with budget.hold(1):
                pass
        assert refused.value.status == 503 and refused.value.headers["Retry-After"]
    assert budget.held == 0
    with budget.hold(60), budget.hold(40):
        assert budget.held == 100
    with pytest.raises(RuntimeError), budget.hold(60):
        raise RuntimeError("a failed request")
    assert budget.held == 0, "released however the request ends"
    assert declared_length({"content-length": "123"}, 999) == 123
    assert declared_length({}, 999) == 999 and declared_length({"content-length": "x"}, 999) == 999


def test_a_request_over_the_budget_gets_503_before_its_body_is_read(tmp_path):
    audit_path = tmp_path / "audit.jsonl"
    settings = GatewaySettings(API_KEYS=API_KEYS_JSON, DATABASE_URL=f"sqlite:///{tmp_path / 'reports.db'}",
                               AUDIT_LOG_PATH=str(audit_path), CELL_URL="http://127.0.0.1:9",
                               SUBTYPE_URL="http://127.0.0.1:9", GATEWAY_MAX_UPLOADS_BYTES="1000")
    with TestClient(create_app(settings)) as client:
        state = client.app.state
        read = []
        original = state.classifier.classify

        async def never_called(*args, **kwargs):
            read.append(args)
            return await original(*args, **kwargs)

        state.classifier.classify = never_called
        with state.uploads.hold(900):  # another upload is being classified
            response = client.post("/patients/P-busy/classify", headers=AUTH,
                                   files=[("images", ("a.jpg", b"\xff\xd8" + b"x" * 500, "image/jpeg"))])
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["retry-after"] == "5" and "retry in" in response.json()["detail"]
        assert not read and state.uploads.held == 0
    lines = [json.loads(line) for line in audit_path.read_text().splitlines()]
    assert [(line["endpoint"], line["outcome"]) for line in lines] == [("classify", 503)]
