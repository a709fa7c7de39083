"""X-Request-ID: accepted when well-formed, created otherwise, stored on the request, echoed back.

A plain ASGI middleware (not ``@app.middleware("http")``, whose per-request cost showed in the
cell service's 1-image benchmark).
"""

from __future__ import annotations

import re
import uuid

from fastapi import FastAPI

VALID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestIdMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = given if VALID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                message = {**message, "headers": headers + [(b"x-request-id", request_id.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def install_request_id(app: FastAPI) -> None:
    """Outermost of the app's middlewares, so that every answer (errors included) carries the id."""
    app.add_middleware(RequestIdMiddleware)
