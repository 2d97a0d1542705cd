"""10,000 usage events with random duplicates → totals equal the sum over unique ids.

On the real SQLite file store and on a real PostgreSQL (installed and started by
deploy/postgres/pg.sh); reconciliation finds no drift afterwards.
"""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from stepline_billing.convert import usage_from_proto
from stepline_billing.ledger import price
from stepline_billing.queries import all_entries, reconcile, usage_summary
from stepline_billing.rollups import Granularity
from stepline_billing.sqlstore import PostgresLedgerStore, SqliteLedgerStore
from stepline_billing.store import LedgerQuery, LedgerStore
from stepline_pricebook import PriceBook
from tests.billing.factories import NOW, handler, inbound, model_usage, tool_usage

EVENTS = 10_000
MODELS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5"), ("x", "unpriced-model")]


def _events(seed: int) -> list:  # type: ignore[type-arg]
    rng = random.Random(seed)
    unique = []
    for i in range(7_000):
        tenant = f"t{i % 3}"
        at = NOW + timedelta(minutes=rng.randint(-3000, 3000))
        if i % 10 == 0:
            unique.append(tool_usage(f"u{i}", tenant=tenant, run=f"r{i % 50}"))
            continue
        provider, model = rng.choice(MODELS)
        cost = Decimal(rng.randint(1, 10**6)) / Decimal(10**8) if rng.random() < 0.3 else None
        unique.append(
            model_usage(
                f"u{i}",
                tenant=tenant,
                run=f"r{i % 50}",
                provider=provider,
                model=model,
                input_tokens=rng.randint(0, 5000),
                output_tokens=rng.randint(0, 2000),
                cost=cost,
                succeeded=rng.random() > 0.1,
                at=at,
            )
        )
    stream = unique + [rng.choice(unique) for _ in range(EVENTS - len(unique))]
    rng.shuffle(stream)
    return stream


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_ten_thousand_events_with_duplicates_are_charged_once_each(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store: LedgerStore
    if backend == "sqlite":
        store = SqliteLedgerStore(tmp_path / "ledger.sqlite3")
    else:
        store = PostgresLedgerStore(request.getfixturevalue("postgres_dsn"))
    stream = _events(7)
    assert len(stream) == EVENTS
    book = PriceBook.load()
    expected: dict[str, Decimal | None] = {}
    for message in stream:
        expected[message.usage_id] = price(usage_from_proto(message, 0), book).cost
    try:
        billing = handler(store)
        for offset, message in enumerate(stream):
            await billing.on_usage_recorded(inbound(message, offset))

        rows = list(all_entries(store, LedgerQuery()))
        assert len(rows) == len(expected)
        charged = sum((e.cost or Decimal(0) for e in rows), Decimal(0))
        assert charged == sum((c or Decimal(0) for c in expected.values()), Decimal(0))
        unpriced = sum(1 for c in expected.values() if c is None)
        assert unpriced > 0
        totals = [usage_summary(store, f"t{t}", Granularity.HOURLY) for t in range(3)]
        assert sum(s.unpriced_calls for s in totals) == unpriced
        assert sum((s.cost for s in totals), Decimal(0)) == charged
        assert sum(s.calls for s in totals) == len(expected)
        assert reconcile(store, book) == []
    finally:
        store.close()
