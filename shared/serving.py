"""Run a service's FastAPI app under uvicorn with its settings (the `python -m` entry points)."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from shared.json_logging import log_config


def run(create_app: Callable[..., FastAPI], settings, access_log: bool = True) -> None:
    """``settings`` has host, port and log_level; logs are JSON lines on stderr; uvicorn stops
    gracefully on SIGTERM/Ctrl-C.
    ``access_log=False`` where paths carry patient ids (the gateway: its audit log records requests)."""
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                log_config=log_config(settings.log_level), timeout_graceful_shutdown=10, access_log=access_log)
