"""One switch, LOG_FORMAT, picks JSON lines or human-readable lines for every service."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest

from shared.json_logging import log_config, log_format
from shared.serving import service_name


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_default_follows_the_terminal(monkeypatch):
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    assert log_format(stream=_Terminal()) == "text"
    assert log_format(stream=io.StringIO()) == "json"
    monkeypatch.setenv("LOG_FORMAT", "")
    assert log_format(stream=io.StringIO()) == "json"


def test_explicit_switch_wins(monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert log_format(stream=_Terminal()) == "json"
    monkeypatch.setenv("LOG_FORMAT", " TEXT ")
    assert log_format(stream=io.StringIO()) == "text"
    monkeypatch.setenv("LOG_FORMAT", "logfmt")
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        log_format()


def _emit(fmt: str, capsys) -> str:
    """Log through the formatter and handler that ``log_config`` describes, attached to one logger.

    Not through ``logging.config.dictConfig``: that closes every existing handler, and absl's (present once
    TensorFlow was imported by an earlier test) then closes pytest's captured stderr. The real services'
    dictConfig path is tested over real processes in tests/integration/test_log_format.py."""
    import sys

    config = log_config("info", fmt, service="gateway")
    spec = dict(config["formatters"][fmt])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(spec.pop("()")(**spec))
    logger = logging.getLogger("gateway.test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("replica %s refused", "http://10.0.0.1:8001")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert config["handlers"]["stderr"]["stream"] == "ext://sys.stderr"
    return capsys.readouterr().err


def test_json_and_text_lines(capsys):
    lines = _emit("json", capsys).splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "WARNING" and first["service"] == "gateway" and first["logger"] == "gateway.test"
    assert first["message"] == "replica http://10.0.0.1:8001 refused"
    assert "RuntimeError: boom" in second["exception"]

    text = _emit("text", capsys)
    first_line = text.splitlines()[0]
    assert " WARNING " in first_line and " gateway " in first_line
    assert first_line.endswith("gateway.test: replica http://10.0.0.1:8001 refused")
    assert not first_line.startswith("{")
    assert "Traceback" in text and "RuntimeError: boom" in text


def test_service_names():
    from gateway.app import create_app

    assert service_name(create_app) == "gateway"

    def fake():
        pass

    fake.__module__ = "services.cell_classifier.app"
    assert service_name(fake) == "cell_classifier"
