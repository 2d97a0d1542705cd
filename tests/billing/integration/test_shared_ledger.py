"""Several billing instances on one PostgreSQL ledger at once (issue 15).

While a rebalance moves a partition, its old owner may still be writing a batch that the new
owner reads again from the last committed offset: two writers, the same usage ids, the same
tenants and rollup windows, at the same moment. Each instance here is its own connection
(`PostgresLedgerStore`) in its own thread; afterwards every usage id is charged once, the
rollups equal the ones recomputed from the ledger (no window counted twice, none lost), and the
run totals and budget versions agree with the rows.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import timedelta
from decimal import Decimal

from stepline_billing.budgets import BudgetConfig
from stepline_billing.convert import usage_from_proto
from stepline_billing.ledger import LedgerEntry, price
from stepline_billing.queries import all_entries, budget, reconcile
from stepline_billing.sqlstore import PostgresLedgerStore
from stepline_billing.store import LedgerQuery
from stepline_pricebook import PriceBook
from tests.billing.factories import NOW, model_usage

INSTANCES = 4
UNIQUE = 1_200
BATCH = 50


def _entries(book: PriceBook) -> list[LedgerEntry]:
    rng = random.Random(15)
    return [
        price(
            usage_from_proto(
                model_usage(
                    f"u{i}",
                    tenant=f"t{i % 3}",
                    run=f"r{i % 20}",
                    output_tokens=rng.randint(1, 900),
                    cost=Decimal(rng.randint(1, 10**5)) / Decimal(10**7),
                    # Spread over hours and days: many hourly and daily windows.
                    at=NOW + timedelta(minutes=rng.randint(-4000, 4000)),
                ),
                0,
            ),
            book,
        )
        for i in range(UNIQUE)
    ]


def test_instances_writing_the_same_usage_at_once_charge_each_id_once(postgres_dsn: str) -> None:
    book = PriceBook.load()
    entries = _entries(book)
    rng = random.Random(7)
    # Every instance gets every entry, in batches of its own order: each id is written by all
    # four, often in the same instant (the worst a rebalance can do, four times over).
    plans = []
    for _ in range(INSTANCES):
        order = entries[:]
        rng.shuffle(order)
        plans.append([order[i : i + BATCH] for i in range(0, len(order), BATCH)])
    stores = [PostgresLedgerStore(postgres_dsn) for _ in range(INSTANCES)]
    inserted: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(INSTANCES)

    def instance(store: PostgresLedgerStore, batches: list[list[LedgerEntry]]) -> None:
        try:
            start.wait()
            for batch in batches:
                results = store.record_many(batch)
                with lock:
                    inserted.update(
                        e.usage.usage_id for e, r in zip(batch, results, strict=True) if r.inserted
                    )
        except BaseException as error:  # reported below, with the thread's traceback
            errors.append(error)

    threads = [
        threading.Thread(target=instance, args=(store, plan))
        for store, plan in zip(stores, plans, strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        # Exactly one instance saw each id as new: the one whose insert counted it.
        assert set(inserted) == {e.usage.usage_id for e in entries}
        assert set(inserted.values()) == {1}

        store = stores[0]
        rows = list(all_entries(store, LedgerQuery()))
        assert len(rows) == UNIQUE
        assert sum((r.cost or Decimal(0) for r in rows), Decimal(0)) == sum(
            (e.cost or Decimal(0) for e in entries), Decimal(0)
        )
        # Stored hourly and daily rollups = recomputed from the ledger, window by window.
        assert reconcile(store, book) == []
        for tenant, run in {(e.usage.tenant_id, e.usage.run_id) for e in entries}:
            totals = store.run_totals(tenant, run)
            mine = [e for e in entries if (e.usage.tenant_id, e.usage.run_id) == (tenant, run)]
            assert totals is not None
            assert totals.recorded_calls == len(mine)
            assert totals.spent == sum((e.cost or Decimal(0) for e in mine), Decimal(0))
        for tenant in ("t0", "t1", "t2"):
            state = budget(store, BudgetConfig(), tenant, NOW)
            assert state.version == sum(1 for e in entries if e.usage.tenant_id == tenant)
    finally:
        for store in stores:
            store.close()
