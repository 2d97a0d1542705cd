"""Wake-ups for live views: the projector says a run changed, SSE streams wait for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

__all__ = ["RunFeed"]


class RunFeed:
    """Per-run change notices inside one event loop (no payload: readers re-read the store)."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def changed(self, run_id: str) -> None:
        """Wake everyone waiting on `run_id`."""
        for event in self._waiters.pop(run_id, set()):
            event.set()

    async def wait(self, run_id: str, timeout_s: float) -> bool:
        """Wait until `run_id` changes or `timeout_s` passes; True when it changed."""
        event = asyncio.Event()
        self._waiters[run_id].add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
            return event.is_set()
        finally:
            waiting = self._waiters.get(run_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[run_id]
