"""Which calls have been cancelled: remembered so calls still queued behind a cancel never run."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["CancelBook"]


@dataclass(frozen=True, slots=True)
class _Cancel:
    call_ids: frozenset[str] | None  # None: every call of the run
    sequence: int
    reason: str


class CancelBook:
    """Cancellations per run, bounded (oldest runs forgotten first)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._runs: OrderedDict[str, list[_Cancel]] = OrderedDict()
        self._capacity = capacity

    def add(self, run_id: str, call_ids: frozenset[str] | None, sequence: int, reason: str) -> None:
        """Remember a cancellation of `call_ids` (None = all) of `run_id` at `sequence`."""
        self._runs.setdefault(run_id, []).append(_Cancel(call_ids, sequence, reason))
        self._runs.move_to_end(run_id)
        while len(self._runs) > self._capacity:
            self._runs.popitem(last=False)

    def reason(self, run_id: str, call_id: str, sequence: int) -> str | None:
        """Why `call_id` (requested at `sequence`) is cancelled, or None when it is not.

        A cancel naming the call always applies; a cancel of "every call of the run" applies to
        requests before it in the partition (a later request is a new decision of the planner).
        """
        for cancel in self._runs.get(run_id, ()):
            if cancel.call_ids is not None:
                if call_id in cancel.call_ids:
                    return cancel.reason
            elif cancel.sequence < 0 or sequence < 0 or sequence < cancel.sequence:
                return cancel.reason
        return None
