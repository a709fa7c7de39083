"""`make run`'s launcher as a user runs it: every service up and ready, and all of them stopped when the launcher
is told to stop by Ctrl-C, by `kill` (SIGTERM) or by a closed terminal (SIGHUP), so no port stays taken."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.processes import REPO_ROOT, free_port

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


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_launcher_starts_everything_and_stops_everything(tmp_path: Path, stop_signal: signal.Signals):
    ports = {"CELL": free_port(), "SUBTYPE": free_port(), "GATEWAY": free_port()}
    env = {key: value for key, value in os.environ.items()
           if key not in ("REDIS_URL", "API_KEYS", "API_KEYS_FILE", "CELL_URL", "SUBTYPE_URL", "DATABASE_URL")}
    for prefix, port in ports.items():
        env[f"{prefix}_HOST"], env[f"{prefix}_PORT"] = "127.0.0.1", str(port)
    env["DATA_DIR"] = str(tmp_path / "data")
    launcher = subprocess.Popen([sys.executable, "-m", "launcher"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                # Ctrl-C's SIGINT, even when pytest itself runs as a background job (which ignores it)
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
    lines: list[str] = []
    running = threading.Event()

    def read_output() -> None:
        assert launcher.stdout is not None
        for line in launcher.stdout:
            lines.append(line)
            if RUNNING in line:
                running.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        assert running.wait(150), "launcher never reported the system running:\n" + "".join(lines[-40:])
        output = "".join(lines)
        key = re.search(r"API key for this run[^:]*: (\S+)", output).group(1)
        redis = re.search(r"cache: redis-server on 127\.0\.0\.1:(\d+)", output)
        gateway = f"http://127.0.0.1:{ports['GATEWAY']}"
        assert httpx.get(f"{gateway}/readyz", timeout=10).status_code == 200
        for prefix in ("CELL", "SUBTYPE"):
            assert httpx.get(f"http://127.0.0.1:{ports[prefix]}/readyz", timeout=10).status_code == 200
        # the printed key opens the gateway: the system a user gets is usable as printed
        reports = f"{gateway}/patients/nobody-yet/reports"
        assert httpx.get(reports, timeout=10).status_code == 401
        assert httpx.get(reports, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code in (200, 404)

        launcher.send_signal(stop_signal)
        assert launcher.wait(60) == 0
        reader.join(10)
        assert "stopping" in "".join(lines)
        taken = list(ports.values()) + ([int(redis.group(1))] if redis else [])
        assert _wait_closed(taken, 30) == [], "a service outlived the launcher:\n" + "".join(lines[-40:])
    finally:  # whatever the launcher left behind (its session: the services and redis-server it started)
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
