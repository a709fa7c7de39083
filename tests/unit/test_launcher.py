"""The `make run` launcher lives at the top level (it starts the gateway and the services); its parts, with real
sockets and real child processes: the port check, redis-server on a private unix socket, readiness checks that
ignore a proxy, and the shutdown order."""

import asyncio
import errno
import http.server
import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from launcher.children import Child, StopRequested, StopSignals, describe_exit, start_child, stop_children
from tests.helpers.processes import REPO_ROOT, free_port, refused_port


def test_launcher_is_top_level_and_make_run_uses_it():
    from launcher.run_all import main

    assert callable(main)
    assert importlib.util.find_spec("launcher.__main__") is not None
    assert not (REPO_ROOT / "services" / "run_all.py").exists()
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "\t$(PYTHON) -m launcher\n" in makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0] + "\n"


def test_an_empty_internal_token_is_replaced_and_a_given_one_kept():
    from launcher.run_all import ensure_internal_token

    for empty in ({}, {"INTERNAL_TOKEN": ""}, {"INTERNAL_TOKEN": "  "}):
        ensure_internal_token(empty)
        assert len(empty["INTERNAL_TOKEN"]) >= 24 and empty["INTERNAL_TOKEN"].strip() == empty["INTERNAL_TOKEN"]
    given = {"INTERNAL_TOKEN": "s3cret"}
    ensure_internal_token(given)
    assert given == {"INTERNAL_TOKEN": "s3cret"}


# --- ports: an old service still listening must stop the launcher, not pass its readiness check ------------------

def _ports_env(**ports: int) -> dict[str, str]:
    env = {f"{prefix}_PORT": str(free_port()) for prefix in ("CELL", "SUBTYPE", "GATEWAY")}
    env.update({f"{prefix}_PORT": str(port) for prefix, port in ports.items()})
    return env


def test_a_port_something_listens_on_is_named_with_its_variable():
    from launcher.run_all import port_clashes

    with socket.socket() as orphan:
        orphan.bind(("127.0.0.1", 0))
        orphan.listen()
        port = orphan.getsockname()[1]
        problems = port_clashes(_ports_env(GATEWAY=port))
    assert len(problems) == 1
    assert f"port {port} on 127.0.0.1 is not free" in problems[0] and "GATEWAY_PORT" in problems[0]
    assert port_clashes(_ports_env()) == []
    assert port_clashes({**_ports_env(), "CELL_PORT": "80a"}) == ["CELL_PORT='80a' is not a port number"]


def test_a_port_left_in_time_wait_by_an_earlier_run_counts_as_free():
    """uvicorn binds with SO_REUSEADDR, so such a port is usable: refusing it would fail every quick restart."""
    from launcher.run_all import port_clashes

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end waits in TIME_WAIT
        client.close()
    assert port_clashes(_ports_env(CELL=port)) == []


# --- redis-server on a unix socket of this user's only ------------------------------------------------------------

