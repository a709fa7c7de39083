"""Several uvicorn worker processes on one port, each listening on a socket of its own (``SO_REUSEPORT``), so
that the kernel spreads new connections over them evenly.

uvicorn's process manager binds one socket and hands it to every worker; a keep-alive connection stays with
the process that accepted it, and clients that connect at once were split by whichever process won each
accept race: measured with 2 processes and 32 clients, from 16/16 to 32/0, the latter running at one
process's speed (docs/benchmarks.md, 2026-12-07). With one socket per process the kernel picks the socket by
a hash of each connection's addresses, so a split is as even as coin tosses (32/0 has odds of 2 in 4
billion).

The manager here does what uvicorn's did for these services: it starts the workers (spawned, each building
its app from the same environment), stops the start with uvicorn's startup-failure status if one exits before
all are ready, restarts one that dies later, and on SIGTERM, SIGINT or SIGHUP asks every worker to shut down
gracefully, killing those that outlive the grace period. Before any worker starts, the port is bound once
without ``SO_REUSEPORT``: a port in use (by another copy of the service too, whose sockets would otherwise
quietly share it) stops the start, as it did; port 0 becomes the port the system chose, for every worker.
Unlike uvicorn's manager it does not ping the workers: one that hangs without exiting is left to the
orchestrator's liveness probe (/healthz). Linux only (elsewhere ``SO_REUSEPORT`` does not balance, or does
not exist): ``reuse_port_supported()`` says whether to use this or uvicorn's manager."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.main import STARTUP_FAILURE

logger = logging.getLogger("uvicorn.error")
READY_TIMEOUT_S = 300.0  # a worker loads the model before it is ready
RESTART_DELAY_S = 1.0  # between a worker's death and its replacement: no busy loop if it dies at once


def reuse_port_supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _serve(app: str, options: dict[str, Any], ready) -> None:
    """One worker process: its own ``SO_REUSEPORT`` socket on the shared port, uvicorn on it; ``ready`` is
    set once the app has started (lifespan done, listening)."""
    config = uvicorn.Config(app, factory=True, **options)
    sock = _listening_socket(config.host, config.port, reuse_port=True)
    # listening from the start, before the app loads its model: a socket joins the kernel's share-out only once
    # it listens, and one that started later found the clients that had connected meanwhile all on the others
    # (kept there by keep-alive); a connection given to a worker still loading waits in its backlog instead
    sock.listen(config.backlog)
    server = uvicorn.Server(config)

    def tell_when_started() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            ready.set()

    threading.Thread(target=tell_when_started, daemon=True).start()
    server.run(sockets=[sock])


class WorkerProcesses:
    """``workers`` processes serving the app factory ``app`` ("module:function") with uvicorn ``options``
    (host, port, log settings, timeouts; not ``workers``). ``on_worker_exit(pid)`` tidies after a worker that
    died without its own shutdown (the cell service's per-process metric files)."""

    def __init__(self, app: str, workers: int, options: dict[str, Any], graceful_shutdown_s: float,
                 on_worker_exit: Callable[[int], None] | None = None):
        self.app = app
        self.on_worker_exit = on_worker_exit  # called with the pid of a worker that died, before its replacement
        self.workers = workers
        self.options = options
        self.grace_s = graceful_shutdown_s
        self.context = multiprocessing.get_context("spawn")
        self.stopping = threading.Event()
        self.processes: list[tuple[Any, Any]] = []

    def _start_one(self):
        ready = self.context.Event()
        process = self.context.Process(target=_serve, args=(self.app, self.options, ready), daemon=False)
        process.start()
        return process, ready

    def _on_signal(self, signum, frame) -> None:
        self.stopping.set()

    def run(self) -> int:
        """Serve until a signal; the exit status (0, or uvicorn's startup failure)."""
        host, port = self.options["host"], self.options["port"]
        try:
            with _listening_socket(host, port, reuse_port=False) as probe:
                port = probe.getsockname()[1]  # port 0: the one the system chose, the same for every worker
        except OSError as error:
            logger.error("cannot listen on %s:%d: %s", host, port, error.strerror or error)
            return STARTUP_FAILURE
        self.options = {**self.options, "port": port}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        # (process, its ready event) pairs; the event is kept as long as the process: a multiprocessing Event
        # dropped by the parent is unlinked, and a worker spawned with it fails to start
        self.processes = [self._start_one() for _ in range(self.workers)]
        if not self._all_ready():
            self._stop()
            return 0 if self.stopping.is_set() else STARTUP_FAILURE
        logger.info("%d worker processes serving on %s:%d, each on its own socket (SO_REUSEPORT)",
                    self.workers, host, port)
        while not self.stopping.wait(0.5):
            for index, (process, _) in enumerate(self.processes):
                if not process.is_alive() and not self.stopping.is_set():
                    logger.warning("worker process %d exited with status %s; starting another",
                                   process.pid, process.exitcode)
                    self._tidy_after(process.pid)
                    if self.stopping.wait(RESTART_DELAY_S):
                        break
                    self.processes[index] = self._start_one()
        self._stop()
        return 0

    def _tidy_after(self, pid: int) -> None:
        if self.on_worker_exit is None:
            return
        try:
            self.on_worker_exit(pid)
        except Exception:  # noqa: BLE001 - tidying must not stop the manager and leave the workers unmanaged
            logger.exception("tidying after worker process %d failed", pid)

    def _all_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for process, ready in self.processes:
            while not ready.wait(0.2):
                if self.stopping.is_set() or not process.is_alive() or time.monotonic() > deadline:
                    if not self.stopping.is_set():
                        logger.error("worker process %d did not start (status %s)", process.pid, process.exitcode)
                    return False
        return True

    def _stop(self) -> None:
        for process, _ in self.processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        deadline = time.monotonic() + self.grace_s + 5
        for process, _ in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.warning("worker process %d still running after the grace period; killing it", process.pid)
                process.kill()
                process.join(5)
