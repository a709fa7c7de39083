"""Keys, scopes, rate limits, the internal token, the audit log, request ids."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest

from tests.helpers.images import fullsize_images
from tests.helpers.hl7 import segments
from tests.helpers.keys import AUTH, CLASSIFY_KEY, PERSONAL_KEY, PERSONAL_REVIEWER, READ_ONLY_KEY, REVIEW_KEY
from tests.helpers.processes import start_cell_service, start_gateway, start_subtype_service

pytestmark = pytest.mark.integration
TOKEN = "internal-test-token-0123456789"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Services that demand the internal token, and a gateway that has it and writes an audit file."""
    tmp = tmp_path_factory.mktemp("secure")
    cell = start_cell_service(tmp, INTERNAL_TOKEN=TOKEN)
    subtype = start_subtype_service(tmp, INTERNAL_TOKEN=TOKEN)
    audit = tmp / "audit" / "audit.jsonl"
    gateway = start_gateway(tmp, cell.url, subtype.url, INTERNAL_TOKEN=TOKEN, AUDIT_LOG_PATH=str(audit),
                            AUDIT_HMAC_KEY="audit-key", RATE_LIMIT_PER_MINUTE="6000", RATE_LIMIT_BURST="100")
    yield {"cell": cell, "subtype": subtype, "gateway": gateway, "audit": audit}
    for process in (gateway, subtype, cell):
        process.stop()


def classify(url: str, headers: dict, patient: str = "SEC-1", n: int = 8) -> httpx.Response:
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for _, p in fullsize_images()[:n]]
    return httpx.post(f"{url}/patients/{patient}/classify", files=files, headers=headers, timeout=120)


def test_no_key_wrong_key_wrong_scope(stack):
    url = stack["gateway"].url
    missing = classify(url, {})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert classify(url, {"Authorization": "Bearer " + CLASSIFY_KEY[:-2] + "xx"}).status_code == 401
    assert classify(url, {"X-API-Key": "aml_nobody_" + "a" * 43}).status_code == 401
    read_only = classify(url, {"X-API-Key": READ_ONLY_KEY})
    assert read_only.status_code == 403 and "classify" in read_only.json()["detail"]
    assert httpx.get(f"{url}/patients/SEC-none/classification", headers={"X-API-Key": READ_ONLY_KEY},
                     timeout=10).status_code == 404
    assert httpx.get(f"{url}/patients/SEC-none/classification", timeout=10).status_code == 401
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
    for open_path in ("/healthz", "/readyz", "/"):
        assert httpx.get(url + open_path, timeout=10).status_code == 200


def test_internal_services_refuse_direct_calls(stack):
    cell, subtype = stack["cell"].url, stack["subtype"].url
    image = fullsize_images()[0][1].read_bytes()
    direct = httpx.post(f"{cell}/v1/classify", files=[("images", ("a.jpg", image))], timeout=10)
    assert direct.status_code == 401
    assert httpx.post(f"{subtype}/v1/predict", json={"counts": {"neutrophil": 1}}, timeout=10).status_code == 401
    assert httpx.get(f"{cell}/readyz", timeout=10).status_code == 200
    with_token = httpx.post(f"{cell}/v1/classify", files=[("images", ("a.jpg", image))],
                            headers={"X-Internal-Token": TOKEN, "X-Request-ID": "trace-42"}, timeout=30)
    assert with_token.status_code == 200 and with_token.headers["x-request-id"] == "trace-42"


