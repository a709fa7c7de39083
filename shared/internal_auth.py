"""The internal token: services behind the gateway answer only requests that carry it.

Enabled when INTERNAL_TOKEN is set (compose sets it); /healthz and /readyz stay open for
health checks. The gateway sends it as ``X-Internal-Token``. Set but empty (or blank) is a
configuration error (``checked_token``: the settings of both services and of the gateway refuse it
at start, and the middleware refuses it whatever built it): it used to turn the check off as silently as leaving it
unset, so an ``INTERNAL_TOKEN=`` left unfilled in an env file exposed the service.
"""

from __future__ import annotations

import hmac
import json

from shared.problems import PROBLEM_MEDIA_TYPE

HEADER = "x-internal-token"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def checked_token(token: str | None) -> str | None:
    """``token`` unchanged (None: no internal auth); ``ValueError`` for an empty or blank one."""
    if token is not None and not token.strip():
        raise ValueError("INTERNAL_TOKEN is set but empty: set it to the gateway's token, or unset it to run "
                         "without internal auth")
    return token


class InternalTokenMiddleware:
    def __init__(self, app, token: str | None):
        self.app = app
        self.token = checked_token(token).encode() if token is not None else None

    async def __call__(self, scope, receive, send):
        if self.token is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        presented = dict(scope.get("headers", [])).get(HEADER.encode(), b"")
        if hmac.compare_digest(presented, self.token):
            return await self.app(scope, receive, send)
        body = json.dumps({"type": "about:blank", "title": "Unauthorized", "status": 401,
                           "detail": "internal service: requests must come through the gateway",
                           "request_id": None}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
