"""Fault injection for crash tests, off unless a setting turns it on.

`STEPLINE_FAULT_KILL_AFTER_RECORDS=N` makes any at-least-once service SIGKILL itself right
after its N-th record was handled (the handler's side effects done, e.g. billing's ledger
commit) and before the outputs are published and the offset committed: the window in which
a crash must not charge, send or record anything twice. `run_service` installs it.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

__all__ = ["install", "record_handled"]

log = logging.getLogger(__name__)


class _KillAfter:
    def __init__(self, records: int, kill: Callable[[], None]) -> None:
        self._left = records
        self._kill = kill

    def handled(self, offset: int) -> None:
        self._left -= 1
        if self._left <= 0:
            log.warning("fault hook: SIGKILL after a handled record", extra={"offset": offset})
            logging.shutdown()
            self._kill()


_hook: _KillAfter | None = None


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(kill_after_records: int, kill: Callable[[], None] = _sigkill) -> None:
    """Kill the process after that many handled records (0 removes the hook)."""
    global _hook
    _hook = _KillAfter(kill_after_records, kill) if kill_after_records > 0 else None


def record_handled(offset: int) -> None:
    """Called by the at-least-once consumer after each successful handler call."""
    if _hook is not None:
        _hook.handled(offset)
