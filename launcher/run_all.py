"""`make run` (`python -m launcher`): the whole system on localhost. Starts the cell service, the subtype service, a
redis-server of its own when one is installed (else the gateway's in-process cache) and the gateway; waits until
all are ready, prints the URL, and stops everything on Ctrl-C, on SIGTERM (``kill``, a process supervisor) and on
SIGHUP (the terminal closed), so that no service is left holding its port.

Addresses come from the usual variables (CELL_PORT, SUBTYPE_PORT, GATEWAY_PORT, ...); a port already taken (often
by a service an earlier run left behind, whose /readyz would otherwise pass for the new one's) stops the launcher
before it starts anything. The children are stopped in order, the gateway first; a second Ctrl-C hurries that
(launcher/children.py). Its redis-server listens on a private unix socket only: on a shared workstation any local
user could otherwise rewrite cached cell labels over an unauthenticated loopback port.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import httpx

from gateway.security import new_key
from launcher.children import (Child, StopRequested, StopSignals, describe_exit, say, start_child,
                               stop_children)

# (variable prefix, default port) of every service the launcher starts on a TCP port
SERVICE_PORTS = (("CELL", 8001), ("SUBTYPE", 8002), ("GATEWAY", 8000))
GATEWAY_GRACE_S = 125.0  # the gateway's 120 s for classifications in flight (gateway/__main__.py), then its shutdown
SERVICE_GRACE_S = 15.0
REDIS_GRACE_S = 10.0
REDIS_SOCKET = "redis.sock"


def _host(env: dict[str, str], prefix: str) -> str:
    return env.get(f"{prefix}_HOST", "127.0.0.1")


def _url(env: dict[str, str], prefix: str, default_port: int) -> str:
    return f"http://{_host(env, prefix)}:{env.get(f'{prefix}_PORT', default_port)}"


def _port_clash(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound, or None. SO_REUSEADDR as uvicorn binds, so that a port whose last
    connections linger in TIME_WAIT after an earlier run counts as free, while one something listens on does not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def port_clashes(env: dict[str, str]) -> list[str]:
    """One message per port the launcher would start a service on that is not free: naming the port and the
    variable that sets it. Checked before anything starts, since the readiness check cannot tell an old
    service that still answers on the port from the one just started."""
    problems = []
    for prefix, default_port in SERVICE_PORTS:
        variable, value = f"{prefix}_PORT", env.get(f"{prefix}_PORT", str(default_port))
        try:
            port = int(value)
        except ValueError:
            problems.append(f"{variable}={value!r} is not a port number")
            continue
        host = _host(env, prefix)
        if why := _port_clash(host, port):
            problems.append(f"port {port} on {host} is not free ({why}): stop what holds it (an earlier run's "
                            f"service? `ss -ltnp 'sport = :{port}'` names it) or choose another with {variable}")
    return problems


def redis_command(binary: str, socket_dir: str) -> list[str]:
    """redis-server on a unix socket only (``--port 0``: no TCP port), usable by this user alone (the socket
    0700 in a 0700 directory): the cache holds the cell labels differentials are made of. No persistence."""
    return [binary, "--port", "0", "--unixsocket", os.path.join(socket_dir, REDIS_SOCKET), "--unixsocketperm", "700",
            "--dir", socket_dir, "--save", "", "--appendonly", "no"]


def private_socket_dir() -> str:
    """A fresh directory of mode 0700 for the redis socket (mkdtemp makes it so); under /tmp where TMPDIR is too
    long for a unix socket path (about 107 bytes)."""
    socket_dir = tempfile.mkdtemp(prefix="aml-redis-")
    if len(os.fsencode(os.path.join(socket_dir, REDIS_SOCKET))) > 100:  # the limit is in bytes
        os.rmdir(socket_dir)
        socket_dir = tempfile.mkdtemp(prefix="aml-redis-", dir="/tmp")
    os.chmod(socket_dir, 0o700)
    return socket_dir


def _redis_answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(path)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _wait_until(name: str, child: Child, answers: Callable[[], bool], deadline: float, poll_s: float) -> bool:
    """Poll ``answers`` until it says yes; False (said why) when ``child`` exits or ``deadline`` passes first."""
    while time.monotonic() < deadline:
        if not child.running:
            say(f"{name} exited ({describe_exit(child.process.returncode)})", error=True)
            return False
        if answers():
            return True
        time.sleep(poll_s)
    say(f"{name} not ready in time", error=True)
    return False


def _wait_redis(child: Child, path: str, deadline: float) -> bool:
    """redis-server answers on its socket before the gateway starts (else the gateway's first /readyz says
    its cache is unavailable)."""
    return _wait_until(child.name, child, lambda: _redis_answers(path), deadline, 0.1)


def _wait_ready(name: str, child: Child, url: str, deadline: float) -> bool:
    """Poll ``url``/readyz until 200. trust_env=False: the calls are to the launcher's own loopback services,
    and behind a proxy (HTTP_PROXY) httpx would otherwise send them to the proxy, which never answers 200."""
    def ready() -> bool:
        try:
            return client.get(f"{url}/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    with httpx.Client(trust_env=False, timeout=1) as client:
        if not _wait_until(name, child, ready, deadline, 0.3):
            return False
    say(f"ready: {name} at {url}")
    return True


def _watch(children: list[Child]) -> Child:
    """Block until a child exits (none should while the system runs); that child."""
    while True:
        for child in children:
            if not child.running:
                return child
        time.sleep(0.5)


def ensure_internal_token(env: dict[str, str]) -> None:
    """A fresh token between the services of this run unless one is given; an empty one (e.g. from an
    unfilled deploy/env.example) counts as none, since every service refuses to start with it."""
    if not env.get("INTERNAL_TOKEN", "").strip():
        env["INTERNAL_TOKEN"] = secrets.token_urlsafe(24)


def _ensure_api_key(env: dict[str, str]) -> None:
    if not env.get("API_KEYS") and not env.get("API_KEYS_FILE"):
        key, entry = new_key("local", {"classify", "read", "review"})
        env["API_KEYS"] = json.dumps([entry])
        say(f"API key for this run (enter it in the page; not stored): {key}")


def _own_redis_binary(env: dict[str, str]) -> str | None:
    """redis-server's path where the run should start its own: no REDIS_URL given and one installed."""
    binary = shutil.which("redis-server")
    if "REDIS_URL" not in env and not binary:
        say("cache: in-process (redis-server is not installed)")
    return None if "REDIS_URL" in env else binary


