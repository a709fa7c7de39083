"""`make run`'s launcher as a user runs it: every service up and ready, and all of them stopped when the launcher
is told to stop by Ctrl-C, by `kill` (SIGTERM) or by a closed terminal (SIGHUP), so no port stays taken; the gateway
first, so that its classifications in flight still reach the services. Also: behind a proxy, with its cache on a
private unix socket, naming a child that dies, and refusing a port that an earlier run's service still holds."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from tests.helpers.processes import REPO_ROOT, free_port, refused_port

RUNNING = "AML classifier running"


def _port_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_closed(ports: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        still_open = [port for port in ports if _port_answers(port)]
        if not still_open:
            return []
        time.sleep(0.3)
    return still_open


class Launcher:
    """``python -m launcher`` in a session of its own (as from a terminal), its output collected line by line."""

    def __init__(self, tmp_path: Path, **extra_env: str):
        self.ports = {"CELL": free_port(), "SUBTYPE": free_port(), "GATEWAY": free_port()}
        env = {key: value for key, value in os.environ.items()
               if key not in ("REDIS_URL", "API_KEYS", "API_KEYS_FILE", "CELL_URL", "SUBTYPE_URL", "DATABASE_URL")}
        for prefix, port in self.ports.items():
            env[f"{prefix}_HOST"], env[f"{prefix}_PORT"] = "127.0.0.1", str(port)
        env["DATA_DIR"] = str(tmp_path / "data")
        env.update(extra_env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "launcher"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
            # Ctrl-C's SIGINT, even when pytest itself runs as a background job (which ignores it)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
        self.lines: list[str] = []
        self.running = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if RUNNING in line:
                self.running.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def tail(self) -> str:
        return "".join(self.lines[-40:])

    def child_pids(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in re.findall(r"^started (.+) \(pid (\d+)\)$", self.output, re.M)}

    def kill_all(self) -> None:
        """Whatever it left behind: itself and the children it announced (each in a session of its own)."""
        for pid in [self.process.pid, *self.child_pids().values()]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextmanager
def launched(tmp_path: Path, **extra_env: str):
    launcher = Launcher(tmp_path, **extra_env)
    try:
        yield launcher
    finally:
        launcher.kill_all()


def _stopped_order(output: str) -> list[str]:
    return re.findall(r"^stopped (.+) \(", output, re.M)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_launcher_starts_everything_and_stops_everything(tmp_path: Path, stop_signal: signal.Signals):
    with refused_port() as dead_proxy, launched(tmp_path, HTTP_PROXY=f"http://127.0.0.1:{dead_proxy}",
                                                http_proxy=f"http://127.0.0.1:{dead_proxy}") as launcher:
        # behind a proxy (a dead one here) the loopback checks and calls must not go through it
        assert launcher.running.wait(150), "launcher never reported the system running:\n" + launcher.tail()
        output, ports = launcher.output, launcher.ports
        key = re.search(r"API key for this run[^:]*: (\S+)", output).group(1)
        socket_path = re.search(r"cache: redis-server on unix socket (\S+)", output).group(1)
        gateway = f"http://127.0.0.1:{ports['GATEWAY']}"
        readiness = httpx.get(f"{gateway}/readyz", timeout=10)
        assert readiness.status_code == 200
        assert readiness.json()["checks"]["cache"] == {"kind": "redis", "available": True}
        for prefix in ("CELL", "SUBTYPE"):
            assert httpx.get(f"http://127.0.0.1:{ports[prefix]}/readyz", timeout=10).status_code == 200
        # the cache: on a unix socket only this user can reach, and no TCP port
        assert stat.S_IMODE(os.stat(os.path.dirname(socket_path)).st_mode) == 0o700
        assert redis.Redis(unix_socket_path=socket_path).config_get("port") == {"port": "0"}
        # each child in a session of its own: a terminal's Ctrl-C reaches the launcher alone
        children = launcher.child_pids()
        assert set(children) == {"redis-server", "cell classifier", "subtype", "gateway"}
        assert all(os.getsid(pid) == pid for pid in children.values())
        # the printed key opens the gateway: the system a user gets is usable as printed
        reports = f"{gateway}/patients/nobody-yet/reports"
        assert httpx.get(reports, timeout=10).status_code == 401
        assert httpx.get(reports, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 404

        os.killpg(launcher.process.pid, stop_signal)  # as a terminal sends it: to its foreground process group
        assert launcher.process.wait(60) == 0
        launcher.reader.join(10)
        assert "stopping" in launcher.output
        stopped = _stopped_order(launcher.output)
        assert stopped[0] == "gateway" and set(stopped[1:3]) == {"cell classifier", "subtype"}
        assert stopped[3] == "redis-server", launcher.tail()
        assert _wait_closed(list(ports.values()), 30) == [], "a service outlived the launcher:\n" + launcher.tail()
        assert not os.path.exists(os.path.dirname(socket_path))


def test_a_child_that_dies_is_named_with_how_it_ended(tmp_path: Path):
    with launched(tmp_path) as launcher:
        assert launcher.running.wait(150), "launcher never reported the system running:\n" + launcher.tail()
        subtype = launcher.child_pids()["subtype"]
        os.kill(subtype, signal.SIGKILL)
        assert launcher.process.wait(60) == 1
        launcher.reader.join(10)
        assert f"subtype (pid {subtype}) exited unexpectedly (signal SIGKILL); stopping the rest" in launcher.output
        assert _wait_closed(list(launcher.ports.values()), 30) == [], launcher.tail()


def test_a_port_an_earlier_service_still_holds_stops_the_launcher_before_it_starts_anything(tmp_path: Path):
    with socket.socket() as orphan:
        orphan.bind(("127.0.0.1", 0))
        orphan.listen()
        port = orphan.getsockname()[1]
        with launched(tmp_path, GATEWAY_PORT=str(port)) as launcher:
            assert launcher.process.wait(30) == 1
            launcher.reader.join(10)
            assert f"cannot start: port {port} on 127.0.0.1 is not free" in launcher.output
            assert "GATEWAY_PORT" in launcher.output
            assert launcher.child_pids() == {}, launcher.tail()
