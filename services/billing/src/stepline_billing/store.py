"""Outbound port: the ledger store (append-only, idempotent on usage id) and its in-memory twin."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from stepline_billing.ledger import Kind, LedgerEntry
from stepline_billing.rollups import Granularity, Rollup, RollupKey, keys_for

__all__ = [
    "Cursor",
    "InMemoryLedgerStore",
    "LedgerQuery",
    "LedgerStore",
    "Recorded",
    "RunTotals",
    "Spend",
]


@dataclass(frozen=True, slots=True)
class RunTotals:
    """Recorded spend of one run."""

    tenant_id: str
    run_id: str
    spent: Decimal
    recorded_calls: int
    unpriced_calls: int


@dataclass(frozen=True, slots=True)
class Recorded:
    """Outcome of `record`: whether the row is new, and the totals it now counts towards."""

    inserted: bool
    rollups: tuple[Rollup, ...]
    run: RunTotals | None


@dataclass(frozen=True, slots=True)
class Spend:
    """Priced spend and the number of unpriced calls in a period."""

    cost: Decimal
    unpriced_calls: int


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position after the last entry of a page (ledger order: occurred_at, usage_id)."""

    occurred_at: datetime
    usage_id: str


@dataclass(frozen=True, slots=True)
class LedgerQuery:
    """Filters of a ledger listing; empty or None means no filter."""

    tenant_id: str = ""
    run_id: str = ""
    start: datetime | None = None
    end: datetime | None = None
    kind: Kind | None = None


class LedgerStore(Protocol):
    """Where the ledger lives. `record` commits before it returns: the caller may then ack."""

    def record(self, entry: LedgerEntry) -> Recorded:
        """Insert `entry` unless its usage id exists; update rollups and run totals; commit."""

    def record_many(self, entries: Sequence[LedgerEntry]) -> list[Recorded]:
        """`record` for each entry in order, committed together in one transaction."""

    def spent(self, tenant_id: str, start: datetime, end: datetime) -> Spend:
        """Spend of `tenant_id` whose day lies in [start, end) (day-aligned bounds)."""

    def version(self, tenant_id: str) -> int:
        """Number of ledger rows of `tenant_id`; grows with every new row."""

    def run_totals(self, tenant_id: str, run_id: str) -> RunTotals | None:
        """Recorded spend of one run, or None when it has no rows."""

    def entries(
        self, query: LedgerQuery, limit: int, after: Cursor | None = None
    ) -> list[LedgerEntry]:
        """Up to `limit` entries matching `query`, oldest first, after `after`."""

    def rollups(
        self,
        tenant_id: str,
        granularity: Granularity,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Rollup]:
        """Stored rollups of a tenant whose window starts in [start, end)."""

    def tenants(self) -> list[str]:
        """Every tenant with ledger rows."""

    def close(self) -> None:
        """Release the connection."""


def matches(entry: LedgerEntry, query: LedgerQuery) -> bool:
    """`entry` passes the filters of `query`."""
    usage = entry.usage
    return (
        (not query.tenant_id or usage.tenant_id == query.tenant_id)
        and (not query.run_id or usage.run_id == query.run_id)
        and (query.start is None or usage.occurred_at >= query.start)
        and (query.end is None or usage.occurred_at < query.end)
        and (query.kind is None or usage.kind is query.kind)
    )