def _start_redis(binary: str, socket_dir: str, env: dict[str, str], children: list[Child], signals: StopSignals,
                 deadline: float) -> None:
    """redis-server on a socket in ``socket_dir``, answering; REDIS_URL for the gateway."""
    path = os.path.join(socket_dir, REDIS_SOCKET)
    redis = start_child(children, signals, "redis-server", redis_command(binary, socket_dir), 0, REDIS_GRACE_S,
                        stdout=subprocess.DEVNULL)
    if not _wait_redis(redis, path, deadline):
        raise _StartFailed
    env["REDIS_URL"] = f"unix://{path}"
    say(f"cache: redis-server on unix socket {path}")


class _StartFailed(Exception):
    """A child exited or was not ready in time (already reported)."""


def _start_services(env: dict[str, str], children: list[Child], signals: StopSignals, deadline: float) -> str:
    """The cell and subtype services, then the gateway, each ready-checked; the gateway's URL."""
    services = [("cell classifier", "services.cell_classifier", _url(env, "CELL", 8001)),
                ("subtype", "services.subtype", _url(env, "SUBTYPE", 8002))]
    env.setdefault("CELL_URL", services[0][2])
    env.setdefault("SUBTYPE_URL", services[1][2])
    started = [start_child(children, signals, name, [sys.executable, "-m", module], 1, SERVICE_GRACE_S, env=env)
               for name, module, _ in services]
    for (name, _, url), child in zip(services, started):
        if not _wait_ready(name, child, url, deadline):
            raise _StartFailed
    gateway_url = _url(env, "GATEWAY", 8000)
    gateway = start_child(children, signals, "gateway", [sys.executable, "-m", "gateway"], 2, GATEWAY_GRACE_S,
                          env=env)
    if not _wait_ready("gateway", gateway, gateway_url, deadline):
        raise _StartFailed
    return gateway_url


def main(timeout_s: float = 180.0) -> int:
    signals = StopSignals()
    children: list[Child] = []
    socket_dir = None
    try:
        signals.install()
        env = dict(os.environ)
        if problems := port_clashes(env):
            for problem in problems:
                say(f"cannot start: {problem}", error=True)
            return 1
        deadline = time.monotonic() + timeout_s
        if redis_binary := _own_redis_binary(env):
            socket_dir = private_socket_dir()
            _start_redis(redis_binary, socket_dir, env, children, signals, deadline)
        _ensure_api_key(env)
        ensure_internal_token(env)
        gateway_url = _start_services(env, children, signals, deadline)
        say(f"\nAML classifier running: open {gateway_url}/ (API docs {gateway_url}/docs). Ctrl-C stops it.")
        gone = _watch(children)
        say(f"{gone.name} (pid {gone.process.pid}) exited unexpectedly ({describe_exit(gone.process.returncode)}); "
            "stopping the rest", error=True)
        return 1
    except _StartFailed:
        return 1
    except StopRequested as stop:
        say(f"stopping ({stop})")
        return 0
    finally:
        while True:
            try:
                stop_children(children, signals)
                break
            except StopRequested:  # the first signal came just as the launcher began stopping for another reason
                continue
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
