"""What every gateway router shares: API-key checks, patient-id checks, report rendering
(JSON, FHIR, HL7 v2), the audit line, and the answers for an unavailable store or service."""

from __future__ import annotations

import asyncio
import math
import re
from contextlib import contextmanager

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from gateway.clients import UpstreamError, UpstreamRejected
from gateway.fhir import FHIR_MEDIA_TYPE, to_diagnostic_report
from gateway.hl7 import HL7_MEDIA_TYPE, to_oru_r01
from gateway.security import ApiKey
from gateway.store.repository import StoreUnavailable
from shared.problems import ProblemError
from shared.schemas import PATIENT_ID_PATTERN, PatientReport, Problem

RETRY_AFTER_S = 2  # told to clients when a service behind is down or sheds load (503)
PATIENT_ID = re.compile(PATIENT_ID_PATTERN)
REPORT_ID = re.compile(r"^[0-9a-f]{32}$")
PROBLEMS = {s: {"model": Problem, "content": {"application/problem+json": {}}}
            for s in (401, 403, 404, 409, 413, 415, 422, 429, 502, 503, 504)}
REPORT_RESPONSES = {
    200: {"content": {FHIR_MEDIA_TYPE: {"schema": {"type": "object"}}, HL7_MEDIA_TYPE: {"schema": {"type": "string"}}},
          "description": "the report; a FHIR R4 DiagnosticReport with Accept: application/fhir+json; an HL7 v2.5.1 "
                         "ORU^R01 message with Accept: application/hl7-v2"},
    **{s: PROBLEMS[s] for s in (401, 403, 404, 413, 415, 422, 429, 502, 503, 504)},
}


def check_patient_id(patient_id: str) -> None:
    if not PATIENT_ID.fullmatch(patient_id):
        raise ProblemError(422, "invalid patient id: 1-64 characters, letters, digits, '.', '_' or '-', "
                                "starting with a letter or digit")


def check_report_id(report_id: str) -> None:
    if not REPORT_ID.fullmatch(report_id):
        raise ProblemError(404, f"no report {report_id[:64]!r}")


def _presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return request.headers.get("x-api-key")


def authorize(request: Request, scope: str | None) -> ApiKey:
    """The caller's key; 401 without a valid key, 403 without ``scope`` (None: any valid key will do),
    429 over its rate."""
    state = request.app.state
    key = state.keys.authenticate(_presented_key(request))
    if key is None:
        raise ProblemError(401, "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
                           headers={"WWW-Authenticate": 'Bearer realm="aml-classifier"'})
    request.state.key_id = key.key_id
    if scope is not None and scope not in key.scopes:
        raise ProblemError(403, f"this key may not {scope} (its scopes: {', '.join(sorted(key.scopes))})")
    wait_s = state.rate_limiter.acquire(key.key_id)
    if wait_s > 0:
        raise ProblemError(429, "rate limit exceeded for this key", headers={"Retry-After": str(math.ceil(wait_s))})
    return key


def render(request: Request, report: PatientReport, include_cells: bool) -> Response:
    accept = request.headers.get("accept", "")
    if FHIR_MEDIA_TYPE in accept:
        return JSONResponse(to_diagnostic_report(report), media_type=FHIR_MEDIA_TYPE)
    if HL7_MEDIA_TYPE in accept:
        return Response(to_oru_r01(report), media_type=f"{HL7_MEDIA_TYPE}; charset=utf-8")
    body = report.model_dump(exclude={"cells"} if not include_cells else None)
    return JSONResponse(body)


@contextmanager
def store_errors():
    """A database that cannot be reached answers 503 (problem+json, Retry-After), never 500."""
    try:
        yield
    except StoreUnavailable as exc:
        raise ProblemError(503, f"the report database is unavailable ({exc}); nothing was stored, try again "
                                "shortly", headers={"Retry-After": str(RETRY_AFTER_S)},
                           title="Report Store Unavailable") from None


@contextmanager
def upstream_errors():
    """A service behind the gateway that fails answers its status (503 with Retry-After); one that refuses, 502."""
    try:
        yield
    except UpstreamError as exc:
        retry = {"Retry-After": str(exc.retry_after_s or RETRY_AFTER_S)} if exc.status == 503 else None
        raise ProblemError(exc.status, exc.detail, headers=retry) from None
    except UpstreamRejected as exc:
        raise ProblemError(502, f"a service behind the gateway refused the request: {exc.detail}") from None


def failure_status(exc: BaseException, status: int, cancelled: int | None = None) -> int:
    """The status the audit line of a request ended by ``exc`` records: a ``ProblemError``'s own, 500 for any
    other exception (the answer it becomes), ``cancelled`` (when given) for a request whose client went away,
    else ``status`` as it was."""
    if isinstance(exc, ProblemError):
        return exc.status
    if isinstance(exc, asyncio.CancelledError):
        return status if cancelled is None else cancelled
    return 500 if isinstance(exc, Exception) else status


def audit(request: Request, endpoint: str, outcome: int, patient_id: str | None,
          report: PatientReport | None = None, **fields) -> None:
    """This request's audit line; ``report`` (when there is one) gives its prediction, models, id and status."""
    if report is not None:
        fields = {"prediction": report.prediction, "models": report.models.model_dump(),
                  "report_id": report.report_id, "status": report.status} | fields
    request.app.state.audit.record(request_id=request.state.request_id, key_id=getattr(request.state, "key_id", None),
                                   patient_id=patient_id, endpoint=endpoint, outcome=outcome, **fields)
