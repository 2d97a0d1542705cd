"""Inbound port: `UsageRecorded` → ledger (committed) → `UsageRollup` and `BudgetState` records."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from stepline.v1 import usage_pb2
from stepline_billing.budgets import Budget, BudgetConfig
from stepline_billing.convert import budget_to_proto, rollup_to_proto, usage_from_proto
from stepline_billing.ledger import LedgerEntry, PricingError, price
from stepline_billing.queries import budget
from stepline_billing.store import LedgerStore, Recorded
from stepline_pricebook import PriceBook
from stepline_runtime.codec import Cause, InvalidRecordError, decode, encode
from stepline_runtime.logs import bind
from stepline_runtime.metrics import record_cost
from stepline_runtime.records import InboundRecord, OutboundRecord

__all__ = ["OutputTopics", "UsageHandler"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutputTopics:
    """Where billing publishes (namespaced names)."""

    rollups: str
    budgets: str


class UsageHandler:
    """Records usage in the ledger and returns the rollups and budget state it changed."""

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
        self._prepared: dict[tuple[str, int, int], Recorded] = {}

    async def prepare_batch(self, records: Sequence[InboundRecord]) -> None:
        """Write a batch's ledger rows in one transaction; `on_usage_recorded` then uses them.

        Records that do not decode or price are left to `on_usage_recorded` (the dead-letter
        path); if the transaction fails, each record writes its own row as before.
        """
        entries = []
        for record in records:
            try:
                entries.append((_coordinates(record), self._entry(record)))
            except InvalidRecordError:
                continue
        results = await asyncio.to_thread(self._store.record_many, [e for _, e in entries])
        for (coordinates, _), recorded in zip(entries, results, strict=True):
            earlier = self._prepared.get(coordinates)
            if earlier is not None and earlier.inserted:
                # Written by an earlier batch, never handled (its lane stopped on a failure):
                # still the first insertion, for the cost metric.
                recorded = replace(recorded, inserted=True)
            self._prepared[coordinates] = recorded

    def _entry(self, record: InboundRecord) -> LedgerEntry:
        message = decode(record, [usage_pb2.UsageRecorded]).message
        usage = usage_from_proto(message, record.timestamp_ms)
        try:
            return price(usage, self._book)
        except PricingError as error:
            raise InvalidRecordError(Cause.INVALID, str(error)) from error

    async def on_usage_recorded(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        """Insert idempotently and commit *before* returning: the runtime acks after we return."""
        entry = self._entry(record)
        usage = entry.usage
        with bind(tenant_id=usage.tenant_id, run_id=usage.run_id):
            recorded = self._prepared.pop(_coordinates(record), None)
            if recorded is None:
                recorded = await asyncio.to_thread(self._store.record, entry)
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
                # Still republish below: the previous delivery may have died before publishing.
                log.info("usage already recorded", extra={"usage_id": usage.usage_id})
            now = self._clock()
            state = await asyncio.to_thread(
                budget, self._store, self._budgets, usage.tenant_id, now, usage.run_id
            )
        return self._outputs(recorded, state, now)

    def _outputs(self, recorded: Recorded, state: Budget, now: datetime) -> list[OutboundRecord]:
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
            for rollup in recorded.rollups
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


def _coordinates(record: InboundRecord) -> tuple[str, int, int]:
    return (record.topic, record.partition, record.offset)
