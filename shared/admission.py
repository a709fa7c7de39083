"""Bytes of request bodies a service holds at once, counted before anything is read.

A request is counted by its ``Content-Length`` (``declared_length``: a body without one counts as the
body limit). One that does not fit beside the bytes already held is refused at once, before its body is
read, with the exception the service's ``refusal`` makes (a 503 with ``Retry-After``); a service holding
nothing takes any one request its body limit allows. The gateway holds an upload from reading to answer
(``GATEWAY_MAX_UPLOADS_BYTES``), the cell service while reading it (``CELL_MAX_READING_BYTES``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class BytesInFlight:
    def __init__(self, max_bytes: int, refusal: Callable[[int, int], Exception]):
        """``refusal(held, max_bytes)``: the exception for a request that does not fit."""
        self.max_bytes = max_bytes
        self.refusal = refusal
        self.held = 0

    @contextmanager
    def hold(self, declared_bytes: int) -> Iterator[None]:
        """Hold ``declared_bytes`` for the duration of the block, or raise the refusal at once when they do not fit."""
        if self.held and self.held + declared_bytes > self.max_bytes:
            raise self.refusal(self.held, self.max_bytes)
        self.held += declared_bytes
        try:
            yield
        finally:
            self.held -= declared_bytes


def declared_length(headers, body_limit: int) -> int:
    """A request's ``Content-Length``, or ``body_limit`` when it has none (or an unreadable one)."""
    length = headers.get("content-length", "")
    return int(length) if length.isdigit() else body_limit