def test_audit_log_and_request_id(stack):
    response = classify(stack["gateway"].url, {**AUTH, "X-Request-ID": "audit-req-1"}, patient="SEC-AUDIT-77")
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "audit-req-1"
    lines = [json.loads(line) for line in stack["audit"].read_text().splitlines()]
    entry = next(e for e in lines if e["request_id"] == "audit-req-1")
    assert entry["key_id"] == "tests" and entry["outcome"] == 200 and entry["n_images"] == 8
    assert entry["prediction"] == response.json()["prediction"]
    assert set(entry["models"]) == {"cell", "subtype", "apl_cell_head", "apl_patient"}  # the APL parts too
    assert len(entry["patient"]) == 32
    raw = stack["audit"].read_text() + stack["gateway"].log_tail(200_000)
    assert "SEC-AUDIT-77" not in raw, "no raw patient id in the audit or the gateway's logs"
    # the whole secret: key ids have no "_", the secret (token_urlsafe) may
    assert CLASSIFY_KEY not in raw and CLASSIFY_KEY.split("_", 2)[2] not in raw

    # a refused request is audited too, under its own request id, with no key named
    wrong_key = {"Authorization": "Bearer " + CLASSIFY_KEY[:-2] + "xx", "X-Request-ID": "audit-refused-1"}
    refused = classify(stack["gateway"].url, wrong_key, patient="SEC-AUDIT-78")
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "audit-refused-1"
    lines = [json.loads(line) for line in stack["audit"].read_text().splitlines()]
    entries = [e for e in lines if e["request_id"] == "audit-refused-1"]
    assert len(entries) == 1, entries
    assert entries[0]["outcome"] == 401 and entries[0]["key_id"] is None and entries[0]["endpoint"] == "classify"
    assert entries[0]["n_images"] is None and entries[0].get("prediction") is None, "it classified nothing"
    raw = stack["audit"].read_text() + stack["gateway"].log_tail(200_000)
    assert "SEC-AUDIT-78" not in raw and wrong_key["Authorization"].split("_", 2)[2] not in raw, \
        "neither the patient id nor the refused secret is logged"


def test_ordinary_logs_are_json_lines(stack):
    assert classify(stack["gateway"].url, AUTH, patient="SEC-LOGS-5").status_code == 200
    for name in ("gateway", "cell", "subtype"):
        lines = [line for line in stack[name].log_tail(200_000).splitlines() if line.strip()]
        assert lines, f"{name} wrote no log"
        entries = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all({"time", "level", "logger", "message"} <= set(e) for e in entries), name
        assert any("ready" in e["message"] or "up" in e["message"] for e in entries), name
    gateway_log = stack["gateway"].log_tail(200_000)
    assert "SEC-LOGS-5" not in gateway_log and CLASSIFY_KEY not in gateway_log


def test_rate_limit_per_key(tmp_path, cell_service, subtype_service):
    gateway = start_gateway(tmp_path, cell_service.url, subtype_service.url, RATE_LIMIT_PER_MINUTE="6",
                            RATE_LIMIT_BURST="2")
    try:
        url = f"{gateway.url}/patients/RL-1/classification"
        statuses = [httpx.get(url, headers=AUTH, timeout=10).status_code for _ in range(3)]
        assert statuses == [404, 404, 429], "a burst of 2, then refused"
        limited = httpx.get(url, headers=AUTH, timeout=10)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        other_key = httpx.get(url, headers={"X-API-Key": READ_ONLY_KEY}, timeout=10)
        assert other_key.status_code == 404, "limits are per key"
    finally:
        gateway.stop()


def test_client_disconnect_mid_upload(stack):
    gateway = urlparse(stack["gateway"].url)
    body_start = b"--b\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.jpg\"\r\n\r\n" + b"\xff" * 5000
    head = (f"POST /patients/SEC-GONE/classify HTTP/1.1\r\nHost: {gateway.hostname}\r\n"
            f"X-API-Key: {CLASSIFY_KEY}\r\nX-Request-ID: gone-1\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n").encode()
    with socket.create_connection((gateway.hostname, gateway.port), timeout=10) as sock:
        sock.sendall(head + body_start)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in stack["audit"].read_text().splitlines()]
        gone = [e for e in lines if e["request_id"] == "gone-1"]
        if gone:
            break
        time.sleep(0.1)
    assert gone and gone[0]["outcome"] == 400 and gone[0]["n_images"] is None
    assert httpx.get(f"{stack['gateway'].url}/patients/SEC-GONE/classification", headers=AUTH,
                     timeout=10).status_code == 404
    assert httpx.get(f"{stack['gateway'].url}/readyz", timeout=10).status_code == 200


def _review(url: str, report_id: str, key: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/reports/{report_id}/review", headers={"X-API-Key": key}, timeout=60,
                      json={"corrections": [], "sign_off": True, **body})


