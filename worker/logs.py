"""Logging set-up: readable lines by default, JSON lines on request."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from opentelemetry import trace

from . import tenancy


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any ``extra`` fields given to the log call."""

    _standard = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in self._standard})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ContextFilter(logging.Filter):
    """Adds ``host_id``, inside a span ``trace_id``, and inside a command under tenancy its
    ``sender``, to every record (JSON logs show them)."""

    def __init__(self, host_id: str) -> None:
        super().__init__()
        self.host_id = host_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.host_id = self.host_id
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
        sender = tenancy.current()
        if sender is not None:
            record.sender = sender.user
        return True


def setup_logging(level: str = "INFO", json_lines: bool = False, host_id: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(host_id))
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aio-pika/aiormq are chatty at INFO about reconnects; warnings still show.
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
