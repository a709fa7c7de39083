"""Reading another HTTP service's answer, for the gateway's calls to its services and aml-classify's calls to the
gateway alike: the problem's detail, and how long Retry-After asks to wait."""

from __future__ import annotations

import email.utils
from datetime import datetime, timezone

import httpx


def problem_detail(response: httpx.Response) -> str:
    """A problem+json answer's ``detail``, else the start of the body."""
    try:
        return str(response.json().get("detail", response.text[:200]))
    except (ValueError, AttributeError):
        return response.text[:200]


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds (a number or an HTTP date, never below 0); None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)
