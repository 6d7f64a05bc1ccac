"""Logging configuration, called only by entry points (the CLI).

Log lines carry internal ids (UUIDs, hashes) and never patient data: modules log with
``%s`` arguments and ids only, SQLAlchemy hides bound parameters, and the HTTP access log
records the route template (``/fhir/Patient/{id}``), never the raw path or query string.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            doc["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(doc, default=str)


class NoTracebackFormatter(logging.Formatter):
    """Text lines; exceptions reduced to their type.

    Tracebacks and exception messages can quote data (a database error quoting a duplicate
    key, a parser quoting the offending segment), so only the exception type is printed.
    """

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging API name
        exc_type = ei[0]
        return f"  exception: {exc_type.__name__ if exc_type else 'unknown'}"


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once, for the process's entry point.

    Args:
        level: root level name. Defaults to ``INFO``.
        fmt: ``text`` or ``json``. Defaults to ``text``.
    """
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    else:
        formatter = NoTracebackFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party loggers that would otherwise echo payloads at DEBUG.
    for noisy in ("pynetdicom", "hl7apy", "multipart"):
        # At DEBUG these print datasets, bodies or result rows; INFO is as far as they go.
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    # SQL statements (parameters hidden, never result rows) only when debugging.
    sql_level = logging.INFO if root.level <= logging.DEBUG else logging.WARNING
    logging.getLogger("sqlalchemy.engine").setLevel(sql_level)
    for chatty in ("httpx", "httpx2", "httpcore"):
        # httpx logs every request's full URL, query string included, at INFO.
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("uvicorn.access").disabled = True
    logging.captureWarnings(True)
