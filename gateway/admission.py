"""How many bytes of patient uploads the gateway holds at once, from reading a body to answering it.

Every image of a request stays in memory until its report is made (hashing, chunks to the cell service,
thumbnails), and a body may be up to ``GATEWAY_MAX_BODY_BYTES``: without a bound, a few large uploads at
once could exhaust the gateway's memory and lose every request in flight. ``shared.admission`` counts a
request by its ``Content-Length`` before anything is read; one that does not fit beside those held gets a
fast 503 with ``Retry-After``; a gateway holding nothing takes any one request its body limit allows.
"""

from __future__ import annotations

from shared.admission import BytesInFlight, declared_length
from shared.problems import ProblemError

__all__ = ["RETRY_AFTER_S", "UploadBudget", "declared_length"]

RETRY_AFTER_S = 5


def _uploads_full(held: int, max_bytes: int) -> ProblemError:
    return ProblemError(503, f"the gateway is holding {held} bytes of other uploads (limit {max_bytes}): retry in "
                             f"{RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})


class UploadBudget(BytesInFlight):
    def __init__(self, max_bytes: int):
        super().__init__(max_bytes, _uploads_full)
