"""The gateway HTTP API and the web page."""

from __future__ import annotations

import logging
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from gateway.admission import UploadBudget, declared_length
from gateway.audit import AuditLog
from gateway.cache import make_cache
from gateway.clients import CellServiceClient, SubtypeServiceClient
from gateway.pipeline import PatientClassifier
from gateway.routers import access, patients, reports
from gateway.routers.reports import audit_invalid_review
from gateway.routers.common import (PATIENT_ID, REPORT_RESPONSES, audit, authorize, check_patient_id,
                                    failure_status, render, store_errors, upstream_errors)
from gateway.security import KeyStore, RateLimiter
from gateway.settings import GatewaySettings
from gateway.store.database import check_schema, make_engine, migrate
from gateway.store.repository import ReportStore
from shared.body_limit import BodySizeLimitMiddleware
from shared.problems import ProblemError, install_problem_handlers, problem_of, validation_problem
from shared.request_id import install_request_id
from shared.uploads import read_image_parts
from shared.schemas import Health, PatientReport, Readiness

log = logging.getLogger("gateway")
STATIC_DIR = Path(__file__).resolve().parent / "static"
MULTIPART_BODY = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["images"],
        "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}},
}
class GatewayMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests", "Patient requests by outcome", ["endpoint", "status"],
                                registry=self.registry)
        self.images = Counter("gateway_images", "Images received", registry=self.registry)
        self.cache_hits = Counter("gateway_report_cache_hits", "Repeated uploads answered with their stored report",
                                  registry=self.registry)
        self.latency = Histogram("gateway_classify_seconds", "Time to answer a classify request",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=self.registry)


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
        state.review_requires_personal_key = settings.review_requires_personal_key
        state.uploads = UploadBudget(settings.max_uploads_bytes)
        state.audit = AuditLog(settings.audit_log_path, settings.audit_hmac_key or secrets.token_hex(32))
        engine = make_engine(settings)
        if settings.migrate_on_start:
            await migrate(engine, settings.database_schema)
        else:
            await check_schema(engine)
        state.store = ReportStore(engine)
        state.classifier = PatientClassifier(state.cache, state.cells, state.subtype,
                                             chunk_size=settings.chunk_size,
                                             chunk_concurrency=settings.chunk_concurrency,
                                             chunk_max_bytes=settings.chunk_max_bytes, store=state.store)
        log.info("gateway up: cell %s, subtype %s, cache %s, report store %s", settings.cell_url,
                 settings.subtype_url, state.cache.kind, engine.dialect.name)
        yield
        await state.store.close()
        await state.cells.close()
        await state.subtype.close()
        await state.cache.close()
        state.audit.close()

    app = FastAPI(title="AML classifier gateway", version="1.0.0", lifespan=lifespan,
                  description="Upload one patient's single-cell images; get cell counts, the leukocyte "
                              "differential and the AML subtype prediction. Decision support only.")
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    install_problem_handlers(app)

    @app.exception_handler(RequestValidationError)
    async def _audited_validation(request: Request, exc: RequestValidationError):
        """As every service answers a refused body (422); a review's key comes first, and its outcome is audited."""
        refused = audit_invalid_review(request)
        return problem_of(request, refused) if refused is not None else validation_problem(request, exc)

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
            check_patient_id(patient_id)
            with state.uploads.hold(declared_length(request.headers, settings.max_body_bytes)):
                images = await read_image_parts(request, settings.max_images, per="patient",
                                                max_image_bytes=settings.max_image_bytes)
                state.metrics.images.inc(len(images))
                with upstream_errors(), store_errors():
                    report = await state.classifier.classify(patient_id, images, request.state.request_id)
            if report.cached:
                state.metrics.cache_hits.inc()
            return render(request, report, include == "cells")
        except BaseException as exc:  # 499: the client went away; the work was cancelled, nothing was stored
            status = failure_status(exc, status, cancelled=499)
            raise
        finally:
            state.metrics.requests.labels("classify", str(status)).inc()
            state.metrics.latency.observe(time.perf_counter() - started)
            audit(request, "classify", status, patient_id if PATIENT_ID.fullmatch(patient_id) else None, report,
                  n_images=len(images) if images else None)

    @app.get("/patients/{patient_id}/classification", response_model=PatientReport, responses=REPORT_RESPONSES)
    async def latest_classification(request: Request, patient_id: str,
                                    include: str | None = Query(None, description="'cells' adds per-image labels")):
        """The latest report version for this patient (GET /patients/{id}/reports lists them all)."""
        status, report = 200, None
        try:
            authorize(request, "read")
            check_patient_id(patient_id)
            with store_errors():
                report = await request.app.state.classifier.latest(patient_id)
            if report is None:
                raise ProblemError(404, f"no classification for patient {patient_id}")
            return render(request, report, include == "cells")
        except BaseException as exc:  # audited as the status it ends in
            status = failure_status(exc, status)
            raise
        finally:
            audit(request, "read", status, patient_id if PATIENT_ID.fullmatch(patient_id) else None, report)

    app.include_router(reports.router)
    app.include_router(access.router)
    app.include_router(patients.router)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health()

    async def _apl_deployed(classifier: PatientClassifier) -> dict:
        """Whether the APL alert's two parts run behind the gateway (optional: readiness does not need them)."""
        try:
            models = await classifier.models()
        except Exception:  # a service down is reported by its own check above
            return {"cell_head": None, "patient_model": None}
        return {"cell_head": models.get("apl_cell_head") is not None,
                "patient_model": models.get("apl_patient") is not None}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(request: Request):
        state = request.app.state
        checks = {"cell": await state.cells.ready(), "subtype": await state.subtype.ready(),
                  "cache": {"kind": state.cache.kind, "available": await state.cache.ping()},
                  "database": {"kind": state.store.kind, "available": await state.store.ping()}}
        checks["apl"] = await _apl_deployed(state.classifier)
        ready = checks["cell"] and checks["subtype"] and checks["database"]["available"]
        detail = "ready" if ready else ("a service behind the gateway is not ready" if checks["database"]["available"]
                                        else "the report database is unavailable")
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
