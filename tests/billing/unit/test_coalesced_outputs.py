"""A batch's rollups and budget state are published once per tenant, at their latest totals."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from stepline.v1 import budgets_pb2, usage_pb2
from stepline_billing.handlers import AcknowledgingPublisher, UsageHandler
from stepline_billing.store import InMemoryLedgerStore
from stepline_runtime.atleastonce import AtLeastOnce, InMemoryPublisher
from stepline_runtime.headers import HeaderName
from stepline_runtime.records import InboundRecord, OutboundRecord
from tests.billing.factories import handler, inbound, model_usage


def _processor(
    billing: UsageHandler, publisher: InMemoryPublisher, max_attempts: int = 5
) -> AtLeastOnce:
    return AtLeastOnce(
        "billing",
        billing.on_usage_recorded,
        AcknowledgingPublisher(publisher, billing.acknowledged),
        backoff_s=0,
        prepare=billing.prepare_batch,
        max_attempts=max_attempts,
    )


async def _deliver(processor: AtLeastOnce, records: Sequence[InboundRecord]) -> None:
    """One fetched batch, handled in offset order (one tenant's lane)."""
    await processor.prepare(records)
    for record in records:
        await processor.process(record)


def _states(records: list[OutboundRecord], tenant: str = "acme") -> list[budgets_pb2.BudgetState]:
    return [
        budgets_pb2.BudgetState.FromString(r.value or b"")
        for r in records
        if r.topic == "budgets" and r.key == tenant.encode()
    ]


def _rollups(records: list[OutboundRecord]) -> list[usage_pb2.UsageRollup]:
    return [
        usage_pb2.UsageRollup.FromString(r.value or b"") for r in records if r.topic == "rollups"
    ]


def _ids(records: list[OutboundRecord]) -> list[str]:
    return [dict(r.headers)[HeaderName.ID].decode() for r in records]


def _batch(count: int, first_offset: int = 0) -> list[InboundRecord]:
    # Two models (two rollup keys per granularity) and three runs, one tenant.
    return [
        inbound(
            model_usage(
                f"call-{i}",
                run=f"run-{i % 3}",
                model="gpt-4o-mini" if i % 2 else "gpt-4o",
                cost=Decimal("0.01"),
            ),
            first_offset + i,
        )
        for i in range(count)
    ]


async def test_a_batch_of_one_tenant_publishes_each_rollup_and_one_budget_state_once() -> None:
    store = InMemoryLedgerStore()
    publisher = InMemoryPublisher()
    await _deliver(_processor(handler(store), publisher), _batch(10))

    # Before: 3 records per usage record (30). Now: 4 rollups (2 models x hourly/daily) + 1.
    assert len(publisher.records) == 5
    [state] = _states(publisher.records)
    assert (state.version, state.daily.spent.amount) == (10, "0.1")
    # Every run the batch settled is named, with its latest totals; `run` is the last one's.
    assert {r.run_id: r.recorded_calls for r in state.runs} == {"run-0": 4, "run-1": 3, "run-2": 3}
    assert state.run.run_id == "run-0"  # call-9 belongs to run-0
    assert state.run == state.runs[-1]
    rollups = _rollups(publisher.records)
    assert sorted((r.model, r.granularity, r.calls) for r in rollups) == sorted(
        (model, granularity, 5)
        for model in ("gpt-4o", "gpt-4o-mini")
        for granularity in (usage_pb2.ROLLUP_GRANULARITY_HOURLY, usage_pb2.ROLLUP_GRANULARITY_DAILY)
    )
    # Event ids stay deterministic: `rollup_id@calls` and `tenant@version`.
    assert "acme@10" in _ids(publisher.records)
    assert {f"{r.rollup_id}@5" for r in rollups} <= set(_ids(publisher.records))


async def test_tenants_of_one_batch_get_a_publication_each() -> None:
    store = InMemoryLedgerStore()
    publisher = InMemoryPublisher()
    records = [
        inbound(model_usage(f"u{i}", tenant=("acme", "globex")[i % 2], run=f"r{i % 2}"), i)
        for i in range(6)
    ]
    await _deliver(_processor(handler(store), publisher), records)
    for tenant in ("acme", "globex"):
        [state] = _states(publisher.records, tenant)
        assert (state.version, [r.recorded_calls for r in state.runs]) == (3, [3])


async def test_a_later_batch_publishes_again_and_a_redelivered_one_republishes_the_latest() -> None:
    store = InMemoryLedgerStore()
    publisher = InMemoryPublisher()
    processor = _processor(handler(store), publisher)
    first, second = _batch(10)[:6], _batch(10)[6:]
    await _deliver(processor, first)
    await _deliver(processor, second)
    assert [s.version for s in _states(publisher.records)] == [6, 10]

    # A crash before the commit: the whole range comes again, to a fresh instance.
    again = InMemoryPublisher()
    await _deliver(_processor(handler(store), again), [*first, *second])
    assert len(store.sequence()) == 10
    [state] = _states(again.records)
    assert state.version == 10
    assert set(_ids(again.records)) <= set(_ids(publisher.records))


async def test_when_the_carrier_is_dead_lettered_the_next_record_publishes_the_state() -> None:
    store = InMemoryLedgerStore()
    publisher = InMemoryPublisher()
    processor = _processor(handler(store), publisher, max_attempts=2)
    records = _batch(4)
    await processor.prepare(records)
    # Both attempts of the first record lose their outputs; its dead letter goes through.
    publisher.ack_failures_left = 2
    await processor.process(records[0])
    assert [r.topic for r in publisher.records] == ["stepline.dlq.v1"]
    for record in records[1:]:
        await processor.process(record)
    [state] = _states(publisher.records)
    assert state.version == 4
    assert len(_rollups(publisher.records)) == 4


async def test_an_invalid_record_first_in_the_batch_does_not_carry_the_others() -> None:
    store = InMemoryLedgerStore()
    publisher = InMemoryPublisher()
    garbage = InboundRecord("stepline.usage.v1", 0, 0, b"acme", b"\xff\x00 not protobuf")
    records = [garbage, *_batch(3, first_offset=1)]
    await _deliver(_processor(handler(store), publisher), records)
    assert sum(r.topic == "stepline.dlq.v1" for r in publisher.records) == 1
    [state] = _states(publisher.records)
    assert state.version == 3


async def test_without_acknowledgements_every_record_publishes_its_tenants_states() -> None:
    # The safe default: a handler whose publisher does not report acks never skips a record.
    store = InMemoryLedgerStore()
    publisher = InMemoryPublisher()
    billing = handler(store)
    processor = AtLeastOnce(
        "billing", billing.on_usage_recorded, publisher, backoff_s=0, prepare=billing.prepare_batch
    )
    await _deliver(processor, _batch(3))
    assert [s.version for s in _states(publisher.records)] == [3, 3, 3]
