"""The cell-classifier HTTP API."""

from __future__ import annotations

import asyncio
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from PIL import Image
from starlette.routing import request_response

from services.cell_classifier.batcher import BatcherStopped, DynamicBatcher, QueueFull
from services.cell_classifier.decoding import ImageRejected, decode_image
from services.cell_classifier.inference import CellModel
from services.cell_classifier.metrics import CONTENT_TYPE_LATEST, CellMetrics
from services.cell_classifier.responses import classify_response_json, model_info_json
from services.cell_classifier.settings import CellServiceSettings
from services.cell_classifier.workers import LoopWorkers, WorkersStopped
from shared.admission import BytesInFlight, declared_length
from shared.body_limit import BodySizeLimitMiddleware
from shared.vocabulary import CELL_TYPES, UNCLASSIFIED, VOCABULARY_VERSION
from shared.internal_auth import InternalTokenMiddleware
from shared.request_id import install_request_id
from shared.problems import ProblemError, install_problem_handlers
from shared.uploads import CLIENT_DISCONNECTED, read_image_parts
from shared.schemas import (
    CellModelCard,
    ClassifyCellsResponse,
    Health,
    Problem,
    Readiness,
)

log = logging.getLogger("services.cell_classifier")

MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}
ERRORS = {status: {"model": Problem, "content": {"application/problem+json": {}}} for status in (413, 415, 422, 503)}


def _decode_upload(data: bytes, settings: CellServiceSettings, model: CellModel) -> tuple[np.ndarray, float | None]:
    """Bytes -> (network input, appearance distance), in a decode worker."""
    if len(data) > settings.max_image_bytes:
        raise ImageRejected(f"file larger than {settings.max_image_bytes} bytes")
    image = decode_image(data, settings.max_pixels, size=model.input_size, min_side=settings.min_image_side)
    return image, model.appearance_distance(image)


