"""The gateway HTTP API and the web page."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from gateway.audit import AuditLog
from gateway.cache import make_cache
from gateway.clients import CellServiceClient, SubtypeServiceClient, UpstreamError, UpstreamRejected
from gateway.fhir import FHIR_MEDIA_TYPE, to_diagnostic_report
from gateway.pipeline import PatientClassifier
from gateway.security import KeyStore, RateLimiter
from gateway.settings import GatewaySettings
from shared.body_limit import BodySizeLimitMiddleware
from shared.problems import ProblemError, install_problem_handlers
from shared.request_id import install_request_id
from shared.uploads import read_image_parts
from shared.schemas import PATIENT_ID_PATTERN, Health, PatientReport, Problem, Readiness

log = logging.getLogger("gateway")
RETRY_AFTER_S = 2  # told to clients when a service behind is down or sheds load (503)
STATIC_DIR = Path(__file__).resolve().parent / "static"
PATIENT_ID = re.compile(PATIENT_ID_PATTERN)
MULTIPART_BODY = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["images"],
        "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}},
}
REPORT_RESPONSES = {
    200: {"content": {FHIR_MEDIA_TYPE: {"schema": {"type": "object"}}},
          "description": "the report; a FHIR R4 DiagnosticReport with Accept: application/fhir+json"},
    **{s: {"model": Problem, "content": {"application/problem+json": {}}} for s in (404, 413, 415, 422, 502, 503, 504)},
}


class GatewayMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests", "Patient requests by outcome", ["endpoint", "status"],
                                registry=self.registry)
        self.images = Counter("gateway_images", "Images received", registry=self.registry)
        self.cache_hits = Counter("gateway_report_cache_hits", "Reports served from the cache", registry=self.registry)
        self.latency = Histogram("gateway_classify_seconds", "Time to answer a classify request",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=self.registry)


def _check_patient_id(patient_id: str) -> None:
    if not PATIENT_ID.fullmatch(patient_id):
        raise ProblemError(422, "invalid patient id: 1-64 characters, letters, digits, '.', '_' or '-', "
                                "starting with a letter or digit")


def _presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return request.headers.get("x-api-key")


def authorize(request: Request, scope: str) -> str:
    """The caller's key id; 401 without a valid key, 403 without ``scope``, 429 over its rate."""
    state = request.app.state
    key = state.keys.authenticate(_presented_key(request))
    if key is None:
        raise ProblemError(401, "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
                           headers={"WWW-Authenticate": 'Bearer realm="aml-classifier"'})
    request.state.key_id = key.key_id
    if scope not in key.scopes:
        raise ProblemError(403, f"this key may not {scope} (its scopes: {', '.join(sorted(key.scopes))})")
    wait_s = state.rate_limiter.acquire(key.key_id)
    if wait_s > 0:
        raise ProblemError(429, "rate limit exceeded for this key", headers={"Retry-After": str(math.ceil(wait_s))})
    return key.key_id


def _wants_fhir(request: Request) -> bool:
    return FHIR_MEDIA_TYPE in request.headers.get("accept", "")