def test_redis_listens_only_on_a_private_unix_socket_that_the_gateways_cache_uses():
    import redis

    from gateway.cache import RedisCache
    from launcher.run_all import REDIS_SOCKET, private_socket_dir, redis_command

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
    socket_dir = private_socket_dir()
    path = os.path.join(socket_dir, REDIS_SOCKET)
    server = subprocess.Popen(redis_command(binary, socket_dir), stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(unix_socket_path=path, socket_timeout=1)
        deadline = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.ping()
        assert client.config_get("port") == {"port": "0"}  # no TCP port at all
        assert stat.S_IMODE(os.stat(socket_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700

        async def round_trip() -> tuple[bool, list]:
            cache = RedisCache(f"unix://{path}", ttl_s=60, timeout_s=1)
            try:
                await cache.set_many({"cell:m:sha": {"label": "blast"}})
                return await cache.ping(), await cache.get_many(["cell:m:sha"])
            finally:
                await cache.close()

        assert asyncio.run(round_trip()) == (True, [{"label": "blast"}])
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(socket_dir, ignore_errors=True)


# --- readiness checks on loopback never go through a proxy --------------------------------------------------------

class _Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args) -> None:
        pass


def test_readiness_checks_ignore_a_proxy_in_the_environment(monkeypatch):
    from launcher.run_all import _wait_ready

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with refused_port() as proxy_port:
            for variable in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
                monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy_port}")
            for variable in ("NO_PROXY", "no_proxy"):
                monkeypatch.delenv(variable, raising=False)
            url = f"http://127.0.0.1:{server.server_address[1]}"
            assert _wait_ready("probe", Child("probe", sleeper, 0, 1), url, time.monotonic() + 5)
    finally:
        server.shutdown()
        sleeper.kill()
        sleeper.wait()


# --- shutdown: the gateway first, then the services, then redis; a second signal hurries ---------------------------

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    name, log, linger = sys.argv[1], sys.argv[2], float(sys.argv[3])
    def note(what):
        with open(log, "a") as out:
            out.write(f"{name} {what}\\n")
    def on_term(*_):
        note("SIGTERM")
        if linger >= 0:
            time.sleep(linger)
            note("exit")
            os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    note("ready")
    while True:
        time.sleep(0.05)
""")


def _start(children: list[Child], log: Path, name: str, stage: int, linger: float, grace: float = 10) -> Child:
    """A real child that notes SIGTERM, then exits ``linger`` s later (never, where negative)."""
    return start_child(children, StopSignals(), name, [sys.executable, "-c", CHILD, name, str(log), str(linger)],
                       stage, grace)


def _notes(log: Path, expected: int) -> list[str]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= expected:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"children did not start: {lines}")


def test_the_gateway_stops_before_the_services_and_they_before_redis(tmp_path):
    log = tmp_path / "notes"
    children: list[Child] = []
    _start(children, log, "redis", 0, 0)
    _start(children, log, "cell", 1, 0.2)
    _start(children, log, "subtype", 1, 0.2)
    _start(children, log, "gateway", 2, 1.0)  # classifications in flight finishing
    _notes(log, 4)
    stop_children(children, StopSignals())
    notes = [line for line in log.read_text().splitlines() if not line.endswith("ready")]
    assert notes.index("gateway exit") < min(notes.index("cell SIGTERM"), notes.index("subtype SIGTERM"))
    assert max(notes.index("cell exit"), notes.index("subtype exit")) < notes.index("redis SIGTERM")
    assert all(child.process.returncode == 0 for child in children)


def test_its_own_session_keeps_a_terminals_ctrl_c_from_a_child(tmp_path):
    log = tmp_path / "notes"
    child = _start([], log, "gateway", 2, 0)
    try:
        _notes(log, 1)
        assert os.getsid(child.process.pid) == child.process.pid
        assert os.getpgid(child.process.pid) != os.getpgid(0)
    finally:
        child.process.kill()
        child.process.wait()


def test_a_child_still_running_after_its_grace_is_killed(tmp_path):
    log = tmp_path / "notes"
    children: list[Child] = []
    stuck = _start(children, log, "gateway", 2, -1, grace=0.5)
    _notes(log, 1)
    stop_children(children, StopSignals())
    assert stuck.process.returncode == -signal.SIGKILL


class _ClosedTerminal:
    """stdout/stderr after the terminal hung up: every write fails with EIO."""

    def write(self, _text):
        raise OSError(errno.EIO, "Input/output error")

    def flush(self):
        raise OSError(errno.EIO, "Input/output error")


def test_a_closed_terminal_does_not_stop_the_shutdown(tmp_path, monkeypatch):
    """After SIGHUP every print fails; the launcher died of it before signalling any child, and the children, in
    sessions of their own, kept running."""
    log = tmp_path / "notes"
    children: list[Child] = []
    _start(children, log, "cell", 1, 0)
    _start(children, log, "gateway", 2, 0)
    _notes(log, 2)
    monkeypatch.setattr(sys, "stdout", _ClosedTerminal())
    monkeypatch.setattr(sys, "stderr", _ClosedTerminal())
    stop_children(children, StopSignals())
    assert [child.process.returncode for child in children] == [0, 0]


def test_a_second_stop_request_stops_everyone_at_once_and_a_third_kills(tmp_path):
    log = tmp_path / "notes"
    children: list[Child] = []
    signals = StopSignals()
    _start(children, log, "cell", 1, 0)
    gateway = _start(children, log, "gateway", 2, 30, grace=60)  # a long classification in flight
    _notes(log, 2)
    threading.Timer(0.5, lambda: setattr(signals, "hurry", 1)).start()
    started = time.monotonic()
    stop_children(children, signals, hurry_grace_s=1.0)
    assert time.monotonic() - started < 5
    assert "cell SIGTERM" in log.read_text() and gateway.process.returncode == -signal.SIGKILL

    log, children = tmp_path / "notes-2", []
    stuck = _start(children, log, "stuck", 1, -1, grace=60)
    _notes(log, 1)
    threading.Timer(0.5, lambda: setattr(signals, "hurry", 2)).start()
    started = time.monotonic()
    stop_children(children, signals)
    assert time.monotonic() - started < 5 and stuck.process.returncode == -signal.SIGKILL


def test_the_first_signal_stops_and_later_ones_only_hurry():
    signals = StopSignals()
    with pytest.raises(StopRequested, match="SIGHUP"):
        signals(signal.SIGHUP, None)
    signals(signal.SIGHUP, None)  # a closing terminal's second hang-up
    assert signals.hurry == 0
    signals(signal.SIGINT, None)
    signals(signal.SIGTERM, None)
    assert signals.hurry == 2


def test_a_stop_request_while_a_child_starts_waits_until_it_is_tracked():
    signals = StopSignals()
    with pytest.raises(StopRequested, match="SIGINT"):
        with signals.deferred():
            signals(signal.SIGINT, None)
            tracked = True
    assert tracked and signals.stopping


def test_exits_are_described_with_the_signal_that_ended_them():
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
