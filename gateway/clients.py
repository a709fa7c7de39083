"""HTTP clients of the two services, with one retry and errors that say which service failed.

Each service may run as several replicas: ``CELL_URL``/``SUBTYPE_URL`` take one base URL or
several, comma-separated, and with ``UPSTREAM_RESOLVE_S`` > 0 every host name in them is resolved
to all its addresses again every that many seconds (a Kubernetes headless Service answers with its
ready pods). Each call goes to the replica with the fewest calls in flight from this gateway, ties
taken in turn, so a patient's chunks spread over the replicas; a replica that refuses a connection
is skipped for ``EJECT_S`` seconds and the call goes on at once to another one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import httpx

from gateway.http_answers import problem_detail, retry_after_s

log = logging.getLogger("gateway.clients")

EJECT_S = 5.0  # how long a replica that refused a connection is left out while others remain


class UpstreamError(Exception):
    """A service behind the gateway failed: ``status`` is what the gateway answers (502/503/504);
    ``retry_after_s``, where given, the wait a 503 announces (else the gateway's usual one)."""

    def __init__(self, status: int, detail: str, retry_after_s: int | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s


class UpstreamRejected(Exception):
    """A service refused the input itself (4xx): the caller's problem, passed on."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


RETRY_AFTER_CAP_S = 5.0  # at most this long for a busy service's Retry-After before the one retry


def _retry_wait_s(response: httpx.Response) -> float:
    """A 503's Retry-After in seconds (0 when absent or unreadable), capped at ``RETRY_AFTER_CAP_S``."""
    return min(retry_after_s(response) or 0.0, RETRY_AFTER_CAP_S)


def _json(name: str, response: httpx.Response) -> dict:
    """The body of a 200 answer as a JSON object; anything else is the service's fault (502)."""
    try:
        body = response.json()
    except ValueError:
        raise UpstreamError(502, f"{name} answered with a body that is not JSON") from None
    if not isinstance(body, dict):
        raise UpstreamError(502, f"{name} answered with JSON that is not an object")
    return body


def parse_base_urls(spec: str) -> list[str]:
    """``"http://a:8001, http://b:8001/"`` -> ``["http://a:8001", "http://b:8001"]`` (duplicates dropped)."""
    urls: list[str] = []
    for part in spec.split(","):
        url = part.strip().rstrip("/")
        if not url:
            continue
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"not an http(s) base URL: {url!r}")
        if url not in urls:
            urls.append(url)
    if not urls:
        raise ValueError("no base URL given")
    return urls


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Replicas:
    """The base URLs of one service's replicas and which one gets the next call."""

    def __init__(self, name: str, spec: str, resolve_s: float = 0.0):
        self.name = name
        self.configured = parse_base_urls(spec)
        self.resolve_s = resolve_s
        self._urls = list(self.configured)
        self._in_flight: dict[str, int] = {}
        self._down_until: dict[str, float] = {}
        self._turn = 0
        self._resolved_at = -math.inf
        self._lock = asyncio.Lock()

    @property
    def urls(self) -> list[str]:
        return list(self._urls)

    async def _resolve(self, base: str) -> list[str]:
        url = httpx.URL(base)
        if url.scheme != "http" or _is_ip(url.host):
            return [base]  # https keeps its host name: certificates name hosts, not pod addresses
        port = url.port or 80
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, OSError) as exc:
            log.warning("%s: cannot resolve %s (%s)", self.name, url.host, exc)
            return []
        addresses = sorted({info[4][0] for info in infos})
        return [str(url.copy_with(host=address)).rstrip("/") for address in addresses]

    async def refresh(self, force: bool = False) -> None:
        """Resolve the configured host names again when ``resolve_s`` has passed (or ``force``)."""
        if self.resolve_s <= 0 or (not force and time.monotonic() - self._resolved_at < self.resolve_s):
            return
        async with self._lock:
            if not force and time.monotonic() - self._resolved_at < self.resolve_s:
                return
            self._resolved_at = time.monotonic()
            found: list[str] = []
            for base in self.configured:
                found += [url for url in await self._resolve(base) if url not in found]
            if not found:
                return  # keep what we had; a name that never resolved fails as "unreachable"
            if found != self._urls:
                log.info("%s: %d replica(s): %s", self.name, len(found), ", ".join(found))
                self._urls = found

    def pick(self, tried: set[str] = frozenset()) -> str:
        """The replica for the next call: not yet tried by this call, not recently refusing, fewest
        calls in flight; ties go round in turn."""
        now = time.monotonic()
        fresh = [url for url in self._urls if url not in tried] or list(self._urls)
        candidates = [url for url in fresh if self._down_until.get(url, 0.0) <= now] or fresh
        least = min(self._in_flight.get(url, 0) for url in candidates)
        tied = [url for url in candidates if self._in_flight.get(url, 0) == least]
        self._turn += 1
        return tied[(self._turn - 1) % len(tied)]

    def has_untried(self, tried: set[str]) -> bool:
        now = time.monotonic()
        return any(url not in tried and self._down_until.get(url, 0.0) <= now for url in self._urls)

    def mark_down(self, url: str) -> None:
        self._down_until[url] = time.monotonic() + EJECT_S
        self._resolved_at = -math.inf  # the pod may be gone: ask DNS again on the next call

    @contextmanager
    def in_flight(self, url: str) -> Iterator[None]:
        self._in_flight[url] = self._in_flight.get(url, 0) + 1
        try:
            yield
        finally:
            self._in_flight[url] -= 1
            if not self._in_flight[url]:
                del self._in_flight[url]


