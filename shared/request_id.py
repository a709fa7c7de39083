"""X-Request-ID: accepted when well-formed, created otherwise, stored on the request, echoed back.

A plain ASGI middleware (not ``@app.middleware("http")``, whose per-request cost showed in the
cell service's 1-image benchmark). New ids are version-4 UUIDs (32 hex digits) cut from random
bytes drawn 4 KiB at a time: ``os.urandom`` releases the GIL, and under load the event loop then
waited for the decode threads to hand it back, 1.4 ms per request (issue 12).
"""

from __future__ import annotations

import os
import re
import uuid

from fastapi import FastAPI

VALID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_POOL_IDS = 256


class _RandomIds:
    """``uuid.uuid4().hex`` from a pool of random bytes refilled by one ``os.urandom`` call per 256 ids.
    Only the event loop calls it (no lock needed)."""

    def __init__(self):
        self._pool = b""
        self._next = 0

    def __call__(self) -> str:
        if self._next >= len(self._pool):
            self._pool, self._next = os.urandom(16 * _POOL_IDS), 0
        chunk = self._pool[self._next:self._next + 16]
        self._next += 16
        return uuid.UUID(bytes=chunk, version=4).hex


new_request_id = _RandomIds()


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
        request_id = given if VALID.fullmatch(given) else new_request_id()
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
