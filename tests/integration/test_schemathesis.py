"""Schemathesis against each OpenAPI schema (bounded examples, loopback only): no 5xx, and
responses match the schemas."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.keys import CLASSIFY_KEY
from tests.helpers.processes import start_gateway

pytestmark = pytest.mark.integration
ST = Path(sys.executable).parent / "st"


def run_schemathesis(workdir: Path, base_url: str, *headers: str) -> subprocess.CompletedProcess:
    """``st run`` in ``workdir`` (a test's temporary directory): what it writes there (.schemathesis/,
    hypothesis' .hypothesis/) stays out of the repository."""
    if not ST.exists() and shutil.which("st") is None:
        pytest.fail("schemathesis is not installed (make setup installs it)")
    command = [str(ST if ST.exists() else "st"), "run", f"{base_url}/openapi.json",
               "--checks", "not_a_server_error,response_schema_conformance",
               "--max-examples", "15", "--phases", "examples,fuzzing", "--request-timeout", "60",
               "--generation-deterministic", "--no-color"]
    for header in headers:
        command += ["-H", header]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)


def test_subtype_schema(tmp_path, subtype_service):
    result = run_schemathesis(tmp_path, subtype_service.url)
    assert result.returncode == 0, result.stdout[-4000:]


def test_cell_schema(tmp_path, cell_service):
    result = run_schemathesis(tmp_path, cell_service.url)
    assert result.returncode == 0, result.stdout[-4000:]


def test_gateway_schema(tmp_path, cell_service, subtype_service):
    gateway = start_gateway(tmp_path, cell_service.url, subtype_service.url,
                            RATE_LIMIT_PER_MINUTE="100000", RATE_LIMIT_BURST="10000")
    try:
        result = run_schemathesis(tmp_path, gateway.url, f"X-API-Key: {CLASSIFY_KEY}")
        assert result.returncode == 0, result.stdout[-4000:]
    finally:
        gateway.stop()
