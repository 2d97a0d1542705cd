"""Hourly and daily aggregates per tenant × kind × provider × model × tool (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from stepline_billing.ledger import Kind, LedgerEntry
from stepline_vocab import Tokens

__all__ = ["Granularity", "Rollup", "RollupKey", "keys_for", "rollup_entries", "window_start"]


class Granularity(StrEnum):
    """Width of a rollup window."""

    HOURLY = "hourly"
    DAILY = "daily"

    @property
    def width(self) -> timedelta:
        """The window length."""
        return timedelta(hours=1) if self is Granularity.HOURLY else timedelta(days=1)


def window_start(moment: datetime, granularity: Granularity) -> datetime:
    """Start (UTC) of the window of `granularity` that contains `moment`."""
    utc = moment.astimezone(UTC)
    if granularity is Granularity.HOURLY:
        return utc.replace(minute=0, second=0, microsecond=0)
    return utc.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class RollupKey:
    """Identity of one rollup: tenant, window and dimensions."""

    tenant_id: str
    granularity: Granularity
    window_start: datetime
    kind: Kind
    provider: str
    model: str
    tool: str

    @property
    def window_end(self) -> datetime:
        """End of the window (exclusive)."""
        return self.window_start + self.granularity.width

    @property
    def rollup_id(self) -> str:
        """Deterministic id, so the latest publication per id wins."""
        start = self.window_start.strftime("%Y-%m-%dT%H:%MZ")
        dims = "/".join((self.kind.value, self.provider, self.model, self.tool))
        return f"{self.tenant_id}/{self.granularity.value}/{start}/{dims}"


@dataclass(frozen=True, slots=True)
class Rollup:
    """Totals of one rollup key; `cost` sums priced rows only, `unpriced_calls` counts the rest."""

    key: RollupKey
    tokens: Tokens = field(default_factory=Tokens)
    cost: Decimal = Decimal(0)
    calls: int = 0
    failures: int = 0
    unpriced_calls: int = 0

    def add(self, entry: LedgerEntry) -> Rollup:
        """This rollup with `entry` counted."""
        return replace(
            self,
            tokens=self.tokens + entry.usage.tokens,
            cost=self.cost + (entry.cost or Decimal(0)),
            calls=self.calls + 1,
            failures=self.failures + (0 if entry.usage.succeeded else 1),
            unpriced_calls=self.unpriced_calls + (0 if entry.priced else 1),
        )


def keys_for(entry: LedgerEntry) -> tuple[RollupKey, RollupKey]:
    """The hourly and the daily rollup key `entry` counts towards."""
    usage = entry.usage

    def key(granularity: Granularity) -> RollupKey:
        return RollupKey(
            usage.tenant_id,
            granularity,
            window_start(usage.occurred_at, granularity),
            usage.kind,
            usage.provider,
            usage.model,
            usage.tool,
        )

    return key(Granularity.HOURLY), key(Granularity.DAILY)


def rollup_entries(entries: Iterable[LedgerEntry], granularity: Granularity) -> list[Rollup]:
    """Recompute rollups of `granularity` from ledger entries (reconciliation, run queries)."""
    totals: dict[RollupKey, Rollup] = {}
    for entry in entries:
        hourly, daily = keys_for(entry)
        key = hourly if granularity is Granularity.HOURLY else daily
        totals[key] = totals.get(key, Rollup(key)).add(entry)
    return sorted(totals.values(), key=lambda r: (r.key.window_start, r.key.rollup_id))
