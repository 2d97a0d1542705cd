"""A batch of usage is written to the ledger in one transaction, idempotent per usage id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import cast

import pytest

from stepline_billing.ledger import LedgerEntry
from stepline_billing.queries import reconcile
from stepline_billing.rollups import Granularity
from stepline_billing.sqlstore import SqliteLedgerStore
from stepline_billing.store import InMemoryLedgerStore, LedgerQuery, Recorded
from stepline_pricebook import PriceBook
from stepline_runtime.atleastonce import AtLeastOnce, InMemoryPublisher
from tests.billing.factories import handler, inbound, model_usage


class _Counting(InMemoryLedgerStore):
    """The in-memory store, counting transactions."""

    def __init__(self) -> None:
        super().__init__()
        self.transactions = 0

    def record_many(self, entries: Sequence[LedgerEntry]) -> list[Recorded]:
        self.transactions += 1
        return super().record_many(entries)


async def test_a_batch_is_one_transaction_and_a_repeated_usage_id_is_charged_once() -> None:
    store = _Counting()
    publisher = InMemoryPublisher()
    billing = handler(store)
    processor = AtLeastOnce(
        "billing", billing.on_usage_recorded, publisher, backoff_s=0, prepare=billing.prepare_batch
    )
    messages = [
        model_usage(f"call-{i}", run=f"run-{i % 2}", cost=Decimal("0.01")) for i in range(6)
    ]
    # The emitter retried call-0 and call-3: four of the eight records repeat two usage ids.
    records = [inbound(m, offset) for offset, m in enumerate([*messages, messages[0], messages[3]])]

    await processor.prepare(records)
    for record in records:
        await processor.process(record)

    assert store.transactions == 1
    assert len(store.sequence()) == 6
    [daily] = store.rollups("acme", Granularity.DAILY)
    assert (daily.calls, daily.cost) == (6, Decimal("0.06"))
    totals = store.run_totals("acme", "run-0")
    assert totals is not None
    assert (totals.recorded_calls, totals.spent) == (3, Decimal("0.03"))
    # Every record published its rollups and the tenant's budget state.
    assert sum(r.topic == "budgets" for r in publisher.records) == len(records)


async def test_a_failed_batch_transaction_falls_back_to_record_by_record() -> None:
    store = InMemoryLedgerStore()
    publisher = InMemoryPublisher()
    billing = handler(store)
    processor = AtLeastOnce(
        "billing", billing.on_usage_recorded, publisher, backoff_s=0, prepare=billing.prepare_batch
    )
    store.fail_next_record = True  # the batch transaction fails; each record then writes its row

    records = [inbound(model_usage(f"call-{i}"), i) for i in range(3)]
    await processor.prepare(records)
    for record in records:
        await processor.process(record)
    assert len(store.sequence()) == 3


def test_sqlite_batch_is_all_or_nothing_and_idempotent(tmp_path: Path) -> None:
    store = SqliteLedgerStore(tmp_path / "billing.sqlite3")
    try:
        billing = handler(store)
        entries = [
            billing._entry(inbound(model_usage(f"u{i}", cost=Decimal("0.5")))) for i in range(3)
        ]
        first = store.record_many(entries[:2])
        again = store.record_many(entries)
        assert [r.inserted for r in first] == [True, True]
        assert [r.inserted for r in again] == [False, False, True]
        # Rollups advance once per new row, in order within the transaction.
        assert [r.rollups[0].calls for r in first + again] == [1, 2, 2, 2, 3]
        assert [r.run.recorded_calls for r in first + again if r.run] == [1, 2, 2, 2, 3]
        # Written once per batch at their final totals, and in agreement with the ledger.
        [daily] = store.rollups("acme", Granularity.DAILY)
        assert (daily.calls, daily.cost) == (3, Decimal("1.5"))
        totals = store.run_totals("acme", "run-1")
        assert totals is not None
        assert (totals.recorded_calls, totals.spent) == (3, Decimal("1.5"))
        assert reconcile(store, PriceBook.load()) == []
        assert (store.version("acme"), store.version("nobody")) == (3, 0)
        # A row that cannot be written, after a new one in the same batch.
        broken = [_with_id(entries[0], "u-new"), cast(LedgerEntry, None)]
        with pytest.raises(AttributeError):
            store.record_many(broken)
        # The failure rolled the whole batch back: u-new was not kept.
        ids = {e.usage.usage_id for e in store.entries(LedgerQuery(tenant_id="acme"), 10)}
        assert ids == {"u0", "u1", "u2"}
    finally:
        store.close()


def _with_id(entry: LedgerEntry, usage_id: str) -> LedgerEntry:
    return replace(entry, usage=replace(entry.usage, usage_id=usage_id))
