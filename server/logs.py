"""Log output as text or as one JSON object a line, and the effective settings at start-up.

A record may carry structured values as extra={"fields": {...}}: text lines end with them as
key=value pairs, JSON lines hold them as keys of their own.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from .settings import ServerSettings

log = logging.getLogger(__name__)

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _text_value(value) -> str:
    if value is None:
        return "-"
    text = str(value)
    # quoted when it would not read back as one token (a path from a request may hold anything)
    return json.dumps(text) if not text or any(c.isspace() or c in '"=' or not c.isprintable() for c in text) else text


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in (getattr(record, "fields", None) or {}).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """Every logger (uvicorn's included) to stderr in the chosen format. Leaves logging alone where
    the process has configured it already (an embedding application, a test runner)."""
    logging.basicConfig(level=level.upper(), handlers=[_stderr_handler(log_format)])


# The packages whose records a Ray Serve replica writes: Ray's worker has configured the root logger
# (WARNING) and Serve its own logger, so the server's request lines would be dropped there.
OWN_LOGGERS = ("server", "orpheus_local")


def configure_replica_logging(level: str, log_format: str) -> None:
    """In a Ray Serve replica: the server's own loggers to the replica's stderr, which Ray keeps in the
    worker's log file and forwards to the driver, in the chosen format."""
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [_stderr_handler(log_format)]
        logger.setLevel(level.upper())
        logger.propagate = False


def _stderr_handler(log_format: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def log_settings(settings: ServerSettings) -> None:
    """The settings in force, whatever set them. Secrets belong in SecretStr fields, which this dump
    masks; API keys are never settings, only the path of their file is."""
    log.info("settings", extra={"fields": settings.model_dump(mode="json")})
