"""Defects a review found in the cell service: wide-mode images' memory, an explicit CUDA provider that
silently ran on the CPU, the pre-start check of several workers, an empty internal token, and requests left
waiting by a stopping batcher or decode pool."""

from __future__ import annotations

import asyncio
import io
import shutil
import struct
import threading
import zlib

import numpy as np
import onnxruntime
import pytest
from PIL import Image
from pydantic import ValidationError

from services.cell_classifier.__main__ import check_before_workers
from services.cell_classifier.batcher import BatcherStopped, DynamicBatcher
from services.cell_classifier.decoding import ImageRejected, decode_image
from services.cell_classifier.inference import CellModel
from services.cell_classifier.settings import DEFAULT_MODEL_DIR, CellServiceSettings
from services.cell_classifier.workers import LoopWorkers, WorkersStopped
from shared.internal_auth import InternalTokenMiddleware
from shared.preprocessing import IMAGE_SIZE, preprocess
from tests.helpers.images import encode
from tests.helpers.waiting import HANG_S, until

LIMIT = 40_000_000


def sixteen_bit_png(width: int, height: int, level: int = 30000) -> bytes:
    """A complete single-colour 16-bit grayscale PNG, small on disk however many pixels it has."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + struct.pack(">H", level) * width
    packer = zlib.compressobj(9)
    rows = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


# --- 1. 16-bit, float and transparent images: their conversion's memory is bounded -------------------------

def test_a_large_sixteen_bit_image_is_refused_before_its_float64_conversion():
    data = sixteen_bit_png(6300, 6300)
    assert len(data) < 200_000 and 6300 * 6300 < LIMIT  # under the pixel cap of 8-bit images
    with pytest.raises(ImageRejected, match="too many pixels for a I;16 image: 6300x6300"):
        decode_image(data, LIMIT)


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "RGBA", "LA"])
def test_wide_modes_get_a_lower_pixel_limit_while_8_bit_images_keep_theirs(mode):
    side, budget = 500, 500 * 500  # an 8-bit image of this size is exactly at the cap
    gray = np.full((side, side), 200, dtype=np.uint8)
    for fmt, image in (("PNG", Image.fromarray(gray).convert("RGB")), ("PNG", Image.fromarray(gray)),
                       ("TIFF", Image.fromarray(gray).convert("CMYK"))):
        assert decode_image(encode(image, fmt), budget).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    numeric = {"I;16": gray.astype(np.uint16) * 257, "I": gray.astype(np.int32) * 257,
               "F": gray.astype(np.float32) / 255}
    wide = Image.fromarray(numeric[mode]) if mode in numeric else Image.fromarray(gray).convert(mode)
    assert wide.mode == mode
    data = encode(wide, "TIFF" if mode in ("I", "F") else "PNG")
    with pytest.raises(ImageRejected, match=f"too many pixels for a {mode} image"):
        decode_image(data, budget)
    # well under its own limit, the same image decodes as before (the preprocessing is unchanged)
    assert np.array_equal(decode_image(data, 100 * budget), preprocess(Image.open(io.BytesIO(data))))


def test_a_small_sixteen_bit_image_still_decodes():
    assert decode_image(sixteen_bit_png(360, 363), LIMIT).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


# --- 2. CELL_PROVIDER=cuda fails the start when onnxruntime falls back to the CPU ---------------------------

@pytest.fixture
def cuda_offered_but_not_working(monkeypatch):
    """onnxruntime lists CUDA (as onnxruntime-gpu does) but the session starts on the CPU: what it does when
    the CUDA provider cannot load (no driver, wrong CUDA or cuDNN), with a warning only."""
    available = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *available])


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_explicit_cuda_refuses_a_session_that_runs_on_the_cpu(cuda_offered_but_not_working):
    with pytest.raises(RuntimeError, match="CELL_PROVIDER=cuda but onnxruntime runs the model on"):
        CellModel(DEFAULT_MODEL_DIR, "cuda", threads=1, variant="float")


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_auto_falls_back_to_the_cpu_and_says_so(cuda_offered_but_not_working):
    model = CellModel(DEFAULT_MODEL_DIR, "auto", threads=1, variant="float")
    assert model.provider == model.info["provider"] == "CPUExecutionProvider"


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_auto_variant_follows_the_provider_that_runs_not_the_one_listed(cuda_offered_but_not_working):
    """CELL_MODEL_VARIANT=auto picks float for CUDA; when CUDA does not start, the CPU's choice runs (the
    card's default, int8), as on a machine without a GPU, not the float file at half the speed."""
    import json

    default = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())["serving_variants"]["default"]
    model = CellModel(DEFAULT_MODEL_DIR, "auto", threads=1, variant="auto")
    assert model.provider == "CPUExecutionProvider" and model.variant == model.info["variant"] == default
    assert model.sha256 == CellModel(DEFAULT_MODEL_DIR, "cpu", threads=1, variant="auto").sha256


