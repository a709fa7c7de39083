"""HTTP clients of the two services, with one retry and errors that say which service failed."""

from __future__ import annotations

import asyncio
import logging

import httpx

log = logging.getLogger("gateway.clients")


class UpstreamError(Exception):
    """A service behind the gateway failed: ``status`` is what the gateway answers (502/503/504)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class UpstreamRejected(Exception):
    """A service refused the input itself (4xx): the caller's problem, passed on."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text[:200]))
    except ValueError:
        return response.text[:200]


async def _call(name: str, send, retries: int, backoff_s: float, request_id: str | None) -> httpx.Response:
    """``send()`` with ``retries`` retries on connection errors, timeouts and 503 (idempotent calls only)."""
    attempt = 0
    while True:
        try:
            response = await send()
        except httpx.TimeoutException:
            failure = UpstreamError(504, f"{name} did not answer in time")
        except httpx.TransportError as exc:
            failure = UpstreamError(503, f"{name} is unreachable ({type(exc).__name__})")
        else:
            if response.status_code == 200:
                return response
            if response.status_code == 503:
                failure = UpstreamError(503, f"{name} is unavailable: {_detail(response)}")
            elif 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                raise UpstreamRejected(response.status_code, f"{name}: {_detail(response)}")
            else:
                failure = UpstreamError(502, f"{name} failed with HTTP {response.status_code}")
        if attempt >= retries:
            raise failure
        attempt += 1
        log.warning("retrying %s after: %s (request %s)", name, failure.detail, request_id)
        await asyncio.sleep(backoff_s * attempt)


class _ServiceClient:
    def __init__(self, base_url: str, timeout_s: float, backoff_s: float, internal_token: str | None = None,
                 max_connections: int = 32):
        headers = {"X-Internal-Token": internal_token} if internal_token else {}
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, headers=headers,
                                         limits=httpx.Limits(max_connections=max_connections))
        self.backoff_s = backoff_s

    async def ready(self) -> bool:
        try:
            return (await self._client.get("/readyz", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    async def close(self) -> None:
        await self._client.aclose()


def _request_headers(request_id: str | None) -> dict[str, str]:
    return {"X-Request-ID": request_id} if request_id else {}


class CellServiceClient(_ServiceClient):
    async def model(self) -> dict:
        response = await _call("cell service", lambda: self._client.get("/v1/model"), 0, 0, None)
        return response.json()

    async def classify(self, images: list[tuple[str, bytes]], request_id: str | None) -> dict:
        files = [("images", (name, data, "application/octet-stream")) for name, data in images]
        send = lambda: self._client.post("/v1/classify", files=files, headers=_request_headers(request_id))  # noqa: E731
        return (await _call("cell service", send, 1, self.backoff_s, request_id)).json()


class SubtypeServiceClient(_ServiceClient):
    async def model(self) -> dict:
        response = await _call("subtype service", lambda: self._client.get("/v1/model"), 0, 0, None)
        return response.json()

    async def predict(self, counts: dict[str, int], request_id: str | None) -> dict:
        send = lambda: self._client.post("/v1/predict", json={"counts": counts},  # noqa: E731
                                         headers=_request_headers(request_id))
        return (await _call("subtype service", send, 1, self.backoff_s, request_id)).json()
