"""A real redis-server of the tests' own, on a free port, that tests can stop and restart."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.helpers.processes import free_port

PORT_TRIES = 5


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
        self.binary = binary
        self.workdir = workdir
        self.fixed_port = port is not None
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.started_once = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def log_tail(self, n: int = 2000, since: int = 0) -> str:
        """The end of the log (of what was written after byte ``since``: this start's own lines)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(since)
                return log.read().decode(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self) -> "RedisServer":
        """Start the server and wait until it answers. The first start of a server whose port was chosen
        here moves to another free port when that one was taken meanwhile; a restart keeps its port (the
        gateways under test know it) and fails instead."""
        for attempt in range(PORT_TRIES):
            try:
                return self._start_once()
            except PortTaken:
                if self.fixed_port or self.started_once or attempt == PORT_TRIES - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self) -> "RedisServer":
        with open(self.log_path, "ab") as log:
            since = log.tell()
            self.process = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.workdir)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail(since=since)
                error = PortTaken if "Address already in use" in tail else RuntimeError
                raise error(f"redis-server on port {self.port} exited with {self.process.returncode}:\n{tail}")
            try:
                # the server that answers must be this one, not another one that holds the port
                with redis.Redis(port=self.port, socket_timeout=0.5) as client:
                    answering = client.info("server")["process_id"]
                if answering == self.process.pid:
                    self.started_once = True
                    return self
            except redis.RedisError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self.log_tail(since=since)}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class PortTaken(RuntimeError):
    """redis-server could not bind its port: something else listens there."""