def test_a_personal_key_signs_with_its_owners_name_and_a_shared_key_with_the_one_given(stack):
    url = stack["gateway"].url
    first = classify(url, AUTH, patient="SEC-SIGN-1", n=4)
    assert first.status_code == 200, first.text

    me = httpx.get(f"{url}/me", headers={"X-API-Key": PERSONAL_KEY}, timeout=10)
    assert me.status_code == 200 and me.json() == {
        "key_id": "ajones", "scopes": ["classify", "read", "review"], "reviewer": PERSONAL_REVIEWER,
        "review_requires_personal_key": False}
    assert httpx.get(f"{url}/me", headers={"X-API-Key": REVIEW_KEY}, timeout=10).json()["reviewer"] is None
    assert httpx.get(f"{url}/me", timeout=10).status_code == 401

    impostor = _review(url, first.json()["report_id"], PERSONAL_KEY, reviewer="Dr B. Smith")
    assert impostor.status_code == 403 and PERSONAL_REVIEWER in impostor.json()["detail"]
    latest = httpx.get(f"{url}/patients/SEC-SIGN-1/classification", headers=AUTH, timeout=10).json()
    assert latest["version"] == 1 and latest["reviewed_by"] is None, "a refused review stores nothing"

    signed = _review(url, first.json()["report_id"], PERSONAL_KEY)  # no name: the key's own
    assert signed.status_code == 201, signed.text
    assert signed.json()["reviewed_by"] == PERSONAL_REVIEWER and signed.json()["reviewer_key_id"] == "ajones"
    fhir = httpx.get(f"{url}/reports/{signed.json()['report_id']}", timeout=10,
                     headers={**AUTH, "Accept": "application/fhir+json"}).json()
    assert fhir["resultsInterpreter"] == [{"display": PERSONAL_REVIEWER, "identifier": {
        "system": "urn:aml-classifier:reviewer-key", "value": "ajones"}}]
    hl7 = httpx.get(f"{url}/reports/{signed.json()['report_id']}", timeout=10,
                    headers={**AUTH, "Accept": "application/hl7-v2"}).text
    assert segments(hl7, "OBR")[0][32] == f"ajones&{PERSONAL_REVIEWER}"

    same_name = _review(url, signed.json()["report_id"], PERSONAL_KEY, reviewer="  dr a.  JONES ")
    assert same_name.status_code == 201 and same_name.json()["reviewed_by"] == PERSONAL_REVIEWER

    nameless = _review(url, same_name.json()["report_id"], REVIEW_KEY)
    blank = _review(url, same_name.json()["report_id"], REVIEW_KEY, reviewer="   ")
    no_letter = _review(url, same_name.json()["report_id"], REVIEW_KEY, reviewer="&&&")
    assert [r.status_code for r in (nameless, blank, no_letter)] == [422] * 3
    assert all("shared key" in r.json()["detail"] for r in (nameless, blank, no_letter))
    shared = _review(url, same_name.json()["report_id"], REVIEW_KEY, reviewer=" Dr Shared ")
    assert shared.status_code == 201, shared.text
    assert shared.json()["reviewed_by"] == "Dr Shared" and shared.json()["reviewer_key_id"] is None, \
        "a shared key's name is free text: no key vouches for it, whoever signed the version before"
    fhir = httpx.get(f"{url}/reports/{shared.json()['report_id']}", timeout=10,
                     headers={**AUTH, "Accept": "application/fhir+json"}).json()
    assert fhir["resultsInterpreter"] == [{"display": "Dr Shared"}]
    versions = httpx.get(f"{url}/patients/SEC-SIGN-1/reports", headers=AUTH, timeout=10).json()["reports"]
    assert [(v["reviewed_by"], v["reviewer_key_id"]) for v in versions] == [
        ("Dr Shared", None), (PERSONAL_REVIEWER, "ajones"), (PERSONAL_REVIEWER, "ajones"), (None, None)]

    lines = [json.loads(line) for line in stack["audit"].read_text().splitlines()]
    reviews = [e for e in lines if e["endpoint"] == "review" and e["detail"]["replaces"] == first.json()["report_id"]]
    assert [(e["outcome"], e["key_id"], e["detail"]["reviewer"], e["detail"].get("claimed_reviewer"))
            for e in reviews] == [(403, "ajones", PERSONAL_REVIEWER, "Dr B. Smith"), (201, "ajones", PERSONAL_REVIEWER, None)], \
        "the audit names who holds the key, and the name a refused review claimed beside it"


