"""LOG_FORMAT over real processes: JSON lines, text lines, and text by default on a terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers.processes import REPO_ROOT, free_port, start_cell_service, start_gateway

pytestmark = pytest.mark.integration
NO_SERVICE = "http://127.0.0.1:9"


def _lines(process) -> list[str]:
    return [line for line in process.log_tail(200_000).splitlines() if line.strip()]


def _assert_text(lines: list[str], service: str) -> None:
    assert lines
    for line in lines:
        assert not line.lstrip().startswith("{"), line
    started = [line for line in lines if "Application startup complete" in line]
    assert started and " INFO " in started[0] and f" {service} " in started[0], started


def test_json_lines_when_asked(tmp_path):
    gateway = start_gateway(tmp_path, NO_SERVICE, NO_SERVICE, LOG_FORMAT="json")
    gateway.stop()
    entries = [json.loads(line) for line in _lines(gateway)]
    assert all({"time", "level", "service", "logger", "message"} <= set(e) for e in entries)
    assert {e["service"] for e in entries} == {"gateway"}
    assert any(e["message"].startswith("gateway up") for e in entries)


def test_text_lines_when_asked(tmp_path):
    gateway = start_gateway(tmp_path, NO_SERVICE, NO_SERVICE, LOG_FORMAT="text")
    cell = start_cell_service(tmp_path, LOG_FORMAT="text", CELL_DECODE_WORKERS="1", CELL_INFERENCE_THREADS="1",
                              CELL_ACCESS_LOG="true")
    httpx.get(f"{cell.url}/healthz", timeout=10)  # one access-log line
    gateway.stop()
    cell.stop()
    _assert_text(_lines(gateway), "gateway")
    cell_lines = _lines(cell)
    _assert_text(cell_lines, "cell_classifier")
    assert any("GET /healthz" in line for line in cell_lines), "uvicorn's access log goes the same way"


def test_text_by_default_on_a_terminal(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LOG_FORMAT"}
    env.update(GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), CELL_URL=NO_SERVICE, SUBTYPE_URL=NO_SERVICE,
               REDIS_URL="", DATA_DIR=str(tmp_path))
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                               stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    try:
        deadline = time.monotonic() + 60
        while b"Application startup complete" not in output and time.monotonic() < deadline:
            if process.poll() is not None and not select.select([controller], [], [], 0)[0]:
                break
            if select.select([controller], [], [], 0.5)[0]:
                try:
                    output += os.read(controller, 65536)
                except OSError:
                    break
    finally:
        process.terminate()
        process.wait(15)
        os.close(controller)
    lines = [line for line in output.decode(errors="replace").splitlines() if line.strip()]
    _assert_text(lines, "gateway")
