"""How many bytes of patient uploads the gateway holds at once, from reading a body to answering it.

Every image of a request stays in memory until its report is made (hashing, chunks to the cell service,
thumbnails), and a body may be up to ``GATEWAY_MAX_BODY_BYTES``: without a bound, a few large uploads at
once could exhaust the gateway's memory and lose every request in flight. A request is counted by its
``Content-Length`` (a body without one counts as the body limit) before anything is read; one that does
not fit beside those held gets a fast 503 with ``Retry-After``. A gateway holding nothing takes any one
request its body limit allows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared.problems import ProblemError

RETRY_AFTER_S = 5


class UploadBudget:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.held = 0

    @contextmanager
    def hold(self, declared_bytes: int) -> Iterator[None]:
        """Hold ``declared_bytes`` for the duration of the block, or raise 503 at once when they do not fit."""
        if self.held and self.held + declared_bytes > self.max_bytes:
            raise ProblemError(503, f"the gateway is holding {self.held} bytes of other uploads (limit "
                                    f"{self.max_bytes}): retry in {RETRY_AFTER_S} s",
                               headers={"Retry-After": str(RETRY_AFTER_S)})
        self.held += declared_bytes
        try:
            yield
        finally:
            self.held -= declared_bytes


def declared_length(headers, body_limit: int) -> int:
    """A request's ``Content-Length``, or ``body_limit`` when it has none (or an unreadable one)."""
    length = headers.get("content-length", "")
    return int(length) if length.isdigit() else body_limit
