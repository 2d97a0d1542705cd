"""Read models over the ledger store: budgets, usage summaries, ledger pages, reconciliation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from stepline_billing.budgets import (
    Budget,
    BudgetConfig,
    Period,
    RunBudget,
    day_bounds,
    month_bounds,
)
from stepline_billing.ledger import LedgerEntry, PricedBy, reprice
from stepline_billing.rollups import Granularity, Rollup, rollup_entries
from stepline_billing.store import Cursor, LedgerQuery, LedgerStore, RunTotals
from stepline_pricebook import PriceBook
from stepline_runtime.ids import is_replay_run
from stepline_vocab import Tokens

__all__ = [
    "Drift",
    "EvaluationSplit",
    "UsageSummary",
    "all_entries",
    "budget",
    "evaluation_split",
    "reconcile",
    "tenant_budget",
    "usage_summary",
]

_PAGE = 1000


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """Rollups of a query and their totals."""

    rollups: list[Rollup]
    tokens: Tokens
    cost: Decimal
    calls: int
    failures: int
    unpriced_calls: int


@dataclass(frozen=True, slots=True)
class EvaluationSplit:
    """A tenant's spend split into production and evaluation (replays and forks)."""

    production: Decimal
    evaluation: Decimal
    evaluation_runs: int
    evaluation_calls: int


@dataclass(frozen=True, slots=True)
class Drift:
    """One disagreement found by reconciliation."""

    scope: str
    what: str
    expected: str
    found: str


def budget(
    store: LedgerStore, config: BudgetConfig, tenant_id: str, now: datetime, run_id: str = ""
) -> Budget:
    """`tenant_id`'s budget for the periods containing `now` (and one run's, if given)."""
    totals = store.run_totals(tenant_id, run_id) if run_id else None
    return tenant_budget(store, config, tenant_id, now, () if totals is None else (totals,))


def tenant_budget(
    store: LedgerStore,
    config: BudgetConfig,
    tenant_id: str,
    now: datetime,
    runs: Sequence[RunTotals],
) -> Budget:
    """`tenant_id`'s budget for the periods containing `now`, with these runs' totals as known."""
    limits = config.limits(tenant_id)
    periods = []
    for (start, end), limit in (
        (day_bounds(now), limits.daily),
        (month_bounds(now), limits.monthly),
    ):
        spend = store.spent(tenant_id, start, end)
        periods.append(Period(limit, spend.cost, start, end, unpriced_calls=spend.unpriced_calls))
    return Budget(
        tenant_id,
        periods[0],
        periods[1],
        store.version(tenant_id),
        now,
        tuple(
            RunBudget(t.run_id, limits.run, t.spent, t.recorded_calls, t.unpriced_calls)
            for t in runs
        ),
    )


def all_entries(store: LedgerStore, query: LedgerQuery) -> Iterator[LedgerEntry]:
    """Every entry matching `query`, page by page."""
    cursor: Cursor | None = None
    while True:
        page = store.entries(query, _PAGE, cursor)
        yield from page
        if len(page) < _PAGE:
            return
        last = page[-1].usage
        cursor = Cursor(last.occurred_at, last.usage_id)


def usage_summary(
    store: LedgerStore,
    tenant_id: str,
    granularity: Granularity,
    run_id: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
) -> UsageSummary:
    """Rollups for a tenant: stored ones, or recomputed from the ledger for a run."""
    if run_id:
        # Rollups are per tenant; a run's are recomputed from its (few) ledger rows.
        query = LedgerQuery(tenant_id=tenant_id, run_id=run_id, start=start, end=end)
        rollups = rollup_entries(all_entries(store, query), granularity)
    else:
        rollups = store.rollups(tenant_id, granularity, start, end)
    tokens = Tokens()
    for rollup in rollups:
        tokens = tokens + rollup.tokens
    return UsageSummary(
        rollups,
        tokens,
        sum((r.cost for r in rollups), Decimal(0)),
        sum(r.calls for r in rollups),
        sum(r.failures for r in rollups),
        sum(r.unpriced_calls for r in rollups),
    )


def reconcile(store: LedgerStore, book: PriceBook, tenant_id: str = "") -> list[Drift]:
    """Recompute rollups from the ledger and compare with the stored ones; check reported costs.

    A reported cost is compared with the price book's only when the row was priced with the
    same price-book version the book has now (otherwise a difference is expected, not drift).
    """
    drifts: list[Drift] = []
    for tenant in [tenant_id] if tenant_id else store.tenants():
        entries = list(all_entries(store, LedgerQuery(tenant_id=tenant)))
        for granularity in Granularity:
            expected = {r.key.rollup_id: r for r in rollup_entries(entries, granularity)}
            stored = {r.key.rollup_id: r for r in store.rollups(tenant, granularity)}
            for rollup_id in sorted(expected.keys() | stored.keys()):
                drifts.extend(_compare(rollup_id, expected.get(rollup_id), stored.get(rollup_id)))
        for entry in entries:
            if entry.priced_by is not PricedBy.REPORTED or entry.price_book_version != book.version:
                continue
            repriced = reprice(entry.usage, book)
            if repriced is not None and repriced != entry.cost:
                drifts.append(
                    Drift(
                        f"usage {entry.usage.usage_id}",
                        "reported cost vs price book",
                        str(repriced),
                        str(entry.cost),
                    )
                )
    return drifts


def _compare(rollup_id: str, expected: Rollup | None, stored: Rollup | None) -> list[Drift]:
    if expected is None or stored is None:
        return [
            Drift(
                f"rollup {rollup_id}",
                "presence",
                "present" if expected else "absent",
                "present" if stored else "absent",
            )
        ]
    fields = {
        "cost": (expected.cost, stored.cost),
        "calls": (expected.calls, stored.calls),
        "failures": (expected.failures, stored.failures),
        "unpriced_calls": (expected.unpriced_calls, stored.unpriced_calls),
        "tokens": (expected.tokens, stored.tokens),
    }
    return [
        Drift(f"rollup {rollup_id}", name, str(want), str(got))
        for name, (want, got) in fields.items()
        if want != got
    ]


def evaluation_split(
    store: LedgerStore,
    tenant_id: str,
    run_id: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
) -> EvaluationSplit:
    """Spend of replays and forks (their run ids say so) apart from production spend."""
    production = evaluation = Decimal(0)
    runs: set[str] = set()
    calls = 0
    query = LedgerQuery(tenant_id=tenant_id, run_id=run_id, start=start, end=end)
    for entry in all_entries(store, query):
        cost = entry.cost or Decimal(0)
        if is_replay_run(entry.usage.run_id):
            evaluation += cost
            runs.add(entry.usage.run_id.split(":", 1)[0])  # a child run counts as its replay
            calls += 1
        else:
            production += cost
    return EvaluationSplit(production, evaluation, len(runs), calls)
