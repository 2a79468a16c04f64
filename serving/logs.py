"""Logging: one format for the app and uvicorn, text or JSON (``MODSERVE_LOG_FORMAT``).

JSON lines carry ``ts``, ``level``, ``logger``, ``message`` and any structured fields a
record has (the access log's ``request_id``, ``method``, ``path``, ``status``,
``latency_ms``, ``model``, ``inputs``, ``tokens``): one object per line, for log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STRUCTURED = ("request_id", "method", "path", "status", "latency_ms", "model", "inputs", "tokens")
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in STRUCTURED:
            if (value := getattr(record, key, None)) is not None:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Root handler on stderr in ``fmt`` ("text" | "json"); uvicorn's loggers go through it
    (their own handlers removed), so every line of the process has one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in UVICORN_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
