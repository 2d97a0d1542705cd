"""Outcome store: durable intent ("started") and outcome ("completed") records per call.

The executor writes "started" before a tool runs and "completed" with the result after, so a
redelivered request can tell "done" (replay the result) from "maybe done" (re-run only if the
tool is idempotent) from "never started".
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from stepline_executor.model import Outcome

__all__ = ["CallState", "InMemoryOutcomeStore", "OutcomeStore", "SqliteOutcomeStore", "StoredCall"]


class CallState(StrEnum):
    """Where a call got to."""

    STARTED = "started"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class StoredCall:
    """One call's record."""

    call_id: str
    tool: str
    state: CallState
    attempts: int
    outcome: Outcome | None
    # When the last attempt was started (None: never started, or not known).
    started_at: datetime | None = None


class OutcomeStore(Protocol):
    """Outbound port: durable per-call records; every write is durable when it returns."""

    async def get(self, call_id: str) -> StoredCall | None:
        """The record of `call_id`, if any."""

    async def mark_started(self, call_id: str, tool: str, at: datetime) -> None:
        """Record the intent to run `call_id` (bumps the attempt count on a re-run)."""

    async def mark_completed(self, call_id: str, tool: str, outcome: Outcome, at: datetime) -> None:
        """Record the final outcome of `call_id`."""


class InMemoryOutcomeStore:
    """`OutcomeStore` twin for unit tests."""

    def __init__(self) -> None:
        self.calls: dict[str, StoredCall] = {}

    async def get(self, call_id: str) -> StoredCall | None:
        """The record of `call_id`, if any."""
        return self.calls.get(call_id)

    async def mark_started(self, call_id: str, tool: str, at: datetime) -> None:
        """Record the intent to run `call_id`."""
        previous = self.calls.get(call_id)
        attempts = previous.attempts + 1 if previous else 1
        self.calls[call_id] = StoredCall(call_id, tool, CallState.STARTED, attempts, None, at)

    async def mark_completed(self, call_id: str, tool: str, outcome: Outcome, at: datetime) -> None:
        """Record the final outcome of `call_id`."""
        previous = self.calls.get(call_id)
        attempts = previous.attempts if previous else 0
        started = previous.started_at if previous else None
        self.calls[call_id] = StoredCall(
            call_id, tool, CallState.COMPLETED, attempts, outcome, started
        )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tool_calls (
    call_id TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('started', 'completed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    outcome_json TEXT,
    started_at TEXT,
    completed_at TEXT
)
"""


class SqliteOutcomeStore:
    """`OutcomeStore` in a local SQLite file (WAL, synchronous=FULL: a write survives a crash)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        # One connection shared by worker threads: serialise access.
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    async def get(self, call_id: str) -> StoredCall | None:
        """The record of `call_id`, if any."""
        return await asyncio.to_thread(self._get, call_id)

    async def mark_started(self, call_id: str, tool: str, at: datetime) -> None:
        """Record the intent to run `call_id`."""
        await asyncio.to_thread(
            self._write,
            "INSERT INTO tool_calls (call_id, tool, state, attempts, started_at)"
            " VALUES (?, ?, 'started', 1, ?)"
            " ON CONFLICT (call_id) DO UPDATE SET state = 'started',"
            " attempts = attempts + 1, started_at = excluded.started_at, outcome_json = NULL",
            (call_id, tool, at.isoformat()),
        )

    async def mark_completed(self, call_id: str, tool: str, outcome: Outcome, at: datetime) -> None:
        """Record the final outcome of `call_id`."""
        await asyncio.to_thread(
            self._write,
            "INSERT INTO tool_calls (call_id, tool, state, attempts, outcome_json, completed_at)"
            " VALUES (?, ?, 'completed', 0, ?, ?)"
            " ON CONFLICT (call_id) DO UPDATE SET state = 'completed',"
            " outcome_json = excluded.outcome_json, completed_at = excluded.completed_at",
            (call_id, tool, json.dumps(outcome.to_json_dict()), at.isoformat()),
        )

    def _get(self, call_id: str) -> StoredCall | None:
        with self._lock:
            row = self._db.execute(
                "SELECT call_id, tool, state, attempts, outcome_json, started_at FROM tool_calls"
                " WHERE call_id = ?",
                (call_id,),
            ).fetchone()
        if row is None:
            return None
        outcome = Outcome.from_json_dict(json.loads(row[4])) if row[4] else None
        started = datetime.fromisoformat(row[5]) if row[5] else None
        return StoredCall(row[0], row[1], CallState(row[2]), int(row[3]), outcome, started)

    def _write(self, sql: str, params: tuple[str, ...]) -> None:
        with self._lock:
            self._db.execute(sql, params)
