"""The gateway over real processes: cell service, subtype service, redis-server, gateway."""

from __future__ import annotations

import io
import re

import httpx
import pytest
from PIL import Image

from shared.subtypes import PATIENT_CLASSES
from shared.vocabulary import CELL_LABELS
from tests.helpers.cell_metrics import cell_images_classified
from tests.helpers.images import encode, fullsize_images, png_bomb
from tests.helpers.keys import AUTH, REVIEW_AUTH
from tests.helpers.processes import refused_port, start_gateway
from tests.helpers.uploads import post_patient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, cell_service, subtype_service, redis_server):
    process = start_gateway(tmp_path_factory.mktemp("gateway"), cell_service.url, subtype_service.url,
                            redis_server.url, MAX_IMAGES="80", CHUNK_SIZE="16")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def originals() -> list[tuple[str, bytes]]:
    return [(path.name, path.read_bytes()) for _, path in fullsize_images()]


def get(url: str, headers: dict | None = None) -> httpx.Response:
    return httpx.get(url, headers={**AUTH, **(headers or {})}, timeout=10)


def test_patient_round_trip_then_cache_hit(gateway, cell_service, originals):
    before = cell_images_classified(cell_service.url)
    response = post_patient(gateway.url, "P-roundtrip.1", originals)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["patient_id"] == "P-roundtrip.1"
    assert report["n_images"] == 64 and report["n_failed"] == 0 and report["cached"] is False
    assert set(report["cell_counts"]) == set(CELL_LABELS)
    assert sum(report["cell_counts"].values()) == 64
    assert report["n_classified"] + report["n_unclassified"] == 64
    assert sum(report["leukocyte_differential"].values()) == pytest.approx(100.0, abs=0.1)
    assert report["prediction"] in PATIENT_CLASSES
    assert sum(report["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert report["models"]["cell"]["name"] and report["models"]["subtype"]["name"]
    assert "cells" not in report
    assert response.headers["x-request-id"] == report["request_id"]
    assert cell_images_classified(cell_service.url) - before == 64

    again = post_patient(gateway.url, "P-roundtrip.1", originals)
    assert again.status_code == 200
    second = again.json()
    assert second["cached"] is True
    assert {k: v for k, v in second.items() if k != "cached"} == {k: v for k, v in report.items() if k != "cached"}
    assert cell_images_classified(cell_service.url) - before == 64, "a cache hit never calls the cell service"


def test_known_images_are_not_classified_twice(gateway, cell_service, originals):
    fresh = [(f"q93-{name}", encode(Image.open(io.BytesIO(data)), "JPEG", quality=93)) for name, data in originals[:30]]
    post_patient(gateway.url, "P-partial-a", fresh[:20])
    before = cell_images_classified(cell_service.url)
    response = post_patient(gateway.url, "P-partial-b", fresh[10:30], params={"include": "cells"})
    assert response.status_code == 200
    assert cell_images_classified(cell_service.url) - before == 10, "only the 10 new images go to the cell service"
    cells = response.json()["cells"]
    assert [c["filename"] for c in cells] == [name for name, _ in fresh[10:30]]
    assert all(len(c["sha256"]) == 64 and c["label"] in CELL_LABELS for c in cells)


def test_latest_report_and_404(gateway, originals):
    post_patient(gateway.url, "P-latest", originals[:16])
    latest = get(f"{gateway.url}/patients/P-latest/classification")
    assert latest.status_code == 200 and latest.json()["n_images"] == 16
    missing = get(f"{gateway.url}/patients/P-nobody/classification")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert "P-nobody" in missing.json()["detail"]


def test_fhir_diagnostic_report_validates(gateway, originals, cell_service):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    headers = {"Accept": "application/fhir+json"}
    response = post_patient(gateway.url, "P-fhir", originals[:24], headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    resource = DiagnosticReport.model_validate(response.json())
    assert resource.status == "preliminary", "a report nobody signed off yet"
    assert resource.category[0].coding[0].code == "LAB"
    assert resource.subject.identifier.value == "P-fhir"
    codes = {c.coding[0].code for c in [r.code for r in resource.contained if r.get_resource_type() == "Observation"]}
    assert {"770-8", "736-9", "5905-5", "713-8", "706-2", "71695-1", "58413-6"} <= codes
    assert resource.conclusion
    devices = [r for r in resource.contained if r.get_resource_type() == "Device"]
    assert {d.id for d in devices} - {"apl-cell-head-model", "apl-patient-model"} == {"cell-model", "subtype-model"}, \
        "the two models, and the APL models where deployed"
    cell_device = next(d for d in devices if d.id == "cell-model")
    versions = {(v.type.text if v.type else None): v.value for v in cell_device.version}
    served = httpx.get(f"{cell_service.url}/v1/model", timeout=10).json()
    assert versions["sha256"] == served["sha256"] and versions["rules-sha256"] == served["rules_sha256"], \
        "the report names the network file and the labelling rules that made it"
    latest = get(f"{gateway.url}/patients/P-fhir/classification", headers)
    assert DiagnosticReport.model_validate(latest.json()).subject.identifier.value == "P-fhir"


def test_bad_images_are_listed_not_fatal(gateway, originals):
    files = originals[:8] + [("broken.jpg", b"\xff\xd8garbage"), ("bomb.png", png_bomb())]
    report = post_patient(gateway.url, "P-bad-images", files).json()
    assert report["n_images"] == 10 and report["n_failed"] == 2
    assert {f["filename"] for f in report["failed"]} == {"broken.jpg", "bomb.png"}
    assert any("could not be classified" in w for w in report["warnings"])


@pytest.mark.parametrize(("patient", "status"), [
    ("../etc", 404),  # the client resolves the dot segments: POST /etc/classify, which is no route
    ("-starts-with-dash", 422), ("x" * 65, 422), ("sp ace", 422), ("ü", 422)])
def test_invalid_patient_ids(gateway, originals, patient, status):
    response = post_patient(gateway.url, patient, originals[:1])
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if status == 422:
        assert response.json()["detail"].startswith("invalid patient id")


def test_request_errors(gateway, originals):
    not_multipart = httpx.post(f"{gateway.url}/patients/P1/classify", json={}, headers=AUTH, timeout=10)
    assert not_multipart.status_code == 415
    no_images = httpx.post(f"{gateway.url}/patients/P1/classify", files=[("x", ("a", b"1"))], headers=AUTH,
                           timeout=10)
    assert no_images.status_code == 422
    too_many = post_patient(gateway.url, "P1", [(f"{i}.jpg", originals[0][1]) for i in range(81)])
    assert too_many.status_code == 413
    for response in (not_multipart, no_images, too_many):
        body = response.json()
        assert {"type", "title", "status", "detail", "request_id"} <= set(body)
    nothing_readable = post_patient(gateway.url, "P-noleuk", [("x.jpg", b"nope")])
    assert nothing_readable.status_code == 422 and "no leukocytes" in nothing_readable.json()["detail"]


def test_services_down_give_503_and_cache_nothing(tmp_path, subtype_service, cell_service, originals):
    with refused_port() as port:
        _services_down_give_503_and_cache_nothing(tmp_path, f"http://127.0.0.1:{port}", subtype_service,
                                                  cell_service, originals)


def _services_down_give_503_and_cache_nothing(tmp_path, dead, subtype_service, cell_service, originals):
    no_cells = start_gateway(tmp_path, dead, subtype_service.url, RETRY_BACKOFF_S="0.01")
    try:
        response = post_patient(no_cells.url, "P-down", originals[:4])
        assert response.status_code == 503 and response.headers["retry-after"] == "2"
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "cell service" in response.json()["detail"]
        assert get(f"{no_cells.url}/patients/P-down/classification").status_code == 404
        ready = httpx.get(f"{no_cells.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["cell"] is False
    finally:
        no_cells.stop()
    no_subtype = start_gateway(tmp_path, cell_service.url, dead, RETRY_BACKOFF_S="0.01")
    try:
        response = post_patient(no_subtype.url, "P-down2", originals[:4])
        assert response.status_code == 503 and "subtype service" in response.json()["detail"]
    finally:
        no_subtype.stop()


def test_redis_stopped_then_restarted(gateway, cell_service, redis_server, originals):
    fresh = [(f"q91-{name}", encode(Image.open(io.BytesIO(data)), "JPEG", quality=91)) for name, data in originals[:12]]
    before = cell_images_classified(cell_service.url)
    redis_server.stop()
    try:
        response = post_patient(gateway.url, "P-redis", fresh)
        assert response.status_code == 200
        report = response.json()
        assert report["cached"] is False
        assert any("cache unavailable" in w for w in report["warnings"])
        again = post_patient(gateway.url, "P-redis", fresh).json()
        assert again["cached"] is True and again["report_id"] == report["report_id"], \
            "a repeated upload finds its stored report without the cache"
        ready = httpx.get(f"{gateway.url}/readyz", timeout=10).json()
        assert ready["checks"]["cache"] == {"kind": "redis", "available": False}
    finally:
        redis_server.start()
    assert cell_images_classified(cell_service.url) - before == 12
    first = post_patient(gateway.url, "P-redis-2", fresh).json()
    assert first["cached"] is False and not any("cache unavailable" in w for w in first["warnings"])
    assert cell_images_classified(cell_service.url) - before == 24, "no cell label was cached while Redis was down"
    assert post_patient(gateway.url, "P-redis-3", fresh).json()["cached"] is False
    assert cell_images_classified(cell_service.url) - before == 24, "and they are cached again now"
    assert httpx.get(f"{gateway.url}/readyz", timeout=10).json()["checks"]["cache"]["available"] is True


def test_health_metrics_docs_and_page(gateway):
    assert httpx.get(f"{gateway.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz", timeout=10).json()
    assert ready["ready"] is True and ready["checks"]["cell"] and ready["checks"]["subtype"]
    assert ready["checks"]["apl"] == {"cell_head": True, "patient_model": True}  # the committed APL artifacts
    assert "gateway_requests_total" in get(f"{gateway.url}/metrics").text
    assert httpx.get(f"{gateway.url}/docs", timeout=10).status_code == 200
    page = httpx.get(f"{gateway.url}/", timeout=10)
    assert page.status_code == 200 and "AML classifier" in page.text
    assert "http" not in re.sub(r"http://www\.w3\.org/2000/svg", "", httpx.get(f"{gateway.url}/static/app.js").text)


def test_timeout_wrong_upstream_and_body_limit(tmp_path, cell_service, subtype_service, originals):
    slow = start_gateway(tmp_path, cell_service.url, subtype_service.url, CELL_TIMEOUT_S="0.001",
                         RETRY_BACKOFF_S="0.01", GATEWAY_MAX_BODY_BYTES="300000")
    try:
        timed_out = post_patient(slow.url, "P-slow", [(f"t{i}-{n}", d) for i, (n, d) in enumerate(originals[:4])])
        assert timed_out.status_code == 504, timed_out.text
        assert "did not answer in time" in timed_out.json()["detail"]
        too_big = post_patient(slow.url, "P-big", [("big.jpg", originals[0][1] + b"\0" * 400_000)])
        assert too_big.status_code == 413
        assert too_big.headers["content-type"].startswith("application/problem+json")
    finally:
        slow.stop()
    # a "cell service" that is something else answers 404 to /v1/classify: a bad gateway, not a 500
    wrong = start_gateway(tmp_path, subtype_service.url, subtype_service.url)
    try:
        response = post_patient(wrong.url, "P-wrong", originals[:2])
        assert response.status_code == 502
        assert response.headers["content-type"].startswith("application/problem+json")
    finally:
        wrong.stop()


def test_an_image_uploaded_twice_is_one_cell(gateway, originals):
    once = [(f"c{i}.jpg", data) for i, (_, data) in enumerate(originals[:12])]
    twice = once + [("again-c0.jpg", once[0][1]), ("again-c5.jpg", once[5][1]), ("again-again-c0.jpg", once[0][1])]
    single = post_patient(gateway.url, "P-once", once, params={"include": "cells"}).json()
    report = post_patient(gateway.url, "P-twice", twice, params={"include": "cells"}).json()
    assert report["n_images"] == 15 and report["n_duplicates"] == 3 and single["n_duplicates"] == 0
    assert report["cell_counts"] == single["cell_counts"], "a copy is the same cell: counted once"
    assert report["leukocyte_differential"] == single["leukocyte_differential"]
    assert report["n_classified"] + report["n_unclassified"] + report["n_failed"] + report["n_duplicates"] == 15
    assert [c["filename"] for c in report["cells"]] == [name for name, _ in once]
    warning = next(w for w in report["warnings"] if "exact copies" in w)
    assert warning.startswith("3 of 15 images") and "again-c5.jpg = c5.jpg" in warning
    assert not any("exact copies" in w for w in single["warnings"])

    reviewed = httpx.post(f"{gateway.url}/reports/{report['report_id']}/review", headers=REVIEW_AUTH,
                          json={"reviewer": "Dr Dup", "sign_off": False, "corrections": []}, timeout=30)
    assert reviewed.status_code == 201, reviewed.text
    assert reviewed.json()["n_duplicates"] == 3
    assert any(w.startswith("3 of 15 images are exact copies") for w in reviewed.json()["warnings"]), \
        "a new version keeps the warning"


def test_path_and_header_abuse(gateway, originals):
    problem = "application/problem+json"
    long_id = post_patient(gateway.url, "A" * 10_000, originals[:1])
    assert long_id.status_code == 422 and long_id.headers["content-type"].startswith(problem), long_id.text
    assert long_id.json()["detail"].startswith("invalid patient id")
    unicode_id = post_patient(gateway.url, "患者-1", originals[:1])
    assert unicode_id.status_code == 422 and unicode_id.headers["content-type"].startswith(problem)
    assert unicode_id.json()["detail"].startswith("invalid patient id")
    # the server decodes %2F to "/": /patients/../../etc/classify matches no route (never a file path)
    dotted = httpx.post(f"{gateway.url}/patients/..%2F..%2Fetc/classify", headers=AUTH, timeout=10,
                        files=[("images", ("a.jpg", originals[0][1]))])
    assert dotted.status_code == 404 and dotted.headers["content-type"].startswith(problem), dotted.text
    wrong_type = httpx.post(f"{gateway.url}/patients/P1/classify", content=b"<xml/>", timeout=10,
                            headers={**AUTH, "content-type": "application/xml"})
    assert wrong_type.status_code == 415 and wrong_type.headers["content-type"].startswith(problem)
    bad_boundary = httpx.post(f"{gateway.url}/patients/P1/classify", content=b"--x\r\nnonsense", timeout=10,
                              headers={**AUTH, "content-type": "multipart/form-data; boundary=y"})
    assert bad_boundary.status_code == 422 and bad_boundary.headers["content-type"].startswith(problem)
    assert "malformed multipart body" in bad_boundary.json()["detail"]
    duplicates = post_patient(gateway.url, "P-dupes", [("same.jpg", d) for _, d in originals[:3]],
                              params={"include": "cells"})
    assert duplicates.status_code == 200
    cells = duplicates.json()["cells"]
    assert [c["filename"] for c in cells] == ["same.jpg"] * 3
    assert len({c["sha256"] for c in cells}) == 3
    odd_request_id = post_patient(gateway.url, "P-rid", originals[:1], headers={"X-Request-ID": "../!" * 40})
    assert odd_request_id.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", odd_request_id.headers["x-request-id"]), "a malformed id is replaced"


def test_thousands_of_tiny_images(tmp_path, cell_service, subtype_service):
    big = start_gateway(tmp_path, cell_service.url, subtype_service.url)
    try:
        tiny = [(f"t{i}.png", encode(Image.new("RGB", (2, 2), (i % 256, (i // 256) % 256, 120)), "PNG"))
                for i in range(2000)]
        response = post_patient(big.url, "P-tiny", tiny)
        # 2x2 images show no cell: each is refused by the cell service (CELL_MIN_IMAGE_SIDE), none counted, so
        # there is no differential to report, and the answer says why with an example
        assert response.status_code == 422, response.text[:300]
        assert response.headers["content-type"].startswith("application/problem+json")
        detail = response.json()["detail"]
        assert "no leukocytes among the 2000 images (2000 could not be read; e.g. t0.png: too small to show a " \
               "cell: 2x2 px" in detail, detail
        too_many = post_patient(big.url, "P-tiny", tiny + tiny[:1])
        assert too_many.status_code == 413
    finally:
        big.stop()


def test_the_gateway_never_sends_service_calls_through_a_proxy(tmp_path, cell_service, subtype_service, originals):
    """A hospital's HTTP_PROXY is for outbound traffic: the calls to the internal services (images, the internal
    token) must not go to it; here it is a dead address, so a gateway that used it could classify nothing."""
    dead = "http://127.0.0.1:9"
    proxied = start_gateway(tmp_path, cell_service.url, subtype_service.url, HTTP_PROXY=dead, HTTPS_PROXY=dead,
                            ALL_PROXY=dead, http_proxy=dead, https_proxy=dead, all_proxy=dead, NO_PROXY="",
                            no_proxy="")
    try:
        response = post_patient(proxied.url, "P-proxy", originals[:4])
        assert response.status_code == 200, response.text[:300]
        assert httpx.get(f"{proxied.url}/readyz", timeout=10).json()["ready"] is True
    finally:
        proxied.stop()