class _CountClassifyResponses:
    """Counts every /v1/classify answer by its final status (``CellMetrics.count_response``), whoever gives it:
    the route, the body-size limit (413), the internal token check (401), Starlette's parser (400) or an
    unforeseen exception (500, answered by the server-error handler outside). Counting only the route's
    ``ProblemError``s left all of these out. A request whose client left before any answer, or during its upload
    (``shared.uploads`` marks it: its 400 reaches no one), is not counted: error-rate alerts are for the service."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/classify":
            return await self.app(scope, receive, send)
        status = None

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            if status is None:
                status = 500
            raise
        finally:
            metrics = getattr(scope["app"].state, "metrics", None)
            gone = (scope.get("state") or {}).get(CLIENT_DISCONNECTED, False)
            if status is not None and metrics is not None and not gone:
                metrics.count_response(status)


def create_app(settings: CellServiceSettings | None = None, model: CellModel | None = None) -> FastAPI:
    settings = settings or CellServiceSettings()
    max_queue = settings.worker_max_queue()  # this process's share of CELL_MAX_QUEUE
    max_reading = settings.worker_max_reading_bytes()  # and of CELL_MAX_READING_BYTES
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own pixel limit is lower

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.ready = False
        state.admitted_images = 0  # images of requests between admission and answer (decoding, queued, running)
        state.reading = BytesInFlight(max_reading, lambda held, limit: _retry_later(
            f"too many uploads are being read ({held} bytes, limit {limit}); retry later"))
        state.metrics = CellMetrics(settings.max_batch)
        state.decode_workers = LoopWorkers(settings.decode_workers, "decode")
        state.inference_pool = ThreadPoolExecutor(settings.concurrent_batches, thread_name_prefix="onnx")
        loop = asyncio.get_running_loop()
        state.model = model or await loop.run_in_executor(
            state.inference_pool, lambda: CellModel(settings.model_dir, settings.provider, settings.threads_per_batch(),
                                                    settings.model_variant)
        )
        await loop.run_in_executor(state.inference_pool, state.model.warm_up)
        state.model_info_json = model_info_json(state.model.info)
        state.batcher = DynamicBatcher(
            state.model.infer, max_batch=settings.max_batch, max_delay_s=settings.max_delay_ms / 1000.0,
            # admission control below is the real bound; this one only guards the batcher itself
            max_queue=max_queue + settings.max_images, executor=state.inference_pool,
            on_batch=state.metrics.observe_batch, max_concurrent_batches=settings.concurrent_batches,
            on_queue_depth=state.metrics.queue_depth.set,
        )
        state.batcher.start()
        state.ready = True
        log.info("cell service ready: %s", state.model.info)
        try:
            yield
        finally:
            state.ready = False
            await state.batcher.stop()
            state.decode_workers.shutdown()
            state.inference_pool.shutdown(wait=True)
            state.metrics.close()

    app = FastAPI(title="AML cell classifier", version="2.0.0", lifespan=lifespan,
                  description="Labels single-cell blood smear images with a cell type of vocabulary "
                              f"{VOCABULARY_VERSION} ({', '.join(CELL_TYPES)}) or {UNCLASSIFIED}.")
    app.state.settings = settings
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(InternalTokenMiddleware, token=settings.internal_token)
    install_problem_handlers(app)
    install_request_id(app)
    app.add_middleware(_CountClassifyResponses)  # added last: outermost, it sees the others' answers too

    @app.post("/v1/classify", response_model=ClassifyCellsResponse, openapi_extra=MULTIPART_BODY, responses=ERRORS)
    async def classify(request: Request) -> Response:
        """Classify one or more images sent as multipart parts named `images`; results in request order."""
        response = await _classify(request, request.app.state)  # counted by _CountClassifyResponses
        # Serialised here: FastAPI would validate the answer against response_model again.
        return Response(response, media_type="application/json")

    # The route stays FastAPI's (its OpenAPI entry: body, response model, errors) but is served by
    # Starlette's plain request/response wrapper: the endpoint takes only the Request and returns a
    # Response, so FastAPI's dependency solving and exit stacks were pure per-request cost (issue 12).
    # Errors still reach the app's problem handlers (the wrapper applies them, as FastAPI's does).
    classify_route = next(route for route in app.router.routes
                          if isinstance(route, APIRoute) and route.path == "/v1/classify")
    classify_route.app = request_response(classify)

    async def _classify(request: Request, state) -> bytes:
        if not state.ready:
            raise _retry_later("model is not loaded yet")
        # Admission control before any work: the images a request brings are counted from here
        # until its answer, so decoding, queue and inference together hold at most MAX_QUEUE
        # images (each worker process its share), and a refused request costs neither decoding
        # nor inference. An idle service takes any request up to CELL_MAX_IMAGES, even one larger
        # than MAX_QUEUE.
        if state.admitted_images >= max_queue:
            raise _queue_full(state.admitted_images)
        # The bodies being read are bounded too, by their declared size: a request's images are counted only
        # once its body is read, and until then any number of bodies (up to CELL_MAX_BODY_BYTES each) could
        # be read into memory at once, to be refused after. A worker reading no other body takes any one.
        with state.reading.hold(declared_length(request.headers, settings.max_body_bytes)):
            uploads = await read_image_parts(request, settings.max_images)
        if state.admitted_images and state.admitted_images + len(uploads) > max_queue:
            raise _queue_full(state.admitted_images)
        state.admitted_images += len(uploads)
        try:
            return await _decode_and_infer(uploads, state)
        finally:
            state.admitted_images -= len(uploads)

    def _retry_later(detail: str) -> ProblemError:
        return ProblemError(503, detail, headers={"Retry-After": str(settings.retry_after_s)})

    def _queue_full(admitted: int) -> ProblemError:
        return _retry_later(f"the inference queue is full ({admitted} images in progress, limit "
                            f"{max_queue}); retry later")

    async def _decode_and_infer(uploads, state) -> bytes:
        decoded = await asyncio.gather(
            *(state.decode_workers.run(_decode_upload, data, settings, state.model) for _, data in uploads),
            return_exceptions=True,
        )
        if any(isinstance(item, WorkersStopped) for item in decoded):  # not the images' fault: like BatcherStopped
            raise _retry_later("the service is shutting down")
        good = [i for i, item in enumerate(decoded) if not isinstance(item, BaseException)]
        outputs = []
        if good:
            try:  # a list, not a stack: the batcher stacks the batch in the inference thread
                outputs = await state.batcher.submit([decoded[i][0] for i in good])
            except QueueFull:
                raise _queue_full(state.admitted_images) from None
            except BatcherStopped:
                raise _retry_later("the service is shutting down") from None
            except Exception:
                log.exception("inference failed")
                raise _retry_later("inference failed for this request; retry later") from None
        by_index = dict(zip(good, outputs))
        results: list[dict] = []
        for i, (filename, _) in enumerate(uploads):
            item = decoded[i]
            if i in by_index:
                probabilities, apl_logit = state.model.split(by_index[i])
                labelled = state.model.label(probabilities)
                results.append({"filename": filename, "label": labelled.label, "confidence": labelled.confidence,
                                "probabilities": labelled.probabilities, "appearance_distance": item[1],
                                "apl_logit": apl_logit})
            else:
                message = str(item) if isinstance(item, ImageRejected) else f"could not be processed ({type(item).__name__})"
                results.append({"filename": filename, "error": message})
        state.metrics.images_classified.inc(len(good))
        if len(good) < len(uploads):
            state.metrics.images_error.inc(len(uploads) - len(good))
        return classify_response_json(state.model_info_json, results)

    @app.get("/v1/model", response_model=CellModelCard)
    async def model_card(request: Request) -> CellModelCard:
        """The model card of the model in use, with the execution provider and the variant (float or int8)
        that runs; `file` and `sha256` are the running file's; `rules_sha256` that of the rules that turn its
        output into labels; `apl_head` the per-cell APL head in use (null: none, the cells' `apl_logit` is null)."""
        model = request.app.state.model
        return CellModelCard(**{**model.card, "file": model.file, "sha256": model.sha256,
                                "rules_sha256": model.rules_sha256},
                             provider=model.provider, variant=model.variant, apl_head=model.info["apl_head"])

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health()

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(request: Request):
        state = request.app.state
        ready = bool(getattr(state, "ready", False)) and getattr(state, "batcher", None) is not None \
            and state.batcher.running
        body = Readiness(ready=ready, detail="model loaded and warmed up" if ready else "not ready",
                         checks={"model": state.model.info if ready else None,
                                 "apl_head": (state.model.info["apl_head"] is not None) if ready else None,
                                 "queued_images": state.batcher.queued if ready else None,
                                 "admitted_images": state.admitted_images if ready else None})
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        # the queue depth is not set here: the batcher keeps it current in every worker process
        return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
