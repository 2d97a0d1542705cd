"""20 concurrent runs against one tenant budget: spend stays within the documented bound.

Each simulated run follows the planner rule of `stepline_billing.budgets`: reserve the worst case
of a call before starting it, keep it until billing's `BudgetState` counts the call, admit only
while `spent + reserved + worst_case ≤ limit`. Billing lags behind (it sees completed spend only,
some of it delivered twice). Scheduling is driven by a seeded RNG and `sleep(0)` yields, so a
run is reproducible.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from stepline.v1 import budgets_pb2, usage_pb2
from stepline_billing.budgets import Limits, admits, overspend_bound
from stepline_billing.store import InMemoryLedgerStore
from stepline_pricebook import PriceBook
from tests.billing.factories import handler, inbound, model_usage

RUNS = 20
PARALLEL = 2  # calls one run may have in flight (e.g. parallel tool calls beside a model call)
LIMIT = Decimal("1.00")
INPUT, MAX_OUTPUT = 2_000, 4_000
MAX_CALLS_PER_RUN = 25


@dataclass
class View:
    """What every planner reads: the newest BudgetState and each run's recorded calls."""

    tenant: budgets_pb2.BudgetState | None = None
    recorded: dict[str, int] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def spent(self) -> Decimal:
        return Decimal(self.tenant.daily.spent.amount) if self.tenant else Decimal(0)


async def _simulate(seed: int, reserve: bool) -> tuple[Decimal, int, Decimal]:
    """Run the tenant to exhaustion; return final spend, peak in-flight calls, worst case W."""
    rng = random.Random(seed)
    store = InMemoryLedgerStore()
    billing = handler(store, Limits(daily=LIMIT))
    worst = PriceBook.load().model_price("openai", "gpt-4o")
    assert worst is not None
    w = worst.worst_case(INPUT, MAX_OUTPUT)
    view = View()
    queue: asyncio.Queue[usage_pb2.UsageRecorded | None] = asyncio.Queue()
    in_flight = peak = 0

    async def billing_loop() -> None:
        while (message := await queue.get()) is not None:
            for _ in range(rng.randint(0, 6)):  # billing lags behind the calls
                await asyncio.sleep(0)
            deliveries = 2 if rng.random() < 0.2 else 1  # at-least-once: some arrive twice
            for _ in range(deliveries):
                outputs = await billing.on_usage_recorded(inbound(message))
                [state_record] = [o for o in outputs if o.topic == "budgets"]
                state = budgets_pb2.BudgetState.FromString(state_record.value or b"")
                async with view.changed:
                    if view.tenant is None or state.version >= view.tenant.version:
                        view.tenant = state
                    for run in state.runs:  # every run this state settled
                        view.recorded[run.run_id] = run.recorded_calls
                    view.changed.notify_all()

    async def call(run_id: str, n: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(rng.randint(0, 10)):
            await asyncio.sleep(0)
        output = rng.randint(MAX_OUTPUT // 2, MAX_OUTPUT)  # actual ≤ worst case
        in_flight -= 1
        await queue.put(
            model_usage(
                f"{run_id}:{n}",
                run=run_id,
                model="gpt-4o",
                input_tokens=INPUT,
                output_tokens=output,
            )
        )

    async def run(run_id: str) -> None:
        issued, calls = 0, []
        while True:
            async with view.changed:
                if reserve:

                    def free_slot(started: int = issued) -> bool:
                        return started - view.recorded.get(run_id, 0) < PARALLEL

                    await view.changed.wait_for(free_slot)
                unsettled = issued - view.recorded.get(run_id, 0) if reserve else 0
                exhausted = view.tenant is not None and view.tenant.exhausted
                if exhausted or not admits(view.spent, unsettled * w, w, LIMIT):
                    break
                if issued >= MAX_CALLS_PER_RUN:  # only the control (no reservations) gets here
                    break
                issued += 1
            calls.append(asyncio.create_task(call(run_id, issued)))
            await asyncio.sleep(0)
        await asyncio.gather(*calls)

    consumer = asyncio.create_task(billing_loop())
    await asyncio.gather(*(run(f"run-{i}") for i in range(RUNS)))
    await queue.put(None)
    await consumer
    spent = sum((e.cost or Decimal(0) for e in store.sequence()), Decimal(0))
    return spent, peak, w


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_spend_stays_within_the_documented_bound_with_20_concurrent_runs(seed: int) -> None:
    spent, peak, w = await _simulate(seed, reserve=True)
    bound = overspend_bound(RUNS * PARALLEL, w)
    print(f"seed {seed}: spent {spent} of {LIMIT}, overspend {spent - LIMIT}, bound {bound}")
    assert spent <= LIMIT + bound
    # The scenario is real: the runs overlapped and drove the tenant to its limit.
    assert peak > RUNS // 2
    assert spent > LIMIT - RUNS * PARALLEL * w


async def test_without_reservations_the_bound_does_not_hold() -> None:
    """Control: admitting on billing's lagging spend alone overspends far beyond the bound."""
    spent, _, w = await _simulate(1, reserve=False)
    assert spent > LIMIT + overspend_bound(RUNS * PARALLEL, w)
