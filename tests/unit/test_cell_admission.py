"""Defects a second review found in the cell service: bodies read without bound before admission, request
metrics that missed every answer not raised by the route, a queue-depth gauge set only by the scrape, and
model bytes checked on one read but loaded from another."""

from __future__ import annotations

import asyncio
import shutil
import threading

import numpy as np
import onnxruntime
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.cell_classifier import app as cell_app
from services.cell_classifier.app import create_app
from services.cell_classifier.inference import CellModel
from services.cell_classifier.settings import DEFAULT_MODEL_DIR, CellServiceSettings
from tests.helpers.images import encode

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


@pytest.fixture(scope="module")
def model() -> CellModel:
    return CellModel(DEFAULT_MODEL_DIR, "cpu", threads=1)


def settings(**kwargs) -> CellServiceSettings:
    return CellServiceSettings(provider="cpu", decode_workers=1, inference_threads=1, **kwargs)


def multipart(count: int = 1, padding: int = 0) -> bytes:
    image = encode(Image.new("RGB", (40, 40), (180, 90, 160)), "PNG")
    parts = b"".join(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="{i}.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n" for i in range(count))
    return parts + f"--{BOUNDARY}--\r\n".encode() + b" " * padding


class Call:
    """One request straight to the ASGI app; with ``gate``, the body's last byte waits for it."""

    def __init__(self, app, body: bytes, *, length: bool = True, gate: asyncio.Event | None = None):
        self.app, self.body, self.gate = app, body, gate
        self.headers = [(b"content-type", CONTENT_TYPE.encode())]
        if length:
            self.headers.append((b"content-length", str(len(body)).encode()))
        self.reads = 0
        self.status: int | None = None
        self.answer_headers: dict[bytes, bytes] = {}

    async def __call__(self) -> int:
        chunks = [self.body[:-1], self.body[-1:]]

        async def receive():
            self.reads += 1
            if self.reads == 2 and self.gate is not None:
                await self.gate.wait()
            chunk = chunks.pop(0) if chunks else b""
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message):
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.answer_headers = dict(message["headers"])

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/classify", "raw_path": b"/v1/classify", "root_path": "",
                 "query_string": b"", "headers": self.headers, "client": ("127.0.0.1", 1), "server": ("t", 80)}
        await self.app(scope, receive, send)
        return self.status


