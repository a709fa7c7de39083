"""The gateway's clients spread calls over a service's replicas and skip one that refuses connections."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from gateway.clients import CellServiceClient, Replicas, UpstreamError, parse_base_urls


def test_base_urls_one_or_several():
    assert parse_base_urls("http://127.0.0.1:8001/") == ["http://127.0.0.1:8001"]
    assert parse_base_urls(" http://a:8001, http://b:8001/,http://a:8001 ,") == ["http://a:8001", "http://b:8001"]
    for bad in ("", " , ", "a:8001", "ftp://a"):
        with pytest.raises(ValueError):
            parse_base_urls(bad)


def test_pick_takes_turns_and_prefers_the_least_busy():
    replicas = Replicas("cell service", "http://a:1,http://b:1,http://c:1")
    assert [replicas.pick() for _ in range(6)] == ["http://a:1", "http://b:1", "http://c:1"] * 2
    with replicas.in_flight("http://a:1"), replicas.in_flight("http://b:1"):
        assert replicas.pick() == "http://c:1"
        with replicas.in_flight("http://c:1"), replicas.in_flight("http://c:1"):
            assert replicas.pick() in ("http://a:1", "http://b:1")
    replicas.mark_down("http://b:1")
    assert "http://b:1" not in {replicas.pick() for _ in range(6)}
    assert replicas.pick(tried={"http://a:1", "http://c:1"}) == "http://b:1", "a down replica beats none"


def test_resolving_a_name_gives_one_replica_per_address():
    async def main():
        replicas = Replicas("cell service", "http://localhost:8001,http://127.0.0.2:9", resolve_s=30)
        await replicas.refresh()
        return replicas.urls

    urls = asyncio.run(main())
    assert "http://127.0.0.1:8001" in urls and "http://127.0.0.2:9" in urls
    assert all("localhost" not in url for url in urls)


def test_resolving_off_keeps_names():
    async def main():
        replicas = Replicas("cell service", "http://localhost:8001", resolve_s=0)
        await replicas.refresh()
        return replicas.urls

    assert asyncio.run(main()) == ["http://localhost:8001"]


def _client_with(handler, urls: str) -> CellServiceClient:
    client = CellServiceClient(urls, timeout_s=5, backoff_s=0)
    client._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return client


def _answer(request: httpx.Request) -> httpx.Response:
    body = {"model": {"sha256": "x"}, "results": [{"label": "neutrophil"}]}
    return httpx.Response(200, content=json.dumps(body), headers={"content-type": "application/json"})


def test_chunks_alternate_and_a_refusing_replica_is_skipped():
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "down":
            raise httpx.ConnectError("connection refused", request=request)
        return _answer(request)

    async def main():
        client = _client_with(handler, "http://up1:8001,http://up2:8001")
        await asyncio.gather(*(client.classify([("a.jpg", b"x")], "r") for _ in range(4)))
        both = list(seen)
        seen.clear()
        client = _client_with(handler, "http://down:8001,http://up1:8001")
        for _ in range(4):
            await client.classify([("a.jpg", b"x")], "r")
        await client.close()
        return both

    both = asyncio.run(main())
    assert sorted(both) == ["up1", "up1", "up2", "up2"]
    assert seen == ["down", "up1", "up1", "up1", "up1"], "refused once, then left out"


def test_every_replica_refusing_is_503():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def main():
        client = _client_with(handler, "http://a:8001,http://b:8001")
        with pytest.raises(UpstreamError) as failure:
            await client.classify([("a.jpg", b"x")], "r")
        assert failure.value.status == 503
        assert not await client.ready()

    asyncio.run(main())


@pytest.mark.parametrize("body", [b"<html>proxy error</html>", b"[1, 2]"])
def test_an_answer_that_is_not_a_json_object_is_502(body):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/html"})

    async def main():
        client = _client_with(handler, "http://a:8001")
        with pytest.raises(UpstreamError) as failure:
            await client.classify([("a.jpg", b"x")], "r")
        assert failure.value.status == 502 and "cell service" in failure.value.detail
        with pytest.raises(UpstreamError):
            await client.model()
        await client.close()

    asyncio.run(main())


def test_a_busy_service_s_retry_after_is_honoured_within_a_cap(monkeypatch):
    import gateway.clients as clients

    waits: list[float] = []

    async def no_sleep(seconds):
        waits.append(seconds)

    monkeypatch.setattr(clients.asyncio, "sleep", no_sleep)
    answers = iter([httpx.Response(503, json={"detail": "queue full"}, headers={"Retry-After": "2"}), None,
                    httpx.Response(503, json={"detail": "queue full"}, headers={"Retry-After": "3600"}), None])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers) or _answer(request)

    async def main():
        client = _client_with(handler, "http://a:8001")
        await client.classify([("a.jpg", b"x")], "r")
        await client.classify([("a.jpg", b"x")], "r")
        await client.close()

    asyncio.run(main())
    assert waits == [2.0, clients.RETRY_AFTER_CAP_S]
