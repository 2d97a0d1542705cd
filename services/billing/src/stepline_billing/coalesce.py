"""What one batch of usage changed, per tenant: each rollup and run once, at its latest (pure).

Rollups, run totals and budget states are absolute snapshots of the ledger, not deltas, so
after a batch's rows are written only the latest snapshot of each rollup key, run and tenant
needs publishing: the earlier ones of the same batch are superseded before anyone could use them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from stepline_billing.ledger import LedgerEntry
from stepline_billing.rollups import Rollup
from stepline_billing.store import Recorded, RunTotals

__all__ = ["TenantChanges", "changes_by_tenant"]


@dataclass(frozen=True, slots=True)
class TenantChanges:
    """A tenant's rollups and runs a batch touched, each at its latest totals."""

    tenant_id: str
    rollups: tuple[Rollup, ...]
    runs: tuple[RunTotals, ...]


def changes_by_tenant(results: Iterable[tuple[LedgerEntry, Recorded]]) -> list[TenantChanges]:
    """The latest totals per tenant, from `record_many`'s results in the order it wrote them.

    Within one transaction a later result counts every earlier row, so the last result that
    names a rollup key or run holds its latest totals. Tenants, rollups and runs keep the order
    they were first touched in; a run keeps the position of its *last* change, so the last
    run of a tenant is the one its last usage record belongs to.
    """
    rollups: dict[str, dict[str, Rollup]] = {}
    runs: dict[str, dict[str, RunTotals]] = {}
    for entry, recorded in results:
        tenant = entry.usage.tenant_id
        mine = rollups.setdefault(tenant, {})
        for rollup in recorded.rollups:
            mine[rollup.key.rollup_id] = rollup
        if recorded.run is not None:
            tenant_runs = runs.setdefault(tenant, {})
            tenant_runs.pop(recorded.run.run_id, None)
            tenant_runs[recorded.run.run_id] = recorded.run
    return [
        TenantChanges(tenant, tuple(by_id.values()), tuple(runs.get(tenant, {}).values()))
        for tenant, by_id in rollups.items()
    ]