async def until(condition, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


# --- 1. bodies being read are bounded before admission ---------------------------------------------------------

def test_a_body_that_does_not_fit_beside_those_being_read_gets_503_before_it_is_read(model):
    body = multipart()
    app = create_app(settings(max_reading_bytes=len(body) * 3 // 2), model)

    async def main():
        async with app.router.lifespan_context(app):
            gate = asyncio.Event()
            slow = Call(app, body, gate=gate)
            reading = asyncio.create_task(slow())
            await until(lambda: slow.reads == 2)  # its body is being read
            refused, chunked = Call(app, body), Call(app, body, length=False)
            assert await refused() == 503 and await chunked() == 503
            assert refused.reads == 0 and chunked.reads == 0, "refused before any of its body was read"
            assert refused.answer_headers[b"retry-after"] == b"1"
            gate.set()
            assert await reading == 200
            assert app.state.reading.held == 0
            assert await Call(app, body)() == 200  # nothing else is being read now
            # a worker reading no other body takes one larger than the whole budget, with or without a length
            assert await Call(app, multipart(4, padding=len(body) * 2))() == 200
            assert await Call(app, body, length=False)() == 200

    asyncio.run(main())


def test_the_reading_budget_is_shared_out_among_worker_processes():
    assert settings(max_reading_bytes=1000, workers=3).worker_max_reading_bytes() == 334
    assert CellServiceSettings().max_reading_bytes == 256 * 1024 * 1024


# --- 2. every /v1/classify answer is counted by its final status -----------------------------------------------

def test_every_classify_answer_is_counted_once_by_its_status(model, monkeypatch):
    app = create_app(settings(internal_token="s3cret", max_body_bytes=4000), model)
    token = {"x-internal-token": "s3cret"}
    files = [("images", ("a.png", encode(Image.new("RGB", (40, 40)), "PNG"), "image/png"))]
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/v1/classify", files=files).status_code == 401  # internal token middleware
        assert client.post("/v1/classify", headers=token,
                           files=[("images", ("big.png", b"x" * 5000))]).status_code == 413  # body-size limit
        assert client.post("/v1/classify", headers={**token, "content-type": "application/json"},
                           content=b"{}").status_code == 415  # the route's own ProblemError
        assert client.post("/v1/classify", headers=token, files=files).status_code == 200
        monkeypatch.setattr(cell_app, "classify_response_json", lambda *args: 1 / 0)
        assert client.post("/v1/classify", headers=token, files=files).status_code == 500
        assert client.get("/healthz").status_code == 200  # not a classify answer
        registry = client.app.state.metrics.registry
    sample = registry.get_sample_value
    assert sample("cell_requests_total", {"outcome": "ok"}) == 1
    assert sample("cell_requests_total", {"outcome": "error"}) == 4
    assert {status: sample("cell_errors_total", {"status": status}) for status in ("401", "413", "415", "500")} \
        == {"401": 1, "413": 1, "415": 1, "500": 1}


class HangUp(Call):
    """A client that sends part of its body and goes away (the server then receives ``http.disconnect``)."""

    async def __call__(self) -> int | None:
        sent = []

        async def receive():
            if not sent:
                sent.append(True)
                return {"type": "http.request", "body": self.body[: len(self.body) // 2], "more_body": True}
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                self.status = message["status"]

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/classify", "raw_path": b"/v1/classify", "root_path": "",
                 "query_string": b"", "headers": self.headers, "client": ("127.0.0.1", 1), "server": ("t", 80)}
        await self.app(scope, receive, send)
        return self.status


@pytest.mark.parametrize("large", [False, True], ids=["fast path", "streamed"])
def test_a_client_that_hangs_up_mid_upload_is_not_counted_as_an_error(model, monkeypatch, large):
    """Its 400 reaches no one: counted, it would raise the error rate an alert watches for a fault of the service."""
    if large:
        monkeypatch.setattr("shared.uploads.FAST_PATH_MAX_BYTES", -1)
    app = create_app(settings(), model)

    async def main():
        async with app.router.lifespan_context(app):
            assert await HangUp(app, multipart(2))() == 400
            assert await Call(app, multipart(1))() == 200
            return app.state.metrics.registry.get_sample_value

    sample = asyncio.run(main())
    assert sample("cell_requests_total", {"outcome": "ok"}) == 1
    assert not sample("cell_requests_total", {"outcome": "error"})
    assert not sample("cell_errors_total", {"status": "400"})


# --- 3. the queue-depth gauge is current without a scrape ------------------------------------------------------

class HeldModel:
    """The real model, whose inference waits while ``hold`` is set (to keep images queued)."""

    def __init__(self, model: CellModel):
        self.model, self.hold, self.release = model, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.model, name)

    def infer(self, images):
        if self.hold.is_set():
            self.release.wait(5)
        return self.model.infer(images)


def test_the_queue_depth_gauge_follows_the_queue_without_a_scrape(model):
    held = HeldModel(model)
    app = create_app(settings(max_batch=1, concurrent_batches=1), held)

    async def main():
        async with app.router.lifespan_context(app):
            depth = lambda: app.state.metrics.registry.get_sample_value("cell_queue_depth")  # noqa: E731
            held.hold.set()
            requests = [asyncio.create_task(Call(app, multipart())()) for _ in range(3)]
            await until(lambda: app.state.batcher.queued == 2)  # one runs (held), two wait
            assert depth() == 2
            held.release.set()
            assert await asyncio.gather(*requests) == [200, 200, 200]
            assert depth() == 0

    asyncio.run(main())


# --- 5. the model bytes loaded are the bytes checked -----------------------------------------------------------

def test_a_model_file_replaced_after_its_check_is_not_what_runs(tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir, ignore=shutil.ignore_patterns("*.keras", "*.png", "*.md"))
    originals = {path: path.read_bytes() for path in model_dir.glob("*.onnx")}
    real_session = onnxruntime.InferenceSession
    replaced = []

    def replaced_after_the_check(model, *args, **kwargs):
        """Someone swaps the file between the sha256 check and the session's load."""
        for path, data in originals.items():
            if model in (str(path), data):
                path.write_bytes(b"not the model whose sha256 was checked")
                replaced.append(path.name)
        return real_session(model, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", replaced_after_the_check)
    loaded = CellModel(model_dir, "cpu", threads=1)
    assert loaded.apl_head is not None and {loaded.file, "apl_cell_head.onnx"} <= set(replaced)
    monkeypatch.setattr(onnxruntime, "InferenceSession", real_session)
    genuine = CellModel(DEFAULT_MODEL_DIR, "cpu", threads=1, variant=loaded.variant)
    images = np.random.default_rng(0).integers(0, 256, (2, loaded.input_size, loaded.input_size, 3), dtype=np.uint8)
    assert np.array_equal(loaded.infer(images), genuine.infer(images))  # the checked network, APL head included
