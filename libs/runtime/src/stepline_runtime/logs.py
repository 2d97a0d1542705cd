"""Structured JSON logging that carries the run and tenant of the event being handled."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "bind", "configure_logging", "redact"]

_context: ContextVar[dict[str, str]] = ContextVar("stepline_log_context", default={})  # noqa: B039

# Attributes every LogRecord has; anything else passed via `extra=` is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# Secrets must never reach a log line, whatever a library puts in an error message.
_SECRET_PATTERNS = (
    re.compile(
        r"(?i)(authorization|x-api-key|api[_-]?key|password|secret|token)"
        r"(\"?\s*[:=]\s*\"?)(Bearer\s+)?[^\s\",']+"
    ),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
)


def redact(text: str) -> str:
    """`text` with credentials replaced by `***`."""
    for pattern in _SECRET_PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
        else:
            text = pattern.sub("***", text)
    return text


@contextmanager
def bind(**fields: str) -> Iterator[None]:
    """Add fields (e.g. `run_id`, `tenant_id`) to every log line inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, bound context, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a JSON line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": redact(record.getMessage()),
            **_context.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool) else redact(str(value))
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Route the root logger to stderr in the chosen format; call once, in the composition root."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every retriable coordinator hiccup at WARNING/ERROR; keep its noise down.
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))
