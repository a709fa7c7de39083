"""Reports that last, reviewed and released: the gateway over real services, Redis and a real
database (SQLite and PostgreSQL, the same tests). Flush Redis and restart the gateway: every
version comes back unchanged; review one cell and sign off: final, counts changed by that cell,
FHIR final, HL7 OBR-25 F; concurrent reviews: one 409; erasure; a database briefly unreachable."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import threading

import httpx
import pytest
import redis
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from PIL import Image

from tests.helpers.cell_metrics import cell_images_classified
from tests.helpers.images import fullsize_images
from tests.helpers.keys import ADMIN_AUTH, AUTH, REVIEW_AUTH
from tests.helpers.processes import start_gateway
from tests.helpers.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration
FHIR = {"Accept": "application/fhir+json"}
HL7 = {"Accept": "application/hl7-v2"}
CACHE_TTL_S = 900  # far below the default (7 days): the keys' TTL shows the setting is the one used


@pytest.fixture(scope="module")
def originals() -> list[tuple[str, bytes]]:
    return [(path.name, path.read_bytes()) for _, path in fullsize_images()]


@pytest.fixture(autouse=True)
def empty_cache(redis_server):
    """Each test (and backend) starts with an empty Redis: a cache is shared, a database is not."""
    redis.Redis.from_url(redis_server.url).flushall()


def post(url: str, patient: str, files, **kwargs) -> httpx.Response:
    parts = [("images", (name, data, "image/jpeg")) for name, data in files]
    return httpx.post(f"{url}/patients/{patient}/classify", files=parts, timeout=120, headers=AUTH, **kwargs)


def get(url: str, headers: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.get(url, headers={**AUTH, **(headers or {})}, timeout=30, **kwargs)


def review(url: str, report_id: str, body: dict, headers: dict = REVIEW_AUTH) -> httpx.Response:
    return httpx.post(f"{url}/reports/{report_id}/review", json=body, headers=headers, timeout=60,
                      params={"include": "cells"})


def other_label(label: str) -> str:
    return "blast" if label != "blast" else "lymphocyte"


def cell_keys(redis_url: str, sha256: str = "") -> list[str]:
    """The per-cell label keys in Redis (``cell:<model>:<image sha256>``), of one image when ``sha256`` is given."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return sorted(client.scan_iter(match=f"cell:*:{sha256}" if sha256 else "cell:*", count=1000))


