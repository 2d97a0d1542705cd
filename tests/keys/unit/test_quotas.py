"""Quotas: rate windows, spend reserved before and settled after, across instances."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from stepline_keys import KeyQuotas, Limits, Principal, RateLimitedError, Scope
from stepline_keys.spend import InMemorySpendLog, SpendRecord
from stepline_keys.tenants import TenantLimitsError, parse_tenant_limits

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEY = Principal("key_1", "acme", frozenset({Scope.MODELS_CALL}))
OTHER_KEY = Principal("key_2", "acme", frozenset({Scope.MODELS_CALL}))


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def quotas(
    limits: Limits,
    log: InMemorySpendLog,
    clock: Clock,
    instance: str = "i1",
    tenant: Limits | None = None,
) -> KeyQuotas:
    q = KeyQuotas(
        lambda _: limits,
        log,
        clock,
        instance,
        tenant_limits={"acme": tenant} if tenant else None,
    )
    log.subscribe(q.observe)
    return q


async def test_rpm_is_refused_with_retry_after_and_recovers() -> None:
    clock = Clock()
    q = quotas(Limits(rpm=3), InMemorySpendLog(), clock)
    for second in range(3):
        clock.now = NOW + timedelta(seconds=second)
        await (await q.reserve(KEY, cost=Decimal(0), tokens=1)).settle(cost=Decimal(0), tokens=1)
    with pytest.raises(RateLimitedError) as refused:
        await q.reserve(KEY, cost=Decimal(0), tokens=1)
    assert refused.value.limit == "requests_per_minute"
    assert refused.value.retry_after_s == pytest.approx(58)
    clock.now = NOW + timedelta(seconds=60.5)
    await q.reserve(KEY, cost=Decimal(0), tokens=1)


async def test_tpm_counts_worst_case_then_the_real_tokens() -> None:
    clock = Clock()
    q = quotas(Limits(tpm=1000), InMemorySpendLog(), clock)
    held = await q.reserve(KEY, cost=Decimal(0), tokens=800)
    with pytest.raises(RateLimitedError) as refused:
        await q.reserve(KEY, cost=Decimal(0), tokens=300)
    assert refused.value.limit == "tokens_per_minute"
    await held.settle(cost=Decimal(0), tokens=100)  # the call used far less
    await q.reserve(KEY, cost=Decimal(0), tokens=300)
    with pytest.raises(RateLimitedError, match="lower max_output_tokens"):
        await q.reserve(KEY, cost=Decimal(0), tokens=5000)


async def test_fifty_concurrent_first_requests_cannot_overspend_one_instance() -> None:
    clock = Clock()
    log = InMemorySpendLog()
    q = quotas(Limits(daily_spend=Decimal("0.01")), log, clock)
    worst, real = Decimal("0.0006"), Decimal("0.0004")
    admitted = 0
    refusals: list[str] = []

    async def call() -> None:
        nonlocal admitted
        try:
            reservation = await q.reserve(KEY, cost=worst, tokens=100)
        except RateLimitedError as error:
            refusals.append(error.limit)
            return
        admitted += 1
        await asyncio.sleep(0.01)  # the call runs; every other call reserves meanwhile
        await reservation.settle(cost=real, tokens=90)

    await asyncio.gather(*(call() for _ in range(50)))
    total = q.totals.key("key_1", NOW.date().isoformat())[0]
    assert admitted == 16  # floor(0.01 / 0.0006): holds, not settled spend, decide
    assert refusals == ["key_daily_spend"] * 34
    assert total == admitted * real <= Decimal("0.01")
    assert q.in_flight("key_1") == 0
    # Later calls see settled spend only: 0.0064 settled leaves room for 6 more worst cases.
    more = [await q.reserve(KEY, cost=worst, tokens=1) for _ in range(6)]
    with pytest.raises(RateLimitedError) as full:
        await q.reserve(KEY, cost=worst, tokens=1)
    assert full.value.retry_after_s == 1.0  # only holds block: retry soon
    for reservation in more:
        await reservation.settle(cost=worst, tokens=1)
    with pytest.raises(RateLimitedError, match="key daily spend limit") as spent:
        await q.reserve(KEY, cost=worst, tokens=1)
    assert spent.value.retry_after_s == pytest.approx(12 * 3600)  # until UTC midnight


async def test_settled_spend_is_shared_between_instances_and_survives_a_restart() -> None:
    clock = Clock()
    log = InMemorySpendLog()
    limits = Limits(daily_spend=Decimal("1.00"), monthly_spend=Decimal("1.50"))
    a = quotas(limits, log, clock, "a")
    b = quotas(limits, log, clock, "b")
    await (await a.reserve(KEY, cost=Decimal("0.6"), tokens=1)).settle(
        cost=Decimal("0.5"), tokens=1
    )
    await (await b.reserve(KEY, cost=Decimal("0.5"), tokens=1)).settle(
        cost=Decimal("0.4"), tokens=1
    )
    with pytest.raises(RateLimitedError, match="key daily"):
        await a.reserve(KEY, cost=Decimal("0.2"), tokens=1)
    # "a" restarts: a new instance reading the same log starts from the shared totals.
    restarted = quotas(limits, log, clock, "a2")
    assert restarted.totals.key("key_1", "2026-12-01") == (Decimal("0.9"), Decimal("0.9"))
    # Next day: the daily limit resets, the monthly one does not.
    clock.now = NOW + timedelta(days=1)
    await (await restarted.reserve(KEY, cost=Decimal("0.5"), tokens=1)).settle(
        cost=Decimal("0.5"), tokens=1
    )
    with pytest.raises(RateLimitedError) as monthly:
        await restarted.reserve(KEY, cost=Decimal("0.2"), tokens=1)
    assert monthly.value.limit == "key_monthly_spend"
    # An old total of an instance arriving late changes nothing.
    restarted.observe(SpendRecord("key_1", "acme", "2026-12-01", "a", Decimal("0.1")))
    assert restarted.totals.key("key_1", "2026-12-01")[0] == Decimal("0.9")


async def test_tenant_limit_spans_the_tenants_keys() -> None:
    clock = Clock()
    q = quotas(Limits(), InMemorySpendLog(), clock, tenant=Limits(daily_spend=Decimal("1")))
    await (await q.reserve(KEY, cost=Decimal("0.7"), tokens=1)).settle(
        cost=Decimal("0.7"), tokens=1
    )
    with pytest.raises(RateLimitedError) as refused:
        await q.reserve(OTHER_KEY, cost=Decimal("0.4"), tokens=1)
    assert refused.value.limit == "tenant_daily_spend"


async def test_two_instances_overspend_by_at_most_the_other_instances_holds() -> None:
    clock = Clock()
    log = InMemorySpendLog()
    limit, worst = Decimal("0.01"), Decimal("0.0006")
    a = quotas(Limits(daily_spend=limit), log, clock, "a")
    b = quotas(Limits(daily_spend=limit), log, clock, "b")
    # Both instances admit a full limit's worth of holds: neither sees the other's holds.
    held_a = [await a.reserve(KEY, cost=worst, tokens=1) for _ in range(16)]
    held_b = [await b.reserve(KEY, cost=worst, tokens=1) for _ in range(16)]
    for reservation in (*held_a, *held_b):
        await reservation.settle(cost=worst, tokens=1)
    total = a.totals.key("key_1", "2026-12-01")[0]
    assert total == 32 * worst
    assert total <= limit + 16 * worst  # limit + the other instance's holds in flight


class _FailingLog:
    """A spend log whose first publish fails."""

    def __init__(self) -> None:
        self.records: list[SpendRecord] = []
        self.fail = True

    async def record(self, record: SpendRecord) -> None:
        if self.fail:
            self.fail = False
            raise ConnectionError("broker unavailable")
        self.records.append(record)


async def test_a_lost_spend_publish_is_carried_by_the_next_running_total() -> None:
    log = _FailingLog()
    q = KeyQuotas(lambda _: Limits(), log, Clock(), "i1")
    await (await q.reserve(KEY, cost=Decimal("0.2"), tokens=1)).settle(
        cost=Decimal("0.2"), tokens=1
    )
    assert log.records == []
    await (await q.reserve(KEY, cost=Decimal("0.1"), tokens=1)).settle(
        cost=Decimal("0.1"), tokens=1
    )
    assert [r.settled for r in log.records] == [Decimal("0.3")]


def test_tenant_limits_file_parses_and_refuses_mistakes() -> None:
    limits = parse_tenant_limits('[tenants.acme]\ndaily_spend = "50.00"\nmonthly_spend = 800\n')
    assert limits == {"acme": Limits(daily_spend=Decimal("50.00"), monthly_spend=Decimal("800"))}
    for bad in ('[tenants.acme]\ndaily = "1"', '[tenants.acme]\ndaily_spend = "-1"', "x = 1"):
        with pytest.raises(TenantLimitsError):
            parse_tenant_limits(bad)
