"""Clock port: wall time for records, monotonic time for deadlines, and sleeping."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Time as the router sees it."""

    def now(self) -> datetime:
        """Wall-clock time (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """`datetime.now(UTC)`."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """`asyncio.sleep`."""
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """Twin for tests: time moves only when told to (or when the code under test sleeps)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 11, 1, tzinfo=UTC)
        self._elapsed = 0.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        """Start time plus elapsed seconds."""
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        """Elapsed seconds."""
        return self._elapsed

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._elapsed += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the sleep and advance time instead of waiting."""
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)
