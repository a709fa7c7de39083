"""X-Request-ID: accepted when well-formed, created otherwise, stored on the request, echoed back."""

from __future__ import annotations

import re
import uuid

from fastapi import FastAPI, Request

VALID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def install_request_id(app: FastAPI) -> None:
    @app.middleware("http")
    async def request_id(request: Request, call_next):
        given = request.headers.get("x-request-id", "")
        request.state.request_id = given if VALID.fullmatch(given) else uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        return response
