"""Structured JSON logging that carries the run and tenant of the event being handled."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "JsonFormatter",
    "RepeatFilter",
    "adopt_library_loggers",
    "bind",
    "configure_logging",
    "flush_repeats",
    "redact",
]

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
    # Google API keys (Gemini) have a fixed shape: echoed bare in an error, still redacted.
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"),
)


# Every secret pattern above contains one of these: text without any is returned as it is,
# one scan instead of one per pattern (every log line's message and fields go through here).
_MAYBE_SECRET = re.compile(r"(?i)authorization|api|password|secret|token|sk-|AIza")
# One encoder for every line, not one built per `json.dumps` call with options.
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def redact(text: str) -> str:
    """`text` with credentials replaced by `***`."""
    if not _MAYBE_SECRET.search(text):
        return text
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
        return _ENCODER.encode(entry)


@dataclass
class _Window:
    """One distinct warning/error line: when its window opened, how often it came since."""

    opened: float
    seen: int
    template: logging.LogRecord


def _identity(record: logging.LogRecord) -> tuple[object, ...]:
    """What makes two log lines the same line: everything but the time."""
    extras = tuple(
        sorted(
            (key, repr(value))
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")
        )
    )
    error = repr(record.exc_info[1]) if record.exc_info else ""
    return (record.name, record.levelno, record.getMessage(), extras, error)


class RepeatFilter(logging.Filter):
    """Rate-limits identical warning and error lines, so an outage cannot flood the log.

    The same line (logger, level, message, extra fields and exception; not the time) passes
    `burst` times per `window_s`; further copies are
    counted, and when the window ends one summary line says how many were held back. Lines
    below `level` always pass. Attach it to a handler (`attach`), which also emits summaries.
    """

    def __init__(
        self,
        *,
        burst: int = 3,
        window_s: float = 10.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._burst = burst
        self._window_s = window_s
        self._level = level
        self._clock = clock
        self._windows: dict[tuple[object, ...], _Window] = {}
        self._lock = threading.Lock()
        self._emit: Callable[[logging.LogRecord], object] | None = None

    def attach(self, handler: logging.Handler) -> None:
        """Filter `handler`'s records and write summaries through it."""
        handler.addFilter(self)
        self._emit = handler.handle

    def filter(self, record: logging.LogRecord) -> bool:
        """False when `record` repeats a line already shown `burst` times in this window."""
        if getattr(record, "_stepline_summary", False):
            return True
        self.flush()
        if record.levelno < self._level:
            return True
        key = _identity(record)
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(self._clock(), 0, record)
            window.seen += 1
            return window.seen <= self._burst

    def flush(self, *, everything: bool = False) -> None:
        """Write a summary for every window that ended (or all of them) and forget it."""
        if not self._windows:
            return  # nothing held back: the common case, checked on every line without the lock
        now = self._clock()
        with self._lock:
            ended = [
                key
                for key, window in self._windows.items()
                if everything or now - window.opened >= self._window_s
            ]
            closed = [(self._windows.pop(key), now) for key in ended]
        for window, at in closed:
            held = window.seen - self._burst
            if held > 0 and self._emit is not None:
                self._emit(self._summary(window, held, at))

    def _summary(self, window: _Window, held: int, now: float) -> logging.LogRecord:
        first = window.template
        summary = logging.LogRecord(
            first.name,
            first.levelno,
            first.pathname,
            first.lineno,
            "%s (repeated %d more times in %.0f s, not shown)",
            (first.getMessage(), held, now - window.opened),
            None,
        )
        summary.repeated = held
        summary._stepline_summary = True
        return summary


_repeats: RepeatFilter | None = None
# Handlers a library installs to print on its own (FastStream's colour formatter on stdout).
_CONSOLE = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


def adopt_library_loggers() -> None:
    """Route every library logger through the root (JSON) handler: drop their console handlers.

    Libraries such as FastStream or uvicorn attach their own coloured stream handlers and stop
    propagation; call again after building anything that may have done so.
    """
    root = logging.getLogger()
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger):
            continue
        console = [
            h
            for h in logger.handlers
            if isinstance(h, logging.StreamHandler)
            and getattr(h, "stream", None) in _CONSOLE
            and h not in root.handlers
        ]
        for handler in console:
            logger.removeHandler(handler)
        if console or not logger.handlers:
            logger.propagate = True


def flush_repeats(*, everything: bool = False) -> None:
    """Write the summaries of repeated lines whose window ended (all of them at shutdown)."""
    if _repeats is not None:
        _repeats.flush(everything=everything)


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Route every log line (libraries and warnings too) to stderr in the chosen format.

    Repeated identical warnings and errors are rate-limited (`RepeatFilter`). Call once, at
    the start of the process (`run_service` does).
    """
    global _repeats
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    _repeats = RepeatFilter()
    _repeats.attach(handler)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Neither format writes the caller's file and line, thread or process: the logging module
    # is told not to work them out for every record (its documented optimisation switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root.setLevel(level.upper())
    # aiokafka logs every retriable coordinator hiccup at WARNING/ERROR; keep its noise down.
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))
    logging.captureWarnings(True)
    adopt_library_loggers()
