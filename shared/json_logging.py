"""Structured logs: one JSON object per line on stderr, for the services and uvicorn alike.

Log messages never carry image bytes, raw patient ids or keys: the gateway logs request ids
and service names only, and its access log is off (paths hold patient ids; the audit log
records requests with a keyed hash of the id instead).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def log_config(level: str) -> dict:
    """A ``logging.config.dictConfig`` (also given to uvicorn) sending every logger through ``JsonFormatter``."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    uvicorn_logger = {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {"uvicorn": uvicorn_logger, "uvicorn.error": {"level": level.upper()},
                    "uvicorn.access": uvicorn_logger,
                    "httpx": {"level": "WARNING"}},  # one INFO line per call to a service is noise
    }
