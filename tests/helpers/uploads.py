"""A patient's images posted to a running gateway, as the page and the CLI post them."""

from __future__ import annotations

import httpx

from tests.helpers.keys import AUTH


def post_patient(url: str, patient: str, files: list[tuple[str, bytes]], headers: dict | None = None,
                 **kwargs) -> httpx.Response:
    """``POST /patients/{patient}/classify`` with ``files`` as (name, bytes), the classify key's auth."""
    parts = [("images", (name, data, "image/jpeg")) for name, data in files]
    return httpx.post(f"{url}/patients/{patient}/classify", files=parts, timeout=120,
                      headers={**AUTH, **(headers or {})}, **kwargs)


def classified(url: str, patient: str, files: list[tuple[str, bytes]], **kwargs) -> dict:
    """The report of a classification that must succeed (the answer's text in the failure)."""
    response = post_patient(url, patient, files, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()
