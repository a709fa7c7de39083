"""A failure nobody foresaw still answers problem+json (500, naming the request id) and is audited as
the 500 it is, never as a success."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.helpers.keys import ADMIN_AUTH, API_KEYS_JSON, AUTH


def test_an_unexpected_error_is_a_500_problem_and_audited_as_one(tmp_path, monkeypatch):
    audit_path = tmp_path / "audit.jsonl"
    settings = GatewaySettings(API_KEYS=API_KEYS_JSON, DATABASE_URL=f"sqlite:///{tmp_path / 'reports.db'}",
                               AUDIT_LOG_PATH=str(audit_path), CELL_URL="http://127.0.0.1:9",
                               SUBTYPE_URL="http://127.0.0.1:9")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        store = client.app.state.store

        async def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        monkeypatch.setattr(store, "erase", broken)
        monkeypatch.setattr(store, "latest", broken)
        for method, path, headers, endpoint in (("DELETE", "/patients/P-1", ADMIN_AUTH, "erase"),
                                                ("GET", "/patients/P-1/classification", AUTH, "read")):
            response = client.request(method, path, headers={**headers, "X-Request-ID": f"req-{endpoint}"})
            assert response.status_code == 500, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            problem = response.json()
            assert problem["status"] == 500 and problem["request_id"] == f"req-{endpoint}"
            assert "RuntimeError" in problem["detail"] and "a bug" not in problem["detail"]
    lines = [json.loads(line) for line in audit_path.read_text().splitlines()]
    assert {(line["endpoint"], line["outcome"]) for line in lines} >= {("erase", 500), ("read", 500)}
    assert not any(line["outcome"] == 200 for line in lines)


def test_the_audited_status_of_a_failed_request():
    import asyncio

    from gateway.routers.common import failure_status
    from shared.problems import ProblemError

    assert failure_status(ProblemError(404, "no report"), 200) == 404
    assert failure_status(RuntimeError("a bug"), 200) == 500
    assert failure_status(asyncio.CancelledError(), 200) == 200, "a read whose client left: as it was"
    assert failure_status(asyncio.CancelledError(), 200, cancelled=499) == 499