# --- 5. with several workers, the pre-start check verifies what every worker verifies -----------------------

def test_the_pre_start_check_refuses_a_tampered_apl_head(tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir, ignore=shutil.ignore_patterns("*.keras", "*.png", "*.md"))
    head = model_dir / "apl_cell_head.onnx"
    head.write_bytes(head.read_bytes()[:-1] + b"\x00")
    monkeypatch.setenv("CELL_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("CELL_PROVIDER", "cpu")
    monkeypatch.setenv("CELL_WORKERS", "2")
    with pytest.raises(SystemExit) as stopped:
        check_before_workers(CellServiceSettings())
    assert stopped.value.code == 3


# --- 6. an empty INTERNAL_TOKEN is a configuration error, not "no internal auth" -----------------------------

@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_an_empty_internal_token_is_refused_at_start(monkeypatch, value):
    monkeypatch.setenv("INTERNAL_TOKEN", value)
    from gateway.settings import GatewaySettings
    from services.subtype.settings import SubtypeServiceSettings

    for settings in (CellServiceSettings, SubtypeServiceSettings, GatewaySettings):
        with pytest.raises(ValidationError, match="INTERNAL_TOKEN"):
            settings()
    with pytest.raises(ValueError, match="INTERNAL_TOKEN"):
        InternalTokenMiddleware(app=None, token=value)


def test_an_unset_internal_token_still_means_no_internal_auth(monkeypatch):
    monkeypatch.delenv("INTERNAL_TOKEN", raising=False)
    assert CellServiceSettings().internal_token is None
    monkeypatch.setenv("INTERNAL_TOKEN", "s3cret")
    assert CellServiceSettings().internal_token == "s3cret"


# --- 7. stopping fails what it does not run ------------------------------------------------------------------

def test_stop_fails_the_items_of_the_batch_being_collected():
    async def main():
        depths: list[int] = []
        batcher = DynamicBatcher(lambda batch: batch * 2, max_batch=8, max_delay_s=HANG_S, max_queue=100,
                                 on_queue_depth=depths.append)
        batcher.start()
        waiting = asyncio.ensure_future(batcher.submit(np.arange(3)))
        # the 3 items were queued (depth 3 reported), then the collector took them off the queue (no longer
        # counted, its own report comes when it is done): it holds them, waiting (long) for more
        await until(lambda: depths[:1] == [3] and batcher.queued == 0, what="the collector holding the items")
        assert not waiting.done()
        await batcher.stop()
        return await asyncio.wait_for(waiting, HANG_S)

    with pytest.raises(BatcherStopped):
        asyncio.run(main())


def test_shutdown_fails_the_jobs_it_drops_and_refuses_new_ones():
    workers = LoopWorkers(1, "decode")
    started, gate = threading.Event(), threading.Event()

    def first_job():
        started.set()
        return gate.wait(HANG_S)

    async def main():
        first = workers.run(first_job)
        dropped = workers.run(lambda: "never")
        try:
            await until(started.is_set, what="the first job running")  # the one thread is busy with it
            workers.shutdown()
        finally:
            gate.set()
        outcome = await asyncio.wait_for(asyncio.gather(first, dropped, return_exceptions=True), HANG_S)
        later = await asyncio.wait_for(asyncio.gather(workers.run(lambda: "late"), return_exceptions=True), HANG_S)
        return outcome, later

    (first, dropped), (later,) = asyncio.run(main())
    assert first is True
    assert isinstance(dropped, WorkersStopped) and isinstance(later, WorkersStopped)


def test_a_request_that_meets_stopped_decode_workers_gets_503_not_an_image_error():
    from fastapi.testclient import TestClient

    from services.cell_classifier.app import create_app

    settings = CellServiceSettings(provider="cpu", decode_workers=1, inference_threads=1)
    with TestClient(create_app(settings)) as client:
        client.app.state.decode_workers.shutdown()
        answer = client.post("/v1/classify", files=[("images", ("a.png", encode(Image.new("RGB", (8, 8)), "PNG")))])
    assert answer.status_code == 503 and "shutting down" in answer.json()["detail"]


def test_a_pixel_limit_pillow_would_not_honour_is_refused_at_start(monkeypatch):
    """Pillow refuses to open any image above twice its warning limit, whatever CELL_MAX_PIXELS says: a higher
    setting would reject such images while naming the setting's limit."""
    from pydantic import ValidationError

    from services.cell_classifier.settings import PILLOW_REFUSES_ABOVE

    monkeypatch.setenv("CELL_MAX_PIXELS", str(PILLOW_REFUSES_ABOVE + 1))
    with pytest.raises(ValidationError, match="less than or equal to"):
        CellServiceSettings()
    monkeypatch.setenv("CELL_MAX_PIXELS", str(PILLOW_REFUSES_ABOVE))
    assert CellServiceSettings().max_pixels == PILLOW_REFUSES_ABOVE
