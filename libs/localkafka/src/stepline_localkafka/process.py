"""Inspect and stop the broker process through /proc, by pid only (never by name)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = ["cmdline", "is_alive", "read_pid", "stop_pid"]


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file``, or None if missing or unreadable."""
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own child (avoids a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Field 3 (after the parenthesised command name) is the state; Z/X = dead.
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    """Arguments of ``pid`` from /proc (empty if gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def stop_pid(pid: int, grace: float = 30.0) -> tuple[bool, float]:
    """SIGTERM ``pid``, wait up to ``grace`` s, then SIGKILL; returns (graceful, seconds)."""
    started = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True, 0.0
    deadline = started + grace
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return True, time.monotonic() - started
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True, time.monotonic() - started
    kill_deadline = time.monotonic() + 10.0
    while is_alive(pid) and time.monotonic() < kill_deadline:
        time.sleep(0.1)
    return False, time.monotonic() - started
