"""The handler over the in-memory store: idempotence, pricing, unpriced rows, bad input."""

from __future__ import annotations

from decimal import Decimal

import pytest

from stepline.v1 import budgets_pb2, usage_pb2
from stepline_billing.budgets import Limits
from stepline_billing.ledger import PricedBy
from stepline_billing.queries import reconcile, usage_summary
from stepline_billing.rollups import Granularity
from stepline_billing.store import InMemoryLedgerStore, LedgerQuery
from stepline_pricebook import PriceBook, Tokens
from stepline_runtime.atleastonce import AtLeastOnce, InMemoryPublisher
from stepline_runtime.codec import InvalidRecordError
from stepline_runtime.records import OutboundRecord
from tests.billing.factories import handler, inbound, model_usage, tool_usage


def _budget(outputs: list[OutboundRecord]) -> budgets_pb2.BudgetState:
    [record] = [r for r in outputs if r.topic == "budgets"]
    return budgets_pb2.BudgetState.FromString(record.value or b"")


async def test_the_same_usage_id_delivered_three_times_is_charged_once() -> None:
    store = InMemoryLedgerStore()
    billing = handler(store)
    message = model_usage("call-1/1")
    outputs = [list(await billing.on_usage_recorded(inbound(message, i))) for i in range(3)]

    [entry] = store.sequence()
    expected = PriceBook.load().model_cost("openai", "gpt-4o-mini", Tokens(input=1000, output=500))
    assert entry.cost == expected
    # Every delivery republishes the same state (the first one may have died before publishing).
    states = [_budget(o) for o in outputs]
    assert {s.daily.spent.amount for s in states} == {str(expected)}
    assert {s.version for s in states} == {1}
    assert {s.run.recorded_calls for s in states} == {1}
    rollups = [usage_pb2.UsageRollup.FromString(r.value or b"") for r in outputs[2][:2]]
    assert [r.calls for r in rollups] == [1, 1]


async def test_a_reported_cost_is_kept_and_an_absent_one_is_repriced() -> None:
    store = InMemoryLedgerStore()
    billing = handler(store)
    await billing.on_usage_recorded(inbound(model_usage("a", cost=Decimal("0.123456"))))
    await billing.on_usage_recorded(inbound(model_usage("b")))
    await billing.on_usage_recorded(inbound(tool_usage("c", tool="search_documents")))
    by_id = {e.usage.usage_id: e for e in store.sequence()}
    assert (by_id["a"].cost, by_id["a"].priced_by) == (Decimal("0.123456"), PricedBy.REPORTED)
    assert by_id["a"].price_book_version == "router-book"
    book = PriceBook.load()
    assert by_id["b"].priced_by is PricedBy.PRICE_BOOK
    assert by_id["b"].price_book_version == book.version
    assert by_id["c"].cost == Decimal("0.0002")


async def test_an_unpriced_model_is_recorded_and_reported_as_unpriced_never_zero() -> None:
    store = InMemoryLedgerStore()
    billing = handler(store)
    await billing.on_usage_recorded(inbound(model_usage("p", cost=Decimal("0.01"))))
    outputs = list(
        await billing.on_usage_recorded(inbound(model_usage("u", provider="x", model="mystery")))
    )
    unpriced = next(e for e in store.sequence() if e.usage.usage_id == "u")
    assert unpriced.cost is None
    assert unpriced.priced_by is PricedBy.UNPRICED
    summary = usage_summary(store, "acme", Granularity.DAILY)
    assert (summary.calls, summary.unpriced_calls, summary.cost) == (2, 1, Decimal("0.01"))
    state = _budget(outputs)
    assert (state.run.unpriced_calls, state.run.spent.amount) == (1, "0.01")
    [rollup] = [
        usage_pb2.UsageRollup.FromString(r.value or b"")
        for r in outputs
        if r.topic == "rollups"
        and usage_pb2.UsageRollup.FromString(r.value or b"").granularity
        == usage_pb2.ROLLUP_GRANULARITY_DAILY
    ]
    assert (rollup.model, rollup.unpriced_calls, rollup.cost.amount) == ("mystery", 1, "0")
    assert reconcile(store, PriceBook.load()) == []


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (model_usage(""), "usage_id is empty"),
        (model_usage("x", tenant=""), "tenant_id is empty"),
        (usage_pb2.UsageRecorded(usage_id="x", tenant_id="t"), "kind is unspecified"),
    ],
)
async def test_invalid_usage_is_refused_with_a_reason(
    message: usage_pb2.UsageRecorded, reason: str
) -> None:
    store = InMemoryLedgerStore()
    with pytest.raises(InvalidRecordError, match=reason):
        await handler(store).on_usage_recorded(inbound(message))
    assert store.sequence() == []


async def test_a_cost_in_another_currency_is_refused() -> None:
    message = model_usage("eur", cost=Decimal("1"))
    message.cost.currency = "EUR"
    with pytest.raises(InvalidRecordError, match="EUR"):
        await handler(InMemoryLedgerStore()).on_usage_recorded(inbound(message))


async def test_a_database_failure_is_retried_and_publishes_once() -> None:
    store = InMemoryLedgerStore()
    publisher = InMemoryPublisher()
    processor = AtLeastOnce("billing", handler(store).on_usage_recorded, publisher, backoff_s=0)
    store.fail_next_record = True
    await processor.process(inbound(model_usage("retry-me")))
    assert len(store.sequence()) == 1
    assert {r.topic for r in publisher.records} == {"rollups", "budgets"}


async def test_run_and_daily_budgets_become_exhausted() -> None:
    store = InMemoryLedgerStore()
    billing = handler(store, Limits(daily=Decimal("0.02"), run=Decimal("0.01")))
    first_usage = model_usage("1", cost=Decimal("0.011"))
    first = _budget(list(await billing.on_usage_recorded(inbound(first_usage))))
    assert first.run.exhausted
    assert not first.exhausted
    second_usage = model_usage("2", run="r2", cost=Decimal("0.009"))
    second = _budget(list(await billing.on_usage_recorded(inbound(second_usage))))
    assert second.daily.exhausted
    assert second.exhausted
    assert not second.run.exhausted
    assert second.version == 2
    [run_entry] = store.entries(LedgerQuery(tenant_id="acme", run_id="r2"), 10)
    assert run_entry.usage.usage_id == "2"


@pytest.mark.parametrize("legacy_zero", [False, True])
async def test_an_unpriced_tool_without_cost_is_unpriced_never_zero(legacy_zero: bool) -> None:
    """Executors omit `cost` for an unpriced tool; an older one wrote "0 USD" with priced=false."""
    store = InMemoryLedgerStore()
    billing = handler(store)
    message = tool_usage("t/exec", tool="mystery_tool")
    if legacy_zero:
        message.cost.currency, message.cost.amount = "USD", "0"
    assert not message.priced
    await billing.on_usage_recorded(inbound(message))
    [entry] = store.sequence()
    assert (entry.cost, entry.priced_by) == (None, PricedBy.UNPRICED)
    priced = tool_usage("s/exec", tool="search_documents")  # in the price book: billing prices it
    await billing.on_usage_recorded(inbound(priced, offset=1))
    repriced = next(e for e in store.sequence() if e.usage.usage_id == "s/exec")
    assert (repriced.cost, repriced.priced_by) == (Decimal("0.0002"), PricedBy.PRICE_BOOK)
