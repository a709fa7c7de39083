"""Run a service's FastAPI app under uvicorn with its settings (the `python -m` entry points)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from shared.json_logging import log_config
from shared.worker_processes import WorkerProcesses, reuse_port_supported


def service_name(create_app: Callable[..., FastAPI]) -> str:
    """``gateway.app`` -> ``gateway``, ``services.cell_classifier.app`` -> ``cell_classifier``."""
    parts = create_app.__module__.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else parts[0]


def run(create_app: Callable[..., FastAPI], settings, access_log: bool = True, workers: int = 1,
        graceful_shutdown_s: int = 10, on_worker_exit: Callable[[int], None] | None = None) -> None:
    """``settings`` has host, port and log_level; logs go to stderr as JSON lines or text lines
    (``LOG_FORMAT``, see shared/json_logging.py); uvicorn stops gracefully on SIGTERM/Ctrl-C.
    ``access_log=False`` where paths carry patient ids (the gateway: its audit log records requests).
    ``workers > 1``: that many processes on the one port, each building its app with ``create_app()`` from
    the same environment and listening on a socket of its own so that the kernel spreads connections evenly
    (shared/worker_processes.py; uvicorn's own process manager, one shared socket, where the platform
    cannot); one that dies is restarted, after ``on_worker_exit(pid)``.
    ``graceful_shutdown_s``: how long requests in flight may finish after SIGTERM (a deployment's grace
    period must be longer, plus its preStop wait)."""
    config = log_config(settings.log_level, service=service_name(create_app))
    common = {"host": settings.host, "port": settings.port, "log_level": settings.log_level, "log_config": config,
              "timeout_graceful_shutdown": graceful_shutdown_s, "access_log": access_log}
    if workers > 1:
        factory = f"{create_app.__module__}:{create_app.__name__}"
        if not reuse_port_supported():
            uvicorn.run(factory, factory=True, workers=workers, **common)
            return
        uvicorn.Config(factory, factory=True, **common)  # configures this process's logging, as the workers'
        status = WorkerProcesses(factory, workers, common, graceful_shutdown_s, on_worker_exit).run()
        if status:
            sys.exit(status)
    else:
        uvicorn.run(create_app(settings), **common)
