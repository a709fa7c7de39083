"""Logs for the services and uvicorn alike, on stderr, in one of two formats chosen by one switch:

``LOG_FORMAT=json``  one JSON object per line (time, level, service, logger, message[, exception]),
                     for log collectors; the default when stderr is not a terminal (containers, files, pipes)
``LOG_FORMAT=text``  one human-readable line per record; the default when stderr is a terminal

Log messages never carry image bytes, raw patient ids or keys: the gateway logs request ids
and service names only, and its access log is off (paths hold patient ids; the audit log
records requests with a keyed hash of the id instead).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import TextIO

LOG_FORMATS = ("json", "text")


def log_format(value: str | None = None, stream: TextIO | None = None) -> str:
    """``value`` (else ``LOG_FORMAT``) as ``json`` or ``text``; unset or empty: ``text`` when ``stream``
    (stderr, where the logs go) is a terminal, else ``json``. Anything else is a configuration error."""
    value = (os.environ.get("LOG_FORMAT", "") if value is None else value).strip().lower()
    if not value:
        stream = sys.stderr if stream is None else stream
        try:
            return "text" if stream.isatty() else "json"
        except (AttributeError, ValueError):
            return "json"
    if value not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)} (or unset), not {value!r}")
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str | None = None):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
        }
        if self.service:
            entry["service"] = self.service
        entry["logger"] = record.name
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-11-28 14:45:58.316 WARNING  gateway  gateway.clients: message`` in local time; a traceback
    follows on its own lines."""

    def __init__(self, service: str | None = None):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).astimezone()
        line = f"{when:%Y-%m-%d %H:%M:%S}.{when.microsecond // 1000:03d} {record.levelname:<8}"
        if self.service:
            line += f" {self.service:<15}"
        line += f" {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def log_config(level: str, fmt: str | None = None, service: str | None = None) -> dict:
    """A ``logging.config.dictConfig`` (also given to uvicorn) sending every logger through one formatter:
    ``fmt`` ``json`` or ``text`` (None: ``log_format()``), records tagged with ``service``."""
    fmt = log_format(fmt)
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    handler = {"class": "logging.StreamHandler", "formatter": fmt, "stream": "ext://sys.stderr"}
    uvicorn_logger = {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {fmt: {"()": formatter, "service": service}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {"uvicorn": uvicorn_logger, "uvicorn.error": {"level": level.upper()},
                    "uvicorn.access": uvicorn_logger,
                    "httpx": {"level": "WARNING"}},  # one INFO line per call to a service is noise
    }
