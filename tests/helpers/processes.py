"""Start real service processes (uvicorn via python -m ...) on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs: bound and never listening, so a service
    started meanwhile on a free_port() cannot be given it (a "dead" upstream that turned out to be the gateway
    itself once answered 502 instead of 503)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


class ServiceProcess:
    """A service started with ``python -m module``; ``url`` is its base URL."""

    def __init__(self, module: str, env: dict[str, str], port: int, log_path: Path, cwd: Path = REPO_ROOT,
                 python: str = sys.executable):
        self.module = module
        self.cwd = cwd
        self.python = python
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, ready_path: str = "/readyz", timeout: float = 90.0) -> "ServiceProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([self.python, "-m", self.module], cwd=self.cwd,
                                        env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.module} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


def start_service(module: str, prefix: str, tmp_path: Path, **env: str) -> ServiceProcess:
    """``python -m module`` with ``{prefix}_HOST``/``{prefix}_PORT`` on a free loopback port, ready."""
    port = free_port()
    settings = {f"{prefix}_HOST": "127.0.0.1", f"{prefix}_PORT": str(port), **env}
    name = module.rsplit(".", 1)[-1]
    return ServiceProcess(module, settings, port, tmp_path / f"{name}-{port}.log").start()


def start_cell_service(tmp_path: Path, **env: str) -> ServiceProcess:
    return start_service("services.cell_classifier", "CELL", tmp_path, **{"CELL_PROVIDER": "cpu", **env})


def start_subtype_service(tmp_path: Path, **env: str) -> ServiceProcess:
    return start_service("services.subtype", "SUBTYPE", tmp_path, **env)


def start_gateway(tmp_path: Path, cell_url: str, subtype_url: str, redis_url: str | None = None,
                  ready_path: str = "/healthz", **env: str) -> ServiceProcess:
    from tests.helpers.keys import API_KEYS_JSON

    port = free_port()
    settings = {"CELL_URL": cell_url, "SUBTYPE_URL": subtype_url, "REDIS_URL": redis_url or "",
                "API_KEYS": API_KEYS_JSON, "DATA_DIR": str(tmp_path / f"data-{port}"), **env}
    settings.update({"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port)})
    return ServiceProcess("gateway", settings, port, tmp_path / f"gateway-{port}.log").start(ready_path)
