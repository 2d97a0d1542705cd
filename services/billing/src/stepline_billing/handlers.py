"""Inbound port: `UsageRecorded` → ledger (committed) → `UsageRollup` and `BudgetState` records.

A fetched batch is written to the ledger in one transaction (`prepare_batch`), and what it
changed is published once per tenant: each touched rollup at its latest totals and one budget
state naming every run the batch settled (`stepline_billing.coalesce`). The first record of the
tenant handled carries that publication; the others return nothing once the broker has
acknowledged it (`AcknowledgingPublisher` tells). Why no record is committed uncovered: a record
returns nothing only when a publication computed *after* its row was written is acknowledged,
and a record handled before that (or whose publication failed, e.g. its carrier was
dead-lettered) carries the publication itself. A redelivery after a crash is a new batch, which
publishes the latest state again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from stepline.v1 import usage_pb2
from stepline_billing.budgets import Budget, BudgetConfig
from stepline_billing.coalesce import TenantChanges, changes_by_tenant
from stepline_billing.convert import budget_to_proto, rollup_to_proto, usage_from_proto
from stepline_billing.ledger import LedgerEntry, PricingError, price
from stepline_billing.queries import budget, tenant_budget
from stepline_billing.rollups import Rollup
from stepline_billing.store import LedgerStore, Recorded
from stepline_pricebook import PriceBook
from stepline_runtime.atleastonce import Publisher
from stepline_runtime.codec import Cause, InvalidRecordError, decode, encode
from stepline_runtime.headers import HeaderName
from stepline_runtime.metrics import record_cost
from stepline_runtime.records import InboundRecord, OutboundRecord

__all__ = ["AcknowledgingPublisher", "OutputTopics", "UsageHandler"]

log = logging.getLogger(__name__)

_Coordinates = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class OutputTopics:
    """Where billing publishes (namespaced names)."""

    rollups: str
    budgets: str


@dataclass(eq=False, slots=True)
class _Publication:
    """The states one batch left for one tenant, and whether the broker acknowledged them."""

    outputs: list[OutboundRecord]
    ids: frozenset[str]
    # The batch's records of this tenant not handled yet; at 0 the publication is forgotten.
    unhandled: int = 0
    acknowledged: bool = False


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A record's ledger result written ahead by `prepare_batch`, and its tenant's publication."""

    entry: LedgerEntry
    recorded: Recorded
    publication: _Publication


@dataclass(slots=True)
class _Batch:
    """What `prepare_batch` computes off the event loop: ledger results and budget states."""

    results: list[Recorded] = field(default_factory=list)
    changes: list[TenantChanges] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)


