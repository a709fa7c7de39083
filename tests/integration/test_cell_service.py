"""The cell service as a real uvicorn process over real HTTP, with real images."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.vocabulary import CELL_LABELS, CELL_TYPES
from tests.helpers.images import encode, fullsize_images, png_bomb
from tests.helpers.processes import start_cell_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    process = start_cell_service(tmp_path_factory.mktemp("cell"), CELL_MAX_IMAGES="100", MAX_DELAY_MS="5")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def originals() -> list[tuple[str, str, bytes]]:
    return [(truth, path.name, path.read_bytes()) for truth, path in fullsize_images()]


def classify(url: str, files: list[tuple[str, bytes]], **kwargs) -> httpx.Response:
    parts = [("images", (name, data, "application/octet-stream")) for name, data in files]
    return httpx.post(f"{url}/v1/classify", files=parts, timeout=60, **kwargs)


def assert_still_ready(url: str) -> None:
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_all_originals_classified_in_order(service, originals):
    response = classify(service.url, [(name, data) for _, name, data in originals])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["provider"] == "CPUExecutionProvider"
    assert len(body["model"]["sha256"]) == 64
    results = body["results"]
    assert [r["filename"] for r in results] == [name for _, name, _ in originals]
    for result in results:
        assert result["label"] in CELL_LABELS
        assert set(result["probabilities"]) == set(CELL_TYPES)
        assert abs(sum(result["probabilities"].values()) - 1.0) < 1e-4
        assert result["confidence"] == pytest.approx(max(result["probabilities"].values()), abs=1e-6)
        assert 0 <= result["appearance_distance"] < 1000


def test_committed_model_recognises_the_originals(service, originals):
    """Full-size 360x363 originals through the service: the committed model must get them right."""
    response = classify(service.url, [(name, data) for _, name, data in originals])
    labels = [r["label"] for r in response.json()["results"]]
    truth = [t for t, _, _ in originals]
    accuracy = np.mean([a == b or (b == "promyelocyte" and a == "ig") for a, b in zip(labels, truth)])
    assert accuracy >= 0.95, list(zip(truth, labels))


def test_concurrent_clients_get_their_own_results_in_order(service, originals):
    rng = np.random.default_rng(3)
    jobs = [[originals[i] for i in rng.choice(len(originals), size=int(rng.integers(1, 12)), replace=False)]
            for _ in range(24)]
    single = {name: r for (_, name, _), r in zip(originals, classify(service.url, [(n, d) for _, n, d in originals])
                                                  .json()["results"])}

    def send(job):
        return job, classify(service.url, [(name, data) for _, name, data in job])

    with ThreadPoolExecutor(12) as pool:
        for job, response in pool.map(send, jobs):
            assert response.status_code == 200
            results = response.json()["results"]
            assert [r["filename"] for r in results] == [name for _, name, _ in job]
            for result in results:
                expected = single[result["filename"]]
                assert result["label"] == expected["label"]
                assert result["confidence"] == pytest.approx(expected["confidence"], abs=1e-4)


def test_every_supported_encoding(service, originals):
    _, _, data = originals[0]
    cell = Image.open(io.BytesIO(data)).convert("RGB")
    gray16 = Image.fromarray(np.asarray(cell.convert("L"), dtype=np.uint16) * 257)
    files = [
        ("a.png", encode(cell, "PNG")), ("b.tif", encode(cell, "TIFF")), ("c.bmp", encode(cell, "BMP")),
        ("d-gray.jpg", encode(cell.convert("L"), "JPEG")), ("e-rgba.png", encode(cell.convert("RGBA"), "PNG")),
        ("f-16bit.png", encode(gray16, "PNG")), ("g-cmyk.jpg", encode(cell.convert("CMYK"), "JPEG")),
        ("h-cmyk.tif", encode(cell.convert("CMYK"), "TIFF")),
    ]
    results = classify(service.url, files).json()["results"]
    assert [r["filename"] for r in results] == [name for name, _ in files]
    assert all("label" in r for r in results), results
    colour = [r for r in results if r["filename"] in ("a.png", "b.tif", "c.bmp", "e-rgba.png")]
    assert len({r["label"] for r in colour}) == 1, "lossless encodings of one cell get one label"


def test_bad_images_fail_alone(service, originals):
    _, name, data = originals[0]
    cell = Image.open(io.BytesIO(data)).convert("RGB")
    files = [
        ("good.jpg", data), ("empty.jpg", b""), ("garbage.png", b"not an image"),
        ("truncated.jpg", data[: len(data) // 3]), ("bomb.png", png_bomb()), ("anim.gif", encode(cell, "GIF")),
        ("icon.png", encode(cell.resize((31, 40)), "PNG")), ("good-again.jpg", data),
    ]
    response = classify(service.url, files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [n for n, _ in files]
    assert "label" in results[0] and "label" in results[-1]
    errors = {r["filename"]: r["error"] for r in results[1:-1]}
    assert "empty" in errors["empty.jpg"]
    assert "not a decodable image" in errors["garbage.png"]
    assert "truncated" in errors["truncated.jpg"]
    assert "too many pixels" in errors["bomb.png"]
    assert "unsupported format GIF" in errors["anim.gif"]
    assert "too small to show a cell: 31x40 px (at least 32 px a side" in errors["icon.png"]
    smallest = classify(service.url, [("smallest.png", encode(cell.resize((32, 32)), "PNG"))])
    assert "label" in smallest.json()["results"][0], "32 px a side is enough"
    assert_still_ready(service.url)


def test_only_bad_images_still_answers(service):
    response = classify(service.url, [("x.jpg", b"\xff\xd8\xff")])
    assert response.status_code == 200
    assert "error" in response.json()["results"][0]


def test_request_errors_are_problem_json(service, originals):
    no_images = httpx.post(f"{service.url}/v1/classify", files=[("other", ("a.txt", b"x"))], timeout=10)
    assert no_images.status_code == 422
    assert no_images.headers["content-type"].startswith("application/problem+json")
    assert "no images" in no_images.json()["detail"]

    not_multipart = httpx.post(f"{service.url}/v1/classify", json={"images": []}, timeout=10)
    assert not_multipart.status_code == 415

    _, name, data = originals[0]
    too_many = classify(service.url, [(f"{i}.jpg", data) for i in range(101)])
    assert too_many.status_code == 413
    assert "at most 100" in too_many.json()["detail"]

    field_not_file = httpx.post(f"{service.url}/v1/classify", data={"images": "text"}, files=[("x", ("x", b""))],
                                timeout=10)
    assert field_not_file.status_code == 422
    assert_still_ready(service.url)


def _admitted(url: str) -> int:
    return httpx.get(f"{url}/readyz", timeout=10).json()["checks"]["admitted_images"]


def test_body_and_queue_limits(tmp_path, originals):
    _, _, data = originals[0]
    limited = start_cell_service(tmp_path, CELL_MAX_BODY_BYTES="200000")
    try:
        too_big = classify(limited.url, [("big.jpg", data + b"\0" * 300_000)])
        assert too_big.status_code == 413
        assert "limit" in too_big.json()["detail"]
        assert_still_ready(limited.url)
    finally:
        limited.stop()

    limited = start_cell_service(tmp_path, MAX_QUEUE="4", MAX_DELAY_MS="1")
    try:

        # idle: one request larger than the queue is still taken
        assert classify(limited.url, [(f"{i}.jpg", data) for i in range(5)]).status_code == 200

        # busy with a big request: another one is refused at once, before any decoding
        with ThreadPoolExecutor(1) as pool:
            big = pool.submit(classify, limited.url, [(f"big{i}.jpg", data) for i in range(192)])
            deadline = time.monotonic() + 30
            while not _admitted(limited.url) and not big.done() and time.monotonic() < deadline:
                time.sleep(0.002)
            assert not big.done(), "the big request finished before the check could run"
            refused = classify(limited.url, [("one.jpg", data)])
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert "queue is full" in refused.json()["detail"]
            assert big.result().status_code == 200
        assert _admitted(limited.url) == 0
        assert classify(limited.url, [(f"{i}.jpg", data) for i in range(4)]).status_code == 200
        assert_still_ready(limited.url)
    finally:
        limited.stop()


def test_model_health_and_metrics(service, originals):
    card = httpx.get(f"{service.url}/v1/model", timeout=10).json()
    assert card["class_order"] == list(CELL_TYPES)
    assert card["provider"] == "CPUExecutionProvider"
    assert "threshold" in card["unclassified_rule"]
    assert httpx.get(f"{service.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{service.url}/readyz", timeout=10).json()
    assert ready["ready"] is True
    classify(service.url, [("one.jpg", originals[0][2])])
    metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
    for name in ("cell_requests_total", "cell_errors_total", "cell_batch_size_bucket",
                 "cell_queue_wait_seconds_bucket", "cell_inference_seconds_bucket"):
        assert name in metrics
    assert 'cell_requests_total{outcome="ok"}' in metrics


def test_openapi_describes_the_upload(service):
    spec = httpx.get(f"{service.url}/openapi.json", timeout=10).json()
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
