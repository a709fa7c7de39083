"""Problem-details (RFC 9457) error responses shared by the services and the gateway."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.schemas import Problem

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("problems")


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem+json body."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None, title: str | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.title = title or HTTPStatus(status).phrase


def problem_response(status: int, detail: str, *, title: str | None = None, request_id: str | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(title=title or HTTPStatus(status).phrase, status=status, detail=detail, request_id=request_id)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None) or request.headers.get("x-request-id")


def problem_of(request: Request, exc: ProblemError) -> JSONResponse:
    """A ``ProblemError`` as its problem+json answer (what the handler for it gives)."""
    return problem_response(exc.status, exc.detail, title=exc.title, request_id=_request_id(request),
                            headers=exc.headers)


def validation_problem(request: Request, exc: RequestValidationError):
    """A request that FastAPI's validation refused, as a 422 problem+json naming each field's error."""
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
    return problem_response(422, "; ".join(parts) or "invalid request", request_id=_request_id(request))


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error (ours, HTTP, validation, unexpected) as problem+json."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError):
        return problem_of(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return problem_response(exc.status_code, str(exc.detail), request_id=_request_id(request),
                                headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return validation_problem(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        """A bug or an unforeseen failure: a 500 problem+json naming the request id (the traceback goes to
        the log, never to the client)."""
        request_id = _request_id(request)
        log.error("unexpected %s in request %s", type(exc).__name__, request_id)
        return problem_response(500, f"internal error ({type(exc).__name__}); quote request id {request_id} "
                                     "when reporting it", request_id=request_id)