def test_a_gateway_can_take_reviews_from_personal_keys_only(tmp_path, stack):
    gateway = start_gateway(tmp_path, stack["cell"].url, stack["subtype"].url, INTERNAL_TOKEN=TOKEN,
                            REVIEW_REQUIRES_PERSONAL_KEY="1")
    try:
        report = classify(gateway.url, AUTH, patient="SEC-SIGN-2", n=2)
        assert report.status_code == 200, report.text
        assert httpx.get(f"{gateway.url}/me", headers={"X-API-Key": REVIEW_KEY},
                         timeout=10).json()["review_requires_personal_key"] is True
        shared = _review(gateway.url, report.json()["report_id"], REVIEW_KEY, reviewer="Dr Shared")
        assert shared.status_code == 403 and "personal keys" in shared.json()["detail"]
        personal = _review(gateway.url, report.json()["report_id"], PERSONAL_KEY)
        assert personal.status_code == 201 and personal.json()["reviewed_by"] == PERSONAL_REVIEWER
    finally:
        gateway.stop()


def test_a_review_body_is_checked_after_the_key_and_every_outcome_is_audited(stack):
    """A review with a label the vocabulary lacks, or a body that is not JSON: 401 without a key (not 422: who
    asks comes first), 422 with the reviewer's key; each, and a NUL in the comment, leaves an audit line."""
    url = stack["gateway"].url
    report = classify(url, AUTH, patient="SEC-BODY-1", n=2)
    assert report.status_code == 200, report.text
    report_id = report.json()["report_id"]
    cells = httpx.get(f"{url}/reports/{report_id}", params={"include": "cells"}, headers=AUTH, timeout=10).json()
    sha = cells["cells"][0]["sha256"]
    bad_label = {"corrections": [{"sha256": sha, "label": "blasts"}], "reviewer": "Dr Body"}
    anonymous = httpx.post(f"{url}/reports/{report_id}/review", json=bad_label, timeout=30)
    assert anonymous.status_code == 401
    refused = _review(url, report_id, REVIEW_KEY, **bad_label)
    assert refused.status_code == 422 and "corrections.0.label" in refused.json()["detail"]
    nul = _review(url, report_id, REVIEW_KEY, reviewer="Dr Body", comment="cut\x00here")
    assert nul.status_code == 422 and "control characters" in nul.json()["detail"]
    not_json = b'{"reviewer": '  # refused by FastAPI before any dependency runs: the key is still checked first
    json_type = {"content-type": "application/json"}
    assert httpx.post(f"{url}/reports/{report_id}/review", content=not_json, headers=json_type,
                      timeout=30).status_code == 401
    assert httpx.post(f"{url}/reports/{report_id}/review", content=not_json, timeout=30,
                      headers={**json_type, "X-API-Key": REVIEW_KEY}).status_code == 422

    thumbnail = httpx.get(f"{url}/reports/{report_id}/cells/{sha}.jpg", headers=AUTH, timeout=10)
    assert thumbnail.status_code == 200 and thumbnail.content[:2] == b"\xff\xd8"

    lines = [json.loads(line) for line in stack["audit"].read_text().splitlines()]
    reviews = [e for e in lines if e["endpoint"] == "review" and e.get("report_id") == report_id]
    assert [(e["outcome"], e["key_id"]) for e in reviews] == [
        (401, None), (422, "reviewer"), (422, "reviewer"), (401, None), (422, "reviewer")], reviews
    made = next(e for e in lines if e["endpoint"] == "classify" and e.get("report_id") == report_id)
    shown = [e for e in lines if e["endpoint"] == "read-thumbnail" and e.get("report_id") == report_id]
    assert [e["patient"] for e in shown] == [made["patient"]] and made["patient"], \
        "a cell image shown is linked to its patient in the audit, like a report read"