class UsageHandler:
    """Records usage in the ledger and returns the rollups and budget states it changed."""

    def __init__(
        self,
        store: LedgerStore,
        book: PriceBook,
        budgets: BudgetConfig,
        topics: OutputTopics,
        clock: Callable[[], datetime],
        source: str = "billing",
    ) -> None:
        self._store = store
        self._book = book
        self._budgets = budgets
        self._topics = topics
        self._clock = clock
        self._source = source
        # Ledger results written ahead by `prepare_batch`, by record coordinates, until handled.
        self._prepared: dict[_Coordinates, _Prepared] = {}
        # Publications handed to the producer and not acknowledged yet, by their event ids.
        self._awaiting: dict[frozenset[str], _Publication] = {}

    async def prepare_batch(self, records: Sequence[InboundRecord]) -> None:
        """Write a batch's ledger rows in one transaction and compute what it changed.

        Records that do not decode or price are left to `on_usage_recorded` (the dead-letter
        path); if the transaction fails, each record writes and publishes on its own as before.
        """
        entries: list[tuple[_Coordinates, LedgerEntry]] = []
        for record in records:
            try:
                entries.append((_coordinates(record), self._entry(record)))
            except InvalidRecordError:
                continue
        if not entries:
            return
        now = self._clock()
        batch = await asyncio.to_thread(self._record_batch, [e for _, e in entries], now)
        publications = {
            changes.tenant_id: self._publication(changes, state, now)
            for changes, state in zip(batch.changes, batch.budgets, strict=True)
        }
        for (coordinates, entry), recorded in zip(entries, batch.results, strict=True):
            earlier = self._prepared.get(coordinates)
            if earlier is not None:
                # Prepared by an earlier batch and never handled (its partition left and came
                # back, or it was fetched twice): this batch's publication replaces that one.
                self._forget(earlier.publication)
                if earlier.recorded.inserted:
                    # Still the first insertion, for the cost metric.
                    recorded = replace(recorded, inserted=True)
            publication = publications[entry.usage.tenant_id]
            publication.unhandled += 1
            self._prepared[coordinates] = _Prepared(entry, recorded, publication)

    def _record_batch(self, entries: list[LedgerEntry], now: datetime) -> _Batch:
        """The ledger transaction, then one budget per tenant (runs in a worker thread)."""
        batch = _Batch(self._store.record_many(entries))
        batch.changes = changes_by_tenant(zip(entries, batch.results, strict=True))
        batch.budgets = [
            tenant_budget(self._store, self._budgets, c.tenant_id, now, c.runs)
            for c in batch.changes
        ]
        return batch

    def _publication(self, changes: TenantChanges, state: Budget, now: datetime) -> _Publication:
        outputs = self._outputs(changes.rollups, state, now)
        return _Publication(outputs, frozenset(_event_id(o) for o in outputs))

    def _entry(self, record: InboundRecord) -> LedgerEntry:
        message = decode(record, [usage_pb2.UsageRecorded]).message
        usage = usage_from_proto(message, record.timestamp_ms)
        try:
            return price(usage, self._book)
        except PricingError as error:
            raise InvalidRecordError(Cause.INVALID, str(error)) from error

    async def on_usage_recorded(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        """Insert idempotently and commit *before* returning: the runtime acks after we return.

        Returns the states covering this record unless an acknowledged publication already
        covers it (see the module docstring).
        """
        prepared = self._prepared.pop(_coordinates(record), None)
        if prepared is None:
            # Not prepared (its batch transaction failed, or this is a retry): on its own.
            return await self._on_its_own(record)
        self._count(prepared.entry, prepared.recorded)
        publication = prepared.publication
        if publication.acknowledged:
            self._forget(publication)
            return []
        self._awaiting[publication.ids] = publication
        self._forget(publication)
        return publication.outputs

    def _forget(self, publication: _Publication) -> None:
        """One record of `publication` is handled; after its last, drop it from `_awaiting`."""
        publication.unhandled -= 1
        # No record is left to ask whether it was acknowledged.
        if publication.unhandled <= 0 and self._awaiting.get(publication.ids) is publication:
            del self._awaiting[publication.ids]

    async def _on_its_own(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        entry = self._entry(record)
        recorded = await asyncio.to_thread(self._store.record, entry)
        self._count(entry, recorded)
        usage = entry.usage
        now = self._clock()
        state = await asyncio.to_thread(
            budget, self._store, self._budgets, usage.tenant_id, now, usage.run_id
        )
        return self._outputs(recorded.rollups, state, now)

    def _count(self, entry: LedgerEntry, recorded: Recorded) -> None:
        usage = entry.usage
        if recorded.inserted:
            # Counted once per usage id, like the ledger: a redelivery inserts nothing.
            record_cost(
                usage.tenant_id,
                usage.kind.value,
                usage.provider,
                usage.model or usage.tool,
                entry.currency,
                entry.cost,
            )
        else:
            # Still republished: the previous delivery may have died before publishing.
            log.info(
                "usage already recorded",
                extra={
                    "usage_id": usage.usage_id,
                    "tenant_id": usage.tenant_id,
                    "run_id": usage.run_id,
                },
            )

    def acknowledged(self, records: Sequence[OutboundRecord]) -> None:
        """The broker acknowledged `records`: a publication among them covers its batch."""
        if not self._awaiting or not records:
            return
        publication = self._awaiting.pop(frozenset(_event_id(r) for r in records), None)
        if publication is not None:
            publication.acknowledged = True

    def _outputs(
        self, rollups: Sequence[Rollup], state: Budget, now: datetime
    ) -> list[OutboundRecord]:
        tenant = state.tenant_id
        outputs = [
            encode(
                self._topics.rollups,
                tenant,
                rollup_to_proto(rollup, self._book.currency, now),
                event_id=f"{rollup.key.rollup_id}@{rollup.calls}",
                source=self._source,
                tenant_id=tenant,
                time=now,
            )
            for rollup in rollups
        ]
        outputs.append(
            encode(
                self._topics.budgets,
                tenant,
                budget_to_proto(state, self._book.currency),
                event_id=f"{tenant}@{state.version}",
                source=self._source,
                tenant_id=tenant,
                time=now,
            )
        )
        return outputs


class AcknowledgingPublisher:
    """A `Publisher` that tells the usage handler which outputs the broker acknowledged.

    Without it every record of a batch publishes its tenant's states (correct, not coalesced).
    """

    def __init__(self, inner: Publisher, acknowledged: Callable[[Sequence[OutboundRecord]], None]):
        self._inner = inner
        self._acknowledged = acknowledged

    async def send(self, records: Sequence[OutboundRecord]) -> Awaitable[None]:
        """Hand `records` over; the result resolves (and reports them) once all are acked."""
        return self._reported(await self._inner.send(records), records)

    async def _reported(self, pending: Awaitable[None], records: Sequence[OutboundRecord]) -> None:
        await pending
        self._acknowledged(records)

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Produce `records`; raise if any was not acknowledged."""
        await (await self.send(records))


def _event_id(record: OutboundRecord) -> str:
    for name, value in record.headers:
        if name == HeaderName.ID:
            return value.decode()
    return ""


def _coordinates(record: InboundRecord) -> _Coordinates:
    return (record.topic, record.partition, record.offset)
