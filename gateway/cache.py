"""The gateway's cache: Redis when REDIS_URL is set, else in-process. Never a reason to fail.

A cache that is down answers like an empty one; ``available`` says so and the gateway
reports it in ``warnings`` and ``/readyz``. The Redis client reconnects by itself on the
next command once the server is back.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Protocol

log = logging.getLogger("gateway.cache")


class Cache(Protocol):
    kind: str
    available: bool

    async def get_many(self, keys: list[str]) -> list[Any | None]: ...
    async def set_many(self, items: dict[str, Any]) -> None: ...
    async def delete(self, keys: list[str], prefixes: list[str] = ()) -> int: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


class MemoryCache:
    """In-process cache with TTL (the embedded default for `make run`)."""

    kind = "memory"
    available = True

    def __init__(self, ttl_s: int, max_items: int = 200_000):
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._items: dict[str, tuple[float, str]] = {}

    async def get_many(self, keys: list[str]) -> list[Any | None]:
        now = time.monotonic()
        out = []
        for key in keys:
            item = self._items.get(key)
            out.append(json.loads(item[1]) if item and item[0] > now else None)
        return out

    async def set_many(self, items: dict[str, Any]) -> None:
        if len(self._items) + len(items) > self.max_items:
            now = time.monotonic()
            self._items = {k: v for k, v in self._items.items() if v[0] > now}
            while len(self._items) + len(items) > self.max_items and self._items:
                self._items.pop(next(iter(self._items)))
        expires = time.monotonic() + self.ttl_s
        for key, value in items.items():
            self._items[key] = (expires, json.dumps(value))

    async def delete(self, keys: list[str], prefixes: list[str] = ()) -> int:
        """Remove ``keys`` and every key starting with one of ``prefixes``; how many were there."""
        doomed = set(keys) | {k for k in self._items if any(k.startswith(p) for p in prefixes)}
        return sum(self._items.pop(k, None) is not None for k in doomed)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._items.clear()


class RedisCache:
    kind = "redis"

    def __init__(self, url: str, ttl_s: int, timeout_s: float):
        import redis.asyncio as redis

        self.ttl_s = ttl_s
        self.available = True
        self._client = redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                      decode_responses=True)

    def _down(self, exc: Exception) -> None:
        if self.available:
            log.warning("redis unavailable: %s", type(exc).__name__)
        self.available = False

    async def get_many(self, keys: list[str]) -> list[Any | None]:
        if not keys:
            return []
        try:
            values = await self._client.mget(keys)
        except Exception as exc:  # noqa: BLE001 - any cache failure means "not cached"
            self._down(exc)
            return [None] * len(keys)
        self.available = True
        return [json.loads(v) if v is not None else None for v in values]

    async def set_many(self, items: dict[str, Any]) -> None:
        if not items:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, json.dumps(value), ex=self.ttl_s)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self._down(exc)
            return
        self.available = True

    async def delete(self, keys: list[str], prefixes: list[str] = ()) -> int:
        """Remove ``keys`` and every key starting with one of ``prefixes`` (prefixes must hold no glob
        characters). Unlike reads, failures raise: an erasure must not pass silently."""
        doomed = set(keys)
        for prefix in prefixes:
            async for key in self._client.scan_iter(match=f"{prefix}*", count=1000):
                doomed.add(key)
        if not doomed:
            return 0
        doomed = sorted(doomed)
        return sum([await self._client.delete(*doomed[i: i + 500]) for i in range(0, len(doomed), 500)])

    async def ping(self) -> bool:
        try:
            await self._client.ping()
        except Exception as exc:  # noqa: BLE001
            self._down(exc)
            return False
        self.available = True
        return True

    async def close(self) -> None:
        await self._client.aclose()


def make_cache(redis_url: str | None, ttl_s: int, timeout_s: float) -> Cache:
    return RedisCache(redis_url, ttl_s, timeout_s) if redis_url else MemoryCache(ttl_s)
