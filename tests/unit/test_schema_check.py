"""MIGRATE_ON_START=0: the gateway refuses to start on a report database older than its code (it would fail
request by request with missing tables), and starts on one at its revision or newer."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.store.database import head_revision, make_engine, migrate
from tests.helpers.keys import API_KEYS_JSON, AUTH


def _settings(tmp_path) -> GatewaySettings:
    return GatewaySettings(API_KEYS=API_KEYS_JSON, DATABASE_URL=f"sqlite:///{tmp_path / 'reports.db'}",
                           MIGRATE_ON_START="0", CELL_URL="http://127.0.0.1:9", SUBTYPE_URL="http://127.0.0.1:9",
                           AUDIT_LOG_PATH=str(tmp_path / "audit.jsonl"))


def _migrate_to(settings: GatewaySettings, revision: str) -> None:
    async def run():
        engine = make_engine(settings)
        try:
            await migrate(engine, None, revision)
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_an_empty_database_is_refused_at_start_with_what_to_do(tmp_path):
    with pytest.raises(RuntimeError, match=r"revision none \(empty\), this gateway needs .*python -m gateway.store "
                                           r"migrate"):
        with TestClient(create_app(_settings(tmp_path))):
            pass


def test_a_database_one_revision_behind_is_refused(tmp_path):
    settings = _settings(tmp_path)
    _migrate_to(settings, "0002")
    with pytest.raises(RuntimeError, match=f"revision 0002, this gateway needs {head_revision()}"):
        with TestClient(create_app(settings)):
            pass


def test_a_database_at_the_head_starts_and_answers(tmp_path):
    settings = _settings(tmp_path)
    _migrate_to(settings, "head")
    with TestClient(create_app(settings)) as client:
        assert client.get("/patients/P-none/classification", headers=AUTH).status_code == 404


def test_a_database_unreachable_at_start_is_left_to_readiness_not_a_crash(tmp_path):
    """A PostgreSQL failover while the gateway starts: it starts and says not ready (a crash would put a
    Kubernetes pod in CrashLoopBackOff with growing delays)."""
    settings = GatewaySettings(API_KEYS=API_KEYS_JSON, DATABASE_URL="postgresql://postgres@127.0.0.1:1/test",
                               DATABASE_TIMEOUT_S="1", MIGRATE_ON_START="0", CELL_URL="http://127.0.0.1:9",
                               SUBTYPE_URL="http://127.0.0.1:9", AUDIT_LOG_PATH=str(tmp_path / "audit.jsonl"))
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"]["available"] is False
