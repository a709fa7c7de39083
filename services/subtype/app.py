"""The subtype HTTP API."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from services.subtype.apl import AplModel
from services.subtype.ensemble import SubtypeEnsemble
from services.subtype.predictor import NoLeukocytes, SubtypePredictor
from services.subtype.settings import SubtypeServiceSettings
from shared.body_limit import BodySizeLimitMiddleware
from shared.internal_auth import InternalTokenMiddleware
from shared.request_id import install_request_id
from shared.problems import ProblemError, install_problem_handlers
from shared.schemas import Health, Problem, Readiness, SubtypeModelCard, SubtypePrediction, SubtypeRequest

log = logging.getLogger("services.subtype")
ERRORS = {status: {"model": Problem, "content": {"application/problem+json": {}}} for status in (413, 422)}


class SubtypeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("subtype_requests", "Requests by endpoint and outcome", ["endpoint", "outcome"],
                                registry=self.registry)
        self.patients = Counter("subtype_patients", "Patients predicted by predicted class", ["prediction"],
                                registry=self.registry)
        self.apl = Counter("subtype_apl_assessments", "Patients with an APL assessment, by whether the alert fired",
                           ["alert"], registry=self.registry)
        self.latency = Histogram("subtype_inference_seconds", "Time to predict one request",
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1),
                                 registry=self.registry)


def create_app(settings: SubtypeServiceSettings | None = None) -> FastAPI:
    settings = settings or SubtypeServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.metrics = SubtypeMetrics()
        # refuses a tampered artifact; the APL model is optional (absent: answers carry no APL assessment)
        app.state.predictor = SubtypePredictor(SubtypeEnsemble(settings.model_dir), AplModel.load(settings.model_dir))
        app.state.predictor.predict_many([{"neutrophil": 60, "lymphocyte": 30, "monocyte": 10}])  # warm-up
        app.state.ready = True
        apl = app.state.predictor.apl
        log.info("subtype service ready: %s; APL model: %s", app.state.predictor.model_info,
                 apl.info if apl else "absent (no apl_card.json)")
        yield
        app.state.ready = False

    app = FastAPI(title="AML subtype", version="1.0.0", lifespan=lifespan,
                  description="AML vs control, then the genetic subtype, from one patient's cell counts.")
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(InternalTokenMiddleware, token=settings.internal_token)
    install_problem_handlers(app)
    install_request_id(app)

    def _predict(request: Request, endpoint: str, items: list[SubtypeRequest]) -> list[SubtypePrediction]:
        state = request.app.state
        started = time.perf_counter()
        try:
            answers = state.predictor.predict_requests(items)
        except NoLeukocytes as exc:
            state.metrics.requests.labels(endpoint, "invalid").inc()
            raise ProblemError(422, str(exc)) from None
        state.metrics.latency.observe(time.perf_counter() - started)
        state.metrics.requests.labels(endpoint, "ok").inc()
        for answer in answers:
            state.metrics.patients.labels(answer.prediction).inc()
            if answer.apl is not None:
                state.metrics.apl.labels("true" if answer.apl.alert else "false").inc()
        return answers

    @app.post("/v1/predict", response_model=SubtypePrediction, responses=ERRORS)
    def predict(request: Request, body: SubtypeRequest) -> SubtypePrediction:
        """One patient's counts -> AML probability, subtype probabilities and the prediction; with the cells'
        APL logits (`apl_cell_logits`, `apl_cell_head_sha256`) also the APL alert (`apl`)."""
        return _predict(request, "predict", [body])[0]

    @app.post("/v1/predict:batch", response_model=list[SubtypePrediction], responses=ERRORS)
    def predict_batch(request: Request, body: list[SubtypeRequest] = Body(...)) -> list[SubtypePrediction]:
        """Many patients at once (re-analysis); answers in request order."""
        if not body:
            raise ProblemError(422, "empty batch: send a JSON array of {\"counts\": {...}} objects")
        if len(body) > settings.max_batch_items:
            raise ProblemError(413, f"batch of {len(body)} items; at most {settings.max_batch_items}")
        return _predict(request, "batch", body)

    @app.get("/v1/model", response_model=SubtypeModelCard)
    def model_card(request: Request) -> SubtypeModelCard:
        """The ensemble's card; `apl`: the APL model's card (null when this service has no APL model)."""
        predictor = request.app.state.predictor
        apl = {**predictor.apl.card, "rules_sha256": predictor.apl.identity.rules_sha256} if predictor.apl else None
        return SubtypeModelCard(**predictor.ensemble.card, rules_sha256=predictor.ensemble.rules_sha256, apl=apl)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health()

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(request: Request):
        ready = bool(getattr(request.app.state, "ready", False))
        predictor = request.app.state.predictor if ready else None
        info = predictor.model_info.model_dump() if ready else None
        apl = predictor.apl.info if ready and predictor.apl else None
        body = Readiness(ready=ready, detail="models loaded and verified" if ready else "not ready",
                         checks={"model": info, "apl_model": apl, "apl": (apl is not None) if ready else None})
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