def _render(request: Request, report: PatientReport, include_cells: bool) -> Response:
    if _wants_fhir(request):
        return JSONResponse(to_diagnostic_report(report), media_type=FHIR_MEDIA_TYPE)
    body = report.model_dump(exclude={"cells"} if not include_cells else None)
    return JSONResponse(body)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.metrics = GatewayMetrics()
        state.cache = make_cache(settings.redis_url, settings.cache_ttl_s, settings.redis_timeout_s)
        state.cells = CellServiceClient(settings.cell_url, settings.cell_timeout_s, settings.retry_backoff_s,
                                        settings.internal_token, resolve_s=settings.upstream_resolve_s)
        state.subtype = SubtypeServiceClient(settings.subtype_url, settings.subtype_timeout_s, settings.retry_backoff_s,
                                             settings.internal_token, resolve_s=settings.upstream_resolve_s)
        state.keys = KeyStore.from_config(settings.api_keys, settings.api_keys_file)
        if not len(state.keys):
            log.warning("no API keys configured: every protected call will be refused (401)")
        state.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        state.audit = AuditLog(settings.audit_log_path, settings.audit_hmac_key or secrets.token_hex(32))
        state.classifier = PatientClassifier(state.cache, state.cells, state.subtype,
                                             chunk_size=settings.chunk_size,
                                             chunk_concurrency=settings.chunk_concurrency)
        log.info("gateway up: cell %s, subtype %s, cache %s", settings.cell_url, settings.subtype_url,
                 state.cache.kind)
        yield
        await state.cells.close()
        await state.subtype.close()
        await state.cache.close()
        state.audit.close()

    app = FastAPI(title="AML classifier gateway", version="1.0.0", lifespan=lifespan,
                  description="Upload one patient's single-cell images; get cell counts, the leukocyte "
                              "differential and the AML subtype prediction. Decision support only.")
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    install_problem_handlers(app)

    install_request_id(app)

    @app.post("/patients/{patient_id}/classify", response_model=PatientReport, openapi_extra=MULTIPART_BODY,
              responses=REPORT_RESPONSES)
    async def classify_patient(request: Request, patient_id: str,
                               include: str | None = Query(None, description="'cells' adds the per-image labels")):
        """Classify one patient's images (parts named `images`) into a report."""
        state = request.app.state
        started = time.perf_counter()
        status, images, report = 200, None, None
        try:
            authorize(request, "classify")
            _check_patient_id(patient_id)
            images = await read_image_parts(request, settings.max_images, per="patient")
            state.metrics.images.inc(len(images))
            try:
                report = await state.classifier.classify(patient_id, images, request.state.request_id)
            except UpstreamError as exc:
                retry = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 503 else None
                raise ProblemError(exc.status, exc.detail, headers=retry) from None
            except UpstreamRejected as exc:
                raise ProblemError(502, f"a service behind the gateway refused the request: {exc.detail}") from None
            if report.cached:
                state.metrics.cache_hits.inc()
            return _render(request, report, include == "cells")
        except ProblemError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away; the work was cancelled, nothing was cached
            raise
        except Exception:
            status = 500
            raise
        finally:
            state.metrics.requests.labels("classify", str(status)).inc()
            state.metrics.latency.observe(time.perf_counter() - started)
            state.audit.record(request_id=request.state.request_id, key_id=getattr(request.state, "key_id", None),
                               patient_id=patient_id if PATIENT_ID.fullmatch(patient_id) else None,
                               endpoint="classify", outcome=status, n_images=len(images) if images else None,
                               prediction=report.prediction if report else None,
                               models=report.models.model_dump() if report else None)

    @app.get("/patients/{patient_id}/classification", response_model=PatientReport, responses=REPORT_RESPONSES)
    async def latest_classification(request: Request, patient_id: str,
                                    include: str | None = Query(None, description="'cells' adds per-image labels")):
        """The latest report for this patient."""
        status, report = 200, None
        try:
            authorize(request, "read")
            _check_patient_id(patient_id)
            report = await request.app.state.classifier.latest(patient_id)
            if report is None:
                raise ProblemError(404, f"no classification for patient {patient_id} (or it has expired)")
            return _render(request, report, include == "cells")
        except ProblemError as exc:
            status = exc.status
            raise
        finally:
            request.app.state.audit.record(
                request_id=request.state.request_id, key_id=getattr(request.state, "key_id", None),
                patient_id=patient_id if PATIENT_ID.fullmatch(patient_id) else None, endpoint="read",
                outcome=status, prediction=report.prediction if report else None,
                models=report.models.model_dump() if report else None)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health()

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(request: Request):
        state = request.app.state
        checks = {"cell": await state.cells.ready(), "subtype": await state.subtype.ready(),
                  "cache": {"kind": state.cache.kind, "available": await state.cache.ping()}}
        ready = checks["cell"] and checks["subtype"]
        detail = "ready" if ready else "a service behind the gateway is not ready"
        if not checks["cache"]["available"]:
            detail += "; cache unavailable (answers are not cached)"
        return JSONResponse(Readiness(ready=ready, detail=detail, checks=checks).model_dump(),
                            status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        authorize(request, "read")
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