class InMemoryLedgerStore:
    """`LedgerStore` twin for tests: same semantics, dictionaries instead of tables."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, LedgerEntry] = {}
        self._rollups: dict[RollupKey, Rollup] = {}
        self._runs: dict[tuple[str, str], RunTotals] = {}
        self.fail_next_record = False

    def record(self, entry: LedgerEntry) -> Recorded:
        """Insert `entry` unless its usage id exists; update rollups and run totals."""
        [recorded] = self.record_many([entry])
        return recorded

    def _record(self, entry: LedgerEntry) -> Recorded:
        usage = entry.usage
        inserted = usage.usage_id not in self._entries
        if inserted:
            self._entries[usage.usage_id] = entry
            for key in keys_for(entry):
                self._rollups[key] = self._rollups.get(key, Rollup(key)).add(entry)
            if usage.run_id:
                run_key = (usage.tenant_id, usage.run_id)
                old = self._runs.get(
                    run_key, RunTotals(usage.tenant_id, usage.run_id, Decimal(0), 0, 0)
                )
                self._runs[run_key] = replace(
                    old,
                    spent=old.spent + (entry.cost or Decimal(0)),
                    recorded_calls=old.recorded_calls + 1,
                    unpriced_calls=old.unpriced_calls + (0 if entry.priced else 1),
                )
        stored = self._entries[usage.usage_id]
        rollups = tuple(self._rollups[key] for key in keys_for(stored))
        run = self._runs.get((usage.tenant_id, usage.run_id))
        return Recorded(inserted, rollups, run)

    def record_many(self, entries: Sequence[LedgerEntry]) -> list[Recorded]:
        """`record` for each entry in order (all or nothing, like the SQL stores)."""
        with self._lock:
            if self.fail_next_record:
                self.fail_next_record = False
                raise ConnectionError("injected database failure")
            saved = (dict(self._entries), dict(self._rollups), dict(self._runs))
            try:
                return [self._record(entry) for entry in entries]
            except BaseException:
                self._entries, self._rollups, self._runs = saved
                raise

    def spent(self, tenant_id: str, start: datetime, end: datetime) -> Spend:
        """Spend of `tenant_id` from daily rollups in [start, end)."""
        with self._lock:
            days = [
                r
                for k, r in self._rollups.items()
                if k.tenant_id == tenant_id
                and k.granularity is Granularity.DAILY
                and start <= k.window_start < end
            ]
            return Spend(
                sum((r.cost for r in days), Decimal(0)), sum(r.unpriced_calls for r in days)
            )

    def version(self, tenant_id: str) -> int:
        """Number of rows of `tenant_id`."""
        with self._lock:
            return sum(1 for e in self._entries.values() if e.usage.tenant_id == tenant_id)

    def run_totals(self, tenant_id: str, run_id: str) -> RunTotals | None:
        """Totals of one run."""
        with self._lock:
            return self._runs.get((tenant_id, run_id))

    def entries(
        self, query: LedgerQuery, limit: int, after: Cursor | None = None
    ) -> list[LedgerEntry]:
        """Matching entries, oldest first."""
        with self._lock:
            found = sorted(
                (e for e in self._entries.values() if matches(e, query)),
                key=lambda e: (e.usage.occurred_at, e.usage.usage_id),
            )
        if after is not None:
            found = [
                e
                for e in found
                if (e.usage.occurred_at, e.usage.usage_id) > (after.occurred_at, after.usage_id)
            ]
        return found[:limit]

    def rollups(
        self,
        tenant_id: str,
        granularity: Granularity,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Rollup]:
        """Stored rollups of a tenant in a window range."""
        with self._lock:
            found = [
                r
                for k, r in self._rollups.items()
                if k.tenant_id == tenant_id
                and k.granularity is granularity
                and (start is None or k.window_start >= start)
                and (end is None or k.window_start < end)
            ]
        return sorted(found, key=lambda r: (r.key.window_start, r.key.rollup_id))

    def tenants(self) -> list[str]:
        """Tenants with rows."""
        with self._lock:
            return sorted({e.usage.tenant_id for e in self._entries.values()})

    def close(self) -> None:
        """Nothing to release."""

    def corrupt_rollup(self, key: RollupKey, cost: Decimal) -> None:
        """Overwrite a rollup's cost, so tests can see reconciliation catch drift."""
        with self._lock:
            self._rollups[key] = replace(self._rollups[key], cost=cost)

    def sequence(self) -> Sequence[LedgerEntry]:
        """Every entry in insertion order."""
        with self._lock:
            return list(self._entries.values())
