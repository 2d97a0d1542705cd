"""Budgets per tenant (daily, monthly) and per run, and the planner's admission rule (pure).

Billing only sees *completed* spend. The planner reserves the worst-case cost of each model call
before starting it and keeps the reservation until a `BudgetState` of billing counts the call
(the `recorded_calls` of the run among its `runs`). With that rule, and at most `P` calls in
flight per run, the spend of a tenant running `R` runs concurrently never exceeds

    limit + (R·P − 1) · W

where `W` is the largest worst-case reservation of one call (`overspend_bound`). Why: take the
last call admitted; at that moment the published spend `S` satisfied `S + w ≤ limit`, and every
unit of spend `S` did not yet include belongs to a call still unsettled then — at most `R·P` of
them, that call included, each costing at most its worst case. This assumes every admission for
the tenant reads the newest `BudgetState` published (one view); a planner that pools the
reservations of all a tenant's runs (instead of each run's own) overspends by nothing at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

__all__ = [
    "Budget",
    "BudgetConfig",
    "Limits",
    "Period",
    "RunBudget",
    "admits",
    "day_bounds",
    "month_bounds",
    "overspend_bound",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Spend limits; None means no limit."""

    daily: Decimal | None = None
    monthly: Decimal | None = None
    run: Decimal | None = None


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    """Default limits and per-tenant overrides."""

    defaults: Limits = Limits()
    tenants: dict[str, Limits] = field(default_factory=dict)

    def limits(self, tenant_id: str) -> Limits:
        """The limits that apply to `tenant_id`."""
        return self.tenants.get(tenant_id, self.defaults)


@dataclass(frozen=True, slots=True)
class Period:
    """Spend against a limit within [start, end)."""

    limit: Decimal | None
    spent: Decimal
    start: datetime
    end: datetime
    reserved: Decimal = Decimal(0)
    unpriced_calls: int = 0

    @property
    def exhausted(self) -> bool:
        """spent + reserved ≥ limit."""
        return self.limit is not None and self.spent + self.reserved >= self.limit


@dataclass(frozen=True, slots=True)
class RunBudget:
    """One run's recorded spend against its per-run limit."""

    run_id: str
    limit: Decimal | None
    spent: Decimal
    recorded_calls: int
    unpriced_calls: int

    @property
    def exhausted(self) -> bool:
        """spent ≥ limit."""
        return self.limit is not None and self.spent >= self.limit


@dataclass(frozen=True, slots=True)
class Budget:
    """A tenant's budget as billing sees it; `version` grows with every recorded usage.

    `runs` are the runs whose spend the update changed (one batch of usage can touch several);
    `run` is the last of them.
    """

    tenant_id: str
    daily: Period
    monthly: Period
    version: int
    updated_at: datetime
    runs: tuple[RunBudget, ...] = ()

    @property
    def run(self) -> RunBudget | None:
        """The last run this update changed, if any."""
        return self.runs[-1] if self.runs else None

    @property
    def exhausted(self) -> bool:
        """Any period is exhausted."""
        return self.daily.exhausted or self.monthly.exhausted


def day_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The UTC day containing `now`."""
    start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start.fromordinal(start.toordinal() + 1).replace(tzinfo=UTC)


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month containing `now`."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if start.month == 12:
        return start, start.replace(year=start.year + 1, month=1)
    return start, start.replace(month=start.month + 1)


def admits(spent: Decimal, reserved: Decimal, worst_case: Decimal, limit: Decimal | None) -> bool:
    """The planner's rule: start a call only if its worst case still fits under the limit."""
    return limit is None or spent + reserved + worst_case <= limit


def overspend_bound(concurrent_calls: int, worst_case_call: Decimal) -> Decimal:
    """Largest possible spend above a limit with `concurrent_calls` unsettled calls at most."""
    return max(0, concurrent_calls - 1) * worst_case_call