async def _call(name: str, replicas: Replicas, send: Callable[[str], Awaitable[httpx.Response]], retries: int,
                backoff_s: float, request_id: str | None) -> httpx.Response:
    """``send(base_url)`` with ``retries`` retries on connection errors, timeouts and 503 (idempotent calls
    only), each retry on another replica where there is one; a refused connection moves on to an untried
    replica at once, without using up a retry (the request never reached the refusing one)."""
    attempt = 0
    tried: set[str] = set()
    while True:
        await replicas.refresh()
        url = replicas.pick(tried)
        tried.add(url)
        refused, wait_s = False, 0.0
        try:
            with replicas.in_flight(url):
                response = await send(url)
        except httpx.ConnectError as exc:
            refused = True
            failure = UpstreamError(503, f"{name} is unreachable ({type(exc).__name__})")
        except httpx.ConnectTimeout:
            refused = True
            failure = UpstreamError(504, f"{name} did not answer in time")
        except httpx.TimeoutException:
            failure = UpstreamError(504, f"{name} did not answer in time")
        except httpx.TransportError as exc:
            failure = UpstreamError(503, f"{name} is unreachable ({type(exc).__name__})")
        else:
            if response.status_code == 200:
                return response
            if response.status_code == 503:
                failure = UpstreamError(503, f"{name} is unavailable: {problem_detail(response)}")
                wait_s = _retry_wait_s(response)
            elif 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                raise UpstreamRejected(response.status_code, f"{name}: {problem_detail(response)}")
            else:
                failure = UpstreamError(502, f"{name} failed with HTTP {response.status_code}")
        if refused:
            replicas.mark_down(url)
            if replicas.has_untried(tried):
                log.warning("%s replica %s: %s; trying another (request %s)", name, url, failure.detail, request_id)
                continue
        if attempt >= retries:
            raise failure
        attempt += 1
        log.warning("retrying %s after: %s (request %s)", name, failure.detail, request_id)
        await asyncio.sleep(max(backoff_s * attempt, wait_s))


class _ServiceClient:
    name = "service"

    def __init__(self, base_url: str, timeout_s: float, backoff_s: float, internal_token: str | None = None,
                 max_connections: int = 32, resolve_s: float = 0.0):
        """``base_url``: one base URL or several, comma-separated; ``resolve_s`` > 0: resolve their host
        names to every address that often (one replica per address)."""
        headers = {"X-Internal-Token": internal_token} if internal_token else {}
        self.replicas = Replicas(self.name, base_url, resolve_s)
        # a transport of our own: httpx then takes no proxy from the environment (the services are internal; an
        # HTTP_PROXY meant for the hospital's outbound traffic must never receive patients' images and the internal
        # token, nor make the services unreachable), while SSL_CERT_FILE / SSL_CERT_DIR still name the CAs that
        # sign an https:// CELL_URL or SUBTYPE_URL
        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=max_connections))
        self._client = httpx.AsyncClient(timeout=timeout_s, headers=headers, transport=transport)
        self.backoff_s = backoff_s

    async def _ready_one(self, url: str) -> bool:
        try:
            return (await self._client.get(f"{url}/readyz", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    async def ready(self) -> bool:
        """True when at least one replica is ready."""
        await self.replicas.refresh()
        return any(await asyncio.gather(*(self._ready_one(url) for url in self.replicas.urls)))

    async def _get(self, path: str) -> httpx.Response:
        return await _call(self.name, self.replicas, lambda url: self._client.get(url + path), 0, 0, None)

    async def _post(self, path: str, request_id: str | None, **kwargs) -> httpx.Response:
        send = lambda url: self._client.post(url + path, headers=_request_headers(request_id), **kwargs)  # noqa: E731
        return await _call(self.name, self.replicas, send, 1, self.backoff_s, request_id)

    async def close(self) -> None:
        await self._client.aclose()


def _request_headers(request_id: str | None) -> dict[str, str]:
    return {"X-Request-ID": request_id} if request_id else {}


class CellServiceClient(_ServiceClient):
    name = "cell service"

    async def model(self) -> dict:
        return _json(self.name, await self._get("/v1/model"))

    async def classify(self, images: list[tuple[str, bytes]], request_id: str | None) -> dict:
        files = [("images", (name, data, "application/octet-stream")) for name, data in images]
        return _json(self.name, await self._post("/v1/classify", request_id, files=files))


class SubtypeServiceClient(_ServiceClient):
    name = "subtype service"

    async def model(self) -> dict:
        return _json(self.name, await self._get("/v1/model"))

    async def predict(self, body: dict, request_id: str | None) -> dict:
        """``body``: a SubtypeRequest (``{"counts": ...}``, optionally ``apl_cell_logits`` and
        ``apl_cell_head_sha256``)."""
        return _json(self.name, await self._post("/v1/predict", request_id, json=body))
