"""Spend per agent and provider health from attempt rows: pure aggregation, no I/O.

Spend per tenant, model and tool comes from billing's own rollups (the read model keeps them as
billing publishes them); agents are not a billing dimension, so their spend is summed here from
the same usage records.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from stepline_frontdoor.readmodel import AttemptRow

__all__ = [
    "AgentSpend",
    "CircuitState",
    "Granularity",
    "ProviderHealth",
    "agent_spend",
    "provider_health",
    "window_start",
]


class Granularity(StrEnum):
    """Width of a spend window."""

    HOUR = "hour"
    DAY = "day"


@dataclass(frozen=True, slots=True)
class AgentSpend:
    """Spend of one agent of one tenant in one window (model attempts and tool executions)."""

    window_start: datetime
    tenant_id: str
    agent: str
    cost: Decimal
    currency: str
    calls: int
    failures: int
    input_tokens: int
    output_tokens: int


class CircuitState(StrEnum):
    """A deployment's breaker, as its attempts show it."""

    CLOSED = "closed"
    OPEN = "open"  # the router refused to call it (circuit_open) and nothing succeeded since
    UNKNOWN = "unknown"  # no attempts in the window


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """One deployment over the last minutes."""

    deployment: str
    provider: str
    model: str
    attempts: int
    per_minute: float
    error_rate: float
    errors_by_outcome: dict[str, int]
    latency_p50_ms: float
    latency_p99_ms: float
    circuit: CircuitState
    last_outcome: str
    last_at: datetime


def window_start(moment: datetime, granularity: Granularity) -> datetime:
    """The start of the hour or day `moment` falls in."""
    hour = moment.replace(minute=0, second=0, microsecond=0)
    return hour if granularity is Granularity.HOUR else hour.replace(hour=0)


def agent_spend(attempts: Iterable[AttemptRow], granularity: Granularity) -> list[AgentSpend]:
    """Spend per window, tenant and agent, oldest window first."""
    totals: dict[tuple[datetime, str, str, str], list[int | Decimal]] = defaultdict(
        lambda: [Decimal(0), 0, 0, 0, 0]
    )
    for a in attempts:
        if a.outcome == "circuit_open":
            continue  # refused by the breaker: nothing was sent, nothing spent
        key = (window_start(a.occurred_at, granularity), a.tenant_id, a.agent, a.currency)
        t = totals[key]
        t[0] += a.cost
        t[1] += 1
        t[2] += 0 if a.succeeded else 1
        t[3] += a.input_tokens
        t[4] += a.output_tokens
    return [
        AgentSpend(
            window_start=k[0],
            tenant_id=k[1],
            agent=k[2],
            currency=k[3],
            cost=Decimal(v[0]),
            calls=int(v[1]),
            failures=int(v[2]),
            input_tokens=int(v[3]),
            output_tokens=int(v[4]),
        )
        for k, v in sorted(totals.items(), key=lambda kv: kv[0])
    ]


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def provider_health(
    attempts: Iterable[AttemptRow], *, now: datetime, window: timedelta
) -> list[ProviderHealth]:
    """Per deployment: attempt rate, errors by outcome, latency p50/p99, breaker state."""
    by_deployment: dict[str, list[AttemptRow]] = defaultdict(list)
    since = now - window
    for a in attempts:
        if a.kind == "model" and a.occurred_at >= since:
            by_deployment[a.deployment or a.model].append(a)
    minutes = max(window.total_seconds() / 60, 1 / 60)
    health = []
    for deployment, rows in sorted(by_deployment.items()):
        rows.sort(key=lambda a: a.occurred_at)
        errors: dict[str, int] = defaultdict(int)
        for a in rows:
            if not a.succeeded:
                errors[a.outcome] += 1
        # Circuit-open refusals cost no time: they would drag the latency figures to zero.
        latencies = sorted(a.latency_ms for a in rows if a.outcome != "circuit_open")
        last = rows[-1]
        since_success = [a for a in rows if a.succeeded]
        opened = [a for a in rows if a.outcome == "circuit_open"]
        open_now = bool(opened) and (
            not since_success or opened[-1].occurred_at > since_success[-1].occurred_at
        )
        health.append(
            ProviderHealth(
                deployment=deployment,
                provider=last.provider,
                model=last.model,
                attempts=len(rows),
                per_minute=round(len(rows) / minutes, 3),
                error_rate=round(sum(errors.values()) / len(rows), 4),
                errors_by_outcome=dict(sorted(errors.items())),
                latency_p50_ms=_percentile(latencies, 0.5),
                latency_p99_ms=_percentile(latencies, 0.99),
                circuit=CircuitState.OPEN if open_now else CircuitState.CLOSED,
                last_outcome=last.outcome,
                last_at=last.occurred_at,
            )
        )
    return health
