"""`make run` (`python -m launcher`): the whole system on localhost. Starts the cell service, the subtype service, a
redis-server of its own when one is installed (else the gateway's in-process cache) and the
gateway; waits until all are ready, prints the URL, stops everything on Ctrl-C, on SIGTERM (``kill``, a
process supervisor) and on SIGHUP (the terminal closed), so that no service is left holding its port.

Addresses come from the usual variables (CELL_PORT, SUBTYPE_PORT, GATEWAY_PORT, ...).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx

from gateway.security import new_key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _url(prefix: str, default_port: int) -> str:
    return f"http://{os.environ.get(f'{prefix}_HOST', '127.0.0.1')}:{os.environ.get(f'{prefix}_PORT', default_port)}"


def _wait_ready(name: str, process: subprocess.Popen, url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            print(f"{name} exited with {process.returncode}", file=sys.stderr)
            return False
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                print(f"ready: {name} at {url}", flush=True)
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    print(f"{name} not ready in time", file=sys.stderr)
    return False


class _StopRequested(Exception):
    """SIGTERM or SIGHUP arrived: stop the services as Ctrl-C does."""


def _stop_requested(signum: int, _frame: object) -> None:
    raise _StopRequested(signal.Signals(signum).name)


def ensure_internal_token(env: dict[str, str]) -> None:
    """A fresh token between the services of this run unless one is given; an empty one (e.g. from an
    unfilled deploy/env.example) counts as none, since every service refuses to start with it."""
    if not env.get("INTERNAL_TOKEN", "").strip():
        env["INTERNAL_TOKEN"] = secrets.token_urlsafe(24)


def main(timeout_s: float = 180.0) -> int:
    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _stop_requested)
    env = dict(os.environ)
    processes: list[tuple[str, subprocess.Popen]] = []
    try:
        redis_binary = shutil.which("redis-server")
        if "REDIS_URL" not in env and redis_binary:
            port = _free_port()
            processes.append(("redis-server", subprocess.Popen(
                [redis_binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL)))
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            print(f"cache: redis-server on 127.0.0.1:{port}", flush=True)
        elif "REDIS_URL" not in env:
            print("cache: in-process (redis-server is not installed)", flush=True)
        if not env.get("API_KEYS") and not env.get("API_KEYS_FILE"):
            key, entry = new_key("local", {"classify", "read", "review"})
            env["API_KEYS"] = json.dumps([entry])
            print(f"API key for this run (enter it in the page; not stored): {key}", flush=True)
        ensure_internal_token(env)
        cell_url, subtype_url = _url("CELL", 8001), _url("SUBTYPE", 8002)
        env.setdefault("CELL_URL", cell_url)
        env.setdefault("SUBTYPE_URL", subtype_url)
        deadline = time.monotonic() + timeout_s
        services = [("cell classifier", "services.cell_classifier", cell_url),
                    ("subtype", "services.subtype", subtype_url)]
        for name, module, _ in services:
            processes.append((name, subprocess.Popen([sys.executable, "-m", module], env=env)))
        for (name, _, url), (_, process) in zip(services, processes[-2:]):
            if not _wait_ready(name, process, url, deadline):
                return 1
        gateway_url = _url("GATEWAY", 8000)
        gateway = subprocess.Popen([sys.executable, "-m", "gateway"], env=env)
        processes.append(("gateway", gateway))
        if not _wait_ready("gateway", gateway, gateway_url, deadline):
            return 1
        print(f"\nAML classifier running: open {gateway_url}/ (API docs {gateway_url}/docs). Ctrl-C stops it.",
              flush=True)
        while all(process.poll() is None for _, process in processes):
            time.sleep(0.5)
        print("a process stopped; stopping the rest", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _StopRequested) as stop:
        print(f"stopping ({stop or 'Ctrl-C'})", flush=True)
        return 0
    finally:
        for stop_signal in (signal.SIGTERM, signal.SIGHUP):  # a second one must not cut the shutdown short
            signal.signal(stop_signal, signal.SIG_IGN)
        for _, process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
