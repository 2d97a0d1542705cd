"""Settled spend per key, day and instance: the record, its log port and the in-memory twin.

Each router instance owns one running total per key and UTC day and publishes it after every
settlement to the compacted `stepline.keys.spend.v1` (key `<key_id>/<day>/<instance_id>`).
Every instance folds every record, keeping the largest total per (key, day, instance) and
summing over instances, so totals survive restarts (a restarted instance starts a new counter;
the old one stays in the sum) and no instance ever overwrites another's spend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

__all__ = ["InMemorySpendLog", "SpendLog", "SpendRecord", "SpendTotals"]


@dataclass(frozen=True, slots=True)
class SpendRecord:
    """One instance's settled spend for one key and UTC day (a running total)."""

    key_id: str
    tenant_id: str
    day: str
    instance_id: str
    settled: Decimal

    @property
    def record_key(self) -> str:
        """The compacted topic's record key."""
        return f"{self.key_id}/{self.day}/{self.instance_id}"


class SpendLog(Protocol):
    """Where an instance publishes its running totals."""

    async def record(self, record: SpendRecord) -> None:
        """Publish `record` (the latest total replaces the previous one of that instance)."""
        ...


class SpendTotals:
    """Settled spend per key and per tenant, per day and per month, summed over instances."""

    def __init__(self) -> None:
        self._latest: dict[str, Decimal] = {}
        self._key_day: dict[tuple[str, str], Decimal] = {}
        self._key_month: dict[tuple[str, str], Decimal] = {}
        self._tenant_day: dict[tuple[str, str], Decimal] = {}
        self._tenant_month: dict[tuple[str, str], Decimal] = {}

    def observe(self, record: SpendRecord) -> None:
        """Fold one record; an older (smaller) total of the same instance changes nothing."""
        previous = self._latest.get(record.record_key, Decimal(0))
        if record.settled <= previous:
            return
        self._latest[record.record_key] = record.settled
        delta = record.settled - previous
        month = record.day[:7]
        for table, key in (
            (self._key_day, (record.key_id, record.day)),
            (self._key_month, (record.key_id, month)),
            (self._tenant_day, (record.tenant_id, record.day)),
            (self._tenant_month, (record.tenant_id, month)),
        ):
            table[key] = table.get(key, Decimal(0)) + delta

    def key(self, key_id: str, day: str) -> tuple[Decimal, Decimal]:
        """(day, month) settled spend of a key."""
        return (
            self._key_day.get((key_id, day), Decimal(0)),
            self._key_month.get((key_id, day[:7]), Decimal(0)),
        )

    def tenant(self, tenant_id: str, day: str) -> tuple[Decimal, Decimal]:
        """(day, month) settled spend of a tenant, over all its keys."""
        return (
            self._tenant_day.get((tenant_id, day), Decimal(0)),
            self._tenant_month.get((tenant_id, day[:7]), Decimal(0)),
        )


class InMemorySpendLog:
    """The twin of the spend topic: every record reaches every subscriber at once."""

    def __init__(self) -> None:
        self.records: list[SpendRecord] = []
        self._subscribers: list[Callable[[SpendRecord], None]] = []

    def subscribe(self, observe: Callable[[SpendRecord], None]) -> None:
        """Deliver every past and future record to `observe`."""
        self._subscribers.append(observe)
        for record in self.records:
            observe(record)

    async def record(self, record: SpendRecord) -> None:
        """Keep `record` and hand it to every subscriber."""
        self.records.append(record)
        for observe in self._subscribers:
            observe(record)
