"""Run a service's FastAPI app under uvicorn with its settings (the `python -m` entry points)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI


def run(create_app: Callable[..., FastAPI], settings) -> None:
    """``settings`` has host, port and log_level; uvicorn stops gracefully on SIGTERM/Ctrl-C."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=10)