def test_versions_survive_flush_and_restart_then_review_to_final(database, tmp_path, cell_service, subtype_service,
                                                                 redis_server, originals):
    env = {**database.env, "AUDIT_LOG_PATH": str(tmp_path / "audit.jsonl"), "CACHE_TTL_S": str(CACHE_TTL_S)}
    gateway = start_gateway(tmp_path, cell_service.url, subtype_service.url, redis_server.url, **env)
    try:
        created = post(gateway.url, "P-store", originals[:24], params={"include": "cells"})
        assert created.status_code == 200, created.text
        first = created.json()
        assert first["status"] == "preliminary" and first["version"] == 1 and len(first["report_id"]) == 32
        client = redis.Redis.from_url(redis_server.url)
        keys = cell_keys(redis_server.url)
        assert len(keys) == len(first["cells"]) == 24, "one label key per cell"
        ttls = [client.ttl(key) for key in keys]
        assert all(0 < ttl <= CACHE_TTL_S for ttl in ttls), ttls
    finally:
        gateway.stop()
    redis.Redis.from_url(redis_server.url).flushall()
    gateway = start_gateway(tmp_path, cell_service.url, subtype_service.url, redis_server.url, **env)
    try:
        latest = get(f"{gateway.url}/patients/P-store/classification", params={"include": "cells"})
        assert latest.status_code == 200, latest.text
        assert latest.json() == first, "after FLUSHALL and a restart the report comes back unchanged"
        assert get(f"{gateway.url}/reports/{first['report_id']}", params={"include": "cells"}).json() == first

        cell = first["cells"][3]
        new_label = other_label(cell["label"])
        reviewed = review(gateway.url, first["report_id"], {
            "reviewer": "Dr. Test", "corrections": [{"sha256": cell["sha256"], "label": new_label}],
            "comment": "one cell relabelled", "sign_off": True})
        assert reviewed.status_code == 201, reviewed.text
        second = reviewed.json()
        assert second["status"] == "final" and second["version"] == 2 and second["supersedes"] == first["report_id"]
        assert second["reviewed_by"] == "Dr. Test" and second["reviewed_at"]
        assert reviewed.headers["location"] == f"/reports/{second['report_id']}"
        superseded = get(f"{gateway.url}/reports/{first['report_id']}")
        assert superseded.status_code == 200 and superseded.headers["x-superseded-by"] == second["report_id"]
        assert "x-superseded-by" not in get(f"{gateway.url}/reports/{second['report_id']}").headers
        diff = {k: second["cell_counts"][k] - first["cell_counts"][k] for k in first["cell_counts"]}
        expected = {k: 0 for k in diff} | {cell["label"]: -1, new_label: +1}
        assert diff == expected, "counts changed by exactly the one corrected cell"
        corrected = [c for c in second["cells"] if c["sha256"] == cell["sha256"]][0]
        assert corrected["label"] == new_label and corrected["model_label"] == cell["label"]
        assert all(c["model_label"] is None for c in second["cells"] if c["sha256"] != cell["sha256"])
        assert sum(second["leukocyte_differential"].values()) == pytest.approx(100.0, abs=0.1)

        from fhir.resources.R4B.diagnosticreport import DiagnosticReport

        fhir = DiagnosticReport.model_validate(get(f"{gateway.url}/patients/P-store/classification", FHIR).json())
        assert fhir.status == "final" and fhir.resultsInterpreter[0].display == "Dr. Test"
        hl7 = get(f"{gateway.url}/patients/P-store/classification", HL7)
        assert hl7.status_code == 200 and hl7.headers["content-type"].startswith("application/hl7-v2")
        message = parse_message(hl7.text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        assert message.validate()
        order = message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
        assert order.OBR.obr_25.to_er7() == "F"
        old_hl7 = get(f"{gateway.url}/reports/{first['report_id']}", HL7).text
        assert parse_message(old_hl7, find_groups=True).ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION \
            .OBR.obr_25.to_er7() == "P"

        listed = get(f"{gateway.url}/patients/P-store/reports").json()["reports"]
        assert [(r["id"], r["status"]) for r in listed] == [(second["report_id"], "final"),
                                                            (first["report_id"], "preliminary")]
        assert listed[1]["superseded_by"] == second["report_id"]

        thumbnail = get(f"{gateway.url}/reports/{second['report_id']}/cells/{cell['sha256']}.jpg")
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 144

        # errors: stale version, unknown label / cell / report, a key without the review scope
        stale = review(gateway.url, first["report_id"], {"reviewer": "Dr. Late", "sign_off": True})
        assert stale.status_code == 409 and stale.headers["content-type"].startswith("application/problem+json")
        bad_label = review(gateway.url, second["report_id"], {
            "reviewer": "X", "corrections": [{"sha256": cell["sha256"], "label": "alien"}], "sign_off": True})
        assert bad_label.status_code == 422
        bad_cell = review(gateway.url, second["report_id"], {
            "reviewer": "X", "corrections": [{"sha256": "0" * 64, "label": "blast"}], "sign_off": True})
        assert bad_cell.status_code == 422 and "not in report" in bad_cell.json()["detail"]
        assert review(gateway.url, "f" * 32, {"reviewer": "X"}).status_code == 404
        assert review(gateway.url, second["report_id"], {"reviewer": "X"}, headers=AUTH).status_code == 403
        unsigned = review(gateway.url, second["report_id"], {"reviewer": "X", "sign_off": False})
        assert unsigned.status_code == 422, "a released report changes only by a signed-off amendment"

        # two reviewers at once: one wins (amended), the other gets 409
        results: list[httpx.Response] = []
        body = {"reviewer": "Dr. Race", "corrections": [{"sha256": first["cells"][5]["sha256"], "label": "smudge"}],
                "sign_off": True}
        threads = [threading.Thread(target=lambda: results.append(review(gateway.url, second["report_id"], body)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.status_code for r in results) == [201, 409], [r.text for r in results]
        won = [r for r in results if r.status_code == 201][0]
        third = won.json()
        assert third["status"] == "amended" and third["version"] == 3
        assert won.headers["location"] == f"/reports/{third['report_id']}"
        assert get(f"{gateway.url}/reports/{second['report_id']}").headers["x-superseded-by"] == third["report_id"]
        assert get(f"{gateway.url}/reports/{first['report_id']}").headers["x-superseded-by"] == second["report_id"], \
            "a version names the one that replaced it, not the newest"
        hl7_third = get(f"{gateway.url}/reports/{third['report_id']}", HL7).text
        third_obr = parse_message(hl7_third, find_groups=True).ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.OBR
        assert third_obr.obr_25.to_er7() == "C"
        first_obr = parse_message(old_hl7, find_groups=True).ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.OBR
        assert third_obr.obr_3.to_er7() == first_obr.obr_3.to_er7(), "the amendment replaces the LIS's order"
        versions = {r["report_id"]: get(f"{gateway.url}/reports/{r['report_id']}", params={"include": "cells"}).json()
                    for r in (first, second, third)}
    finally:
        gateway.stop()
    redis.Redis.from_url(redis_server.url).flushall()
    gateway = start_gateway(tmp_path, cell_service.url, subtype_service.url, redis_server.url, **env)
    try:
        for report_id, body in versions.items():
            assert get(f"{gateway.url}/reports/{report_id}", params={"include": "cells"}).json() == body
        assert get(f"{gateway.url}/patients/P-store/classification").json()["report_id"] == third["report_id"]
        again = post(gateway.url, "P-store", originals[:24]).json()
        assert again["report_id"] == third["report_id"] and again["status"] == "amended" and again["cached"] is True, \
            "the same images after a flush and a restart answer the amended version, not a new preliminary one"
        assert get(f"{gateway.url}/patients/P-store/classification").json()["report_id"] == third["report_id"]
    finally:
        gateway.stop()
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    reviews = [a for a in audit if a["endpoint"] == "review" and a["outcome"] == 201]
    assert {a["detail"]["reviewer"] for a in reviews} == {"Dr. Test", "Dr. Race"}
    assert "P-store" not in (tmp_path / "audit.jsonl").read_text()


def test_erasure(database, tmp_path, cell_service, subtype_service, redis_server, originals):
    env = {**database.env, "AUDIT_LOG_PATH": str(tmp_path / "audit.jsonl")}
    gateway = start_gateway(tmp_path, cell_service.url, subtype_service.url, redis_server.url, **env)
    try:
        images = originals[30:38]
        first = post(gateway.url, "P-erase", images, params={"include": "cells"}).json()
        kept = post(gateway.url, "P-keep", originals[36:40]).json()  # shares two images with P-erase
        second = review(gateway.url, first["report_id"], {"reviewer": "Dr. E", "sign_off": True}).json()
        sha = first["cells"][0]["sha256"]
        erased_shas = {c["sha256"] for c in first["cells"]}
        assert erased_shas == {hashlib.sha256(data).hexdigest() for _, data in images}, "8 cells, all labelled"
        shared_sha = hashlib.sha256(originals[36][1]).hexdigest()
        kept_only = {hashlib.sha256(data).hexdigest() for _, data in originals[38:40]}
        assert all(cell_keys(redis_server.url, s) for s in erased_shas | kept_only), "every cell's label is cached"
        assert httpx.delete(f"{gateway.url}/patients/P-erase", headers=AUTH, timeout=30).status_code == 403
        erased = httpx.delete(f"{gateway.url}/patients/P-erase", headers=ADMIN_AUTH, timeout=30)
        assert erased.status_code == 200, erased.text
        result = erased.json()
        assert result["reports_deleted"] == 2 and result["thumbnails_deleted"] == 6
        assert result["cache_entries_deleted"] == len(erased_shas) == 8, "one label key per erased cell"
        assert not [k for s in erased_shas for k in cell_keys(redis_server.url, s)], "no erased cell's label is left"
        assert {k.rsplit(":", 1)[1] for k in cell_keys(redis_server.url)} == kept_only, \
            "the labels of the kept patient's own cells stay"
        shared = get(f"{gateway.url}/reports/{kept['report_id']}/cells/{shared_sha}.jpg")
        assert shared.status_code == 200 and shared.headers["content-type"] == "image/jpeg", \
            "a thumbnail another patient's report shows is kept"
        assert get(f"{gateway.url}/patients/P-erase/classification").status_code == 404
        assert get(f"{gateway.url}/patients/P-erase/reports").status_code == 404
        for report in (first, second):
            assert get(f"{gateway.url}/reports/{report['report_id']}").status_code == 404
        assert get(f"{gateway.url}/reports/{second['report_id']}/cells/{sha}.jpg").status_code == 404
        assert get(f"{gateway.url}/patients/P-keep/classification").json()["report_id"] == kept["report_id"]
        before = cell_images_classified(cell_service.url)
        again = post(gateway.url, "P-erase", images).json()
        assert again["cached"] is False and again["report_id"] != first["report_id"], "nothing left in the store"
        assert cell_images_classified(cell_service.url) - before == 8, "every image is classified again"
        assert httpx.delete(f"{gateway.url}/patients/P-nobody", headers=ADMIN_AUTH, timeout=30).json() \
            == {"patient_id": "P-nobody", "reports_deleted": 0, "thumbnails_deleted": 0, "cache_entries_deleted": 0}
    finally:
        gateway.stop()
    text = (tmp_path / "audit.jsonl").read_text()
    erasures = [json.loads(line) for line in text.splitlines() if '"endpoint":"erase"' in line]
    assert [e["outcome"] for e in erasures] == [403, 200, 200]
    assert erasures[1]["detail"]["reports_deleted"] == 2 and erasures[1]["key_id"] == "dpo"
    assert "P-erase" not in text


def test_database_briefly_unreachable_gives_503_and_writes_nothing(database, tmp_path, cell_service,
                                                                   subtype_service, redis_server, originals):
    env = dict(database.env, DATABASE_TIMEOUT_S="1")
    proxy = lock = None
    if database.kind == "postgresql":
        from sqlalchemy.engine import make_url

        url = make_url(database.url)
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
        env["DATABASE_URL"] = url.set(port=proxy.port).render_as_string(hide_password=False)
    gateway = start_gateway(tmp_path, cell_service.url, subtype_service.url, redis_server.url, **env)
    try:
        kept = post(gateway.url, "P-outage", originals[40:44]).json()
        if proxy is not None:
            proxy.pause()
        else:
            lock = sqlite3.connect(database.url.removeprefix("sqlite:///"), timeout=5)
            lock.execute("BEGIN EXCLUSIVE")
        failed = post(gateway.url, "P-outage", originals[44:50])
        assert failed.status_code == 503, failed.text
        assert failed.headers["content-type"].startswith("application/problem+json")
        assert "report database is unavailable" in failed.json()["detail"] and failed.headers["retry-after"]
        if proxy is not None:
            assert get(f"{gateway.url}/patients/P-outage/reports").status_code == 503
            assert httpx.get(f"{gateway.url}/readyz", timeout=30).json()["checks"]["database"]["available"] is False
    finally:
        if proxy is not None:
            proxy.resume()
        if lock is not None:
            lock.rollback()
            lock.close()
    try:
        listed = get(f"{gateway.url}/patients/P-outage/reports").json()["reports"]
        assert [r["id"] for r in listed] == [kept["report_id"]], "the failed classification left nothing behind"
        retried = post(gateway.url, "P-outage", originals[44:50])
        assert retried.status_code == 200 and retried.json()["cached"] is False, "and nothing in the cache"
    finally:
        gateway.stop()
        if proxy is not None:
            proxy.close()
