"""aml-classify's calls to the gateway: one patient posted, 429/503 and connection errors retried after
Retry-After or a growing backoff, any other answer final."""

from __future__ import annotations

import time
import urllib.parse
from typing import NamedTuple

import httpx

from gateway.http_answers import problem_detail, retry_after_s

RETRY_STATUSES = {429, 503}
RETRY_AFTER_CAP_S = 60.0
FIRST_BACKOFF_S = 2.0


class Result(NamedTuple):
    """One patient's outcome: a report, or an error text; ``unavailable`` when the gateway could not be
    reached or still refused (429/503) after every retry, which says nothing about the patient."""
    report: dict | None
    error: str | None
    unavailable: bool = False


def classify_path(patient_id: str) -> str:
    return f"/patients/{urllib.parse.quote(patient_id, safe='')}/classify"


def _retry_delay_s(response: httpx.Response | None, attempt: int) -> float:
    """The gateway's Retry-After when it gives one, else 2, 4, 8 ... s; at most a minute either way."""
    given = retry_after_s(response) if response is not None else None
    delay = given if given is not None else FIRST_BACKOFF_S * 2 ** attempt
    return min(delay, RETRY_AFTER_CAP_S)


def _wait(seconds: float) -> None:
    time.sleep(seconds)


def _answer(response: httpx.Response) -> Result:
    """A 200's report, or the gateway's error as the row's text."""
    if response.status_code != 200:
        return Result(None, f"HTTP {response.status_code}: {problem_detail(response)}")
    try:
        report = response.json()
    except ValueError:
        return Result(None, f"HTTP 200 but the answer is not JSON: {response.text[:100]!r}")
    if not isinstance(report, dict):
        return Result(None, "HTTP 200 but the answer is not a report (not a JSON object)")
    return Result(report, None)


def post(client: httpx.Client, patient_id: str, files: list, retries: int) -> Result:
    """Post one patient, retrying connection errors and 429/503 (a busy or restarting gateway) up to
    ``retries`` times; any other answer is final."""
    for attempt in range(retries + 1):
        response = None
        try:
            response = client.post(classify_path(patient_id), files=files)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
                return Result(None, f"the gateway did not answer in time ({type(exc).__name__}; see --timeout)")
            failure = Result(None, f"gateway unreachable: {type(exc).__name__} (after {attempt + 1} tries)", True)
        else:
            if response.status_code not in RETRY_STATUSES:
                return _answer(response)
            failure = Result(None, f"HTTP {response.status_code}: {problem_detail(response)} "
                                   f"(after {attempt + 1} tries)", True)
        if attempt < retries:
            _wait(_retry_delay_s(response, attempt))
    return failure
