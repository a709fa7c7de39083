"""An erasure clears the patient's cached cell labels before it deletes the reports that say which labels are
the patient's: a cache that fails midway leaves the database as it was, so the repeated request (which the 503
asks for) still finds every entry, instead of answering 200 with the labels left behind."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.cell_identity import cell_cache_key, cell_cache_model_of
from gateway.settings import GatewaySettings
from tests.helpers.keys import ADMIN_AUTH, API_KEYS_JSON
from tests.helpers.reports import sample_report


def test_a_cache_failure_during_an_erasure_loses_no_entry_for_the_repeat(tmp_path, monkeypatch):
    settings = GatewaySettings(API_KEYS=API_KEYS_JSON, DATABASE_URL=f"sqlite:///{tmp_path / 'reports.db'}",
                               CELL_URL="http://127.0.0.1:9", SUBTYPE_URL="http://127.0.0.1:9")
    with TestClient(create_app(settings)) as client:
        store, cache = client.app.state.store, client.app.state.cache
        report = sample_report("P-erase")
        client.portal.call(store.add_report, report, "k", {}, [])
        model = cell_cache_model_of(report.models.model_dump())
        keys = [cell_cache_key(model, cell.sha256) for cell in report.cells]
        client.portal.call(cache.set_many, {key: {"label": "blast", "confidence": 0.9} for key in keys})
        delete, failed = cache.delete, []

        async def fails_once_on_cell_keys(names, prefixes=()):
            if not failed and any(name.startswith("cell:") for name in names):
                failed.append(True)
                raise asyncio.TimeoutError
            return await delete(names, prefixes)

        monkeypatch.setattr(cache, "delete", fails_once_on_cell_keys)
        first = client.delete("/patients/P-erase", headers=ADMIN_AUTH)
        assert first.status_code == 503 and first.headers["retry-after"] == "2"
        again = client.delete("/patients/P-erase", headers=ADMIN_AUTH)
        assert again.status_code == 200, again.text
        assert again.json()["reports_deleted"] == 1 and again.json()["cache_entries_deleted"] == len(keys)
        assert client.portal.call(cache.get_many, keys) == [None] * len(keys)
