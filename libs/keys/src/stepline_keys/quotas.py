"""Quotas per key (and tenant): requests and tokens per minute, spend per day and month.

A call reserves one request, its worst-case tokens and its worst-case cost before it runs, and
settles the real amounts afterwards. The check and the hold happen with no `await` between them,
so on one instance N concurrent first requests see each other's holds and cannot overspend.
Settled spend is shared through a `SpendLog` (the compacted spend topic); in-flight holds are
not, so several instances sharing a key can overspend by at most the holds in flight on the
other instances plus what they settled and the topic has not delivered yet (RELIABILITY.md).
Rate windows (rpm, tpm) are per instance: N instances admit up to N × the limit.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from stepline_keys.access import Principal, RateLimitedError
from stepline_keys.model import Limits
from stepline_keys.spend import SpendLog, SpendRecord, SpendTotals

__all__ = ["KeyQuotas", "KeyReservation", "SlidingWindow"]

log = logging.getLogger(__name__)

_WINDOW_S = 60.0


@dataclass(slots=True)
class _Entry:
    at: float
    tokens: int


@dataclass(slots=True)
class SlidingWindow:
    """Requests and tokens of the last minute (a sliding log: exact, O(rpm) memory)."""

    entries: deque[_Entry] = field(default_factory=deque)

    def _prune(self, now: float) -> None:
        while self.entries and self.entries[0].at <= now - _WINDOW_S:
            self.entries.popleft()

    def refusal(self, now: float, limits: Limits, tokens: int) -> RateLimitedError | None:
        """Why one more request of `tokens` would exceed `limits`, or None."""
        self._prune(now)
        if limits.rpm is not None and len(self.entries) + 1 > limits.rpm:
            wait = self.entries[len(self.entries) - limits.rpm].at + _WINDOW_S - now
            return RateLimitedError(
                f"requests-per-minute limit of {limits.rpm} reached",
                limit="requests_per_minute",
                retry_after_s=max(wait, 0.001),
            )
        if limits.tpm is not None:
            if tokens > limits.tpm:
                return RateLimitedError(
                    f"this call may use {tokens} tokens, more than the key's "
                    f"tokens-per-minute limit of {limits.tpm}; lower max_output_tokens",
                    limit="tokens_per_minute",
                    retry_after_s=_WINDOW_S,
                )
            used = sum(e.tokens for e in self.entries)
            if used + tokens > limits.tpm:
                # Wait until enough of the oldest entries leave the window.
                freed, wait = 0, _WINDOW_S
                for entry in self.entries:
                    freed += entry.tokens
                    if used - freed + tokens <= limits.tpm:
                        wait = entry.at + _WINDOW_S - now
                        break
                return RateLimitedError(
                    f"tokens-per-minute limit of {limits.tpm} reached "
                    f"({used} used in the last minute, this call up to {tokens})",
                    limit="tokens_per_minute",
                    retry_after_s=max(wait, 0.001),
                )
        return None

    def hold(self, now: float, tokens: int) -> _Entry:
        """Count one request of `tokens` now."""
        entry = _Entry(now, tokens)
        self.entries.append(entry)
        return entry


def _until_next_day(now: datetime) -> float:
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


def _until_next_month(now: datetime) -> float:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + timedelta(days=32)).replace(day=1)
    return (following - now).total_seconds()


# While only in-flight holds block a call, they settle within a call's time: retry soon.
_IN_FLIGHT_RETRY_S = 1.0


def _spend_refusal(
    *,
    who: str,
    period: str,
    limit: Decimal | None,
    settled: Decimal,
    held: Decimal,
    cost: Decimal,
    reset_s: float,
) -> RateLimitedError | None:
    if limit is None or settled + held + cost <= limit:
        return None
    retry = reset_s if settled + cost > limit else _IN_FLIGHT_RETRY_S
    return RateLimitedError(
        f"{who} {period} spend limit of {limit:f} reached (settled {settled:f}, "
        f"reserved by calls in flight {held:f}, this call up to {cost:f})",
        limit=f"{who}_{period}_spend",
        retry_after_s=retry,
    )


class KeyReservation:
    """One call's hold; `settle` replaces it by the real cost and tokens (once)."""

    def __init__(
        self,
        quotas: KeyQuotas,
        principal: Principal,
        day: str,
        cost: Decimal,
        entry: _Entry,
    ) -> None:
        self._quotas = quotas
        self._principal = principal
        self._day = day
        self.cost = cost
        self._entry = entry
        self.settled = False

    async def settle(self, *, cost: Decimal, tokens: int) -> None:
        """Replace the held amounts by the real ones (release what was not used)."""
        if self.settled:
            return
        self.settled = True
        self._entry.tokens = tokens
        record = self._quotas._release(self._principal, self._day, self.cost, cost)
        if record is None:
            return
        try:
            await self._quotas._log.record(record)
        except Exception as error:
            # Totals are running sums: the next settlement of this key publishes this one too.
            # The call itself succeeded; failing it now would only make the caller retry.
            log.warning(
                "spend total not published",
                extra={"key_id": record.key_id, "reason": str(error)},
            )


class KeyQuotas:
    """`Quotas` over each key's limits (from the registry) and optional tenant spend limits."""

    def __init__(
        self,
        limits_of: Callable[[str], Limits],
        log: SpendLog,
        clock: Callable[[], datetime],
        instance_id: str,
        tenant_limits: Mapping[str, Limits] | None = None,
    ) -> None:
        self._limits_of = limits_of
        self._log = log
        self._clock = clock
        self.instance_id = instance_id
        self._tenant_limits = dict(tenant_limits or {})
        self.totals = SpendTotals()
        self._windows: dict[str, SlidingWindow] = {}
        self._own: dict[tuple[str, str], Decimal] = {}
        self._held_key: dict[str, Decimal] = {}
        self._held_tenant: dict[str, Decimal] = {}

    def observe(self, record: SpendRecord) -> None:
        """Fold a settled total published by any instance (this one included)."""
        self.totals.observe(record)

    def in_flight(self, key_id: str) -> Decimal:
        """Worst-case cost this instance holds for `key_id` right now."""
        return self._held_key.get(key_id, Decimal(0))

    async def reserve(self, principal: Principal, *, cost: Decimal, tokens: int) -> KeyReservation:
        """Hold one request, `tokens` and the worst-case `cost`; `RateLimitedError` when over."""
        now = self._clock().astimezone(UTC)
        stamp = now.timestamp()
        day = now.date().isoformat()
        limits = self._limits_of(principal.key_id)
        window = self._windows.setdefault(principal.key_id, SlidingWindow())
        refusal = window.refusal(stamp, limits, tokens)
        key_day, key_month = self.totals.key(principal.key_id, day)
        tenant_day, tenant_month = self.totals.tenant(principal.tenant_id, day)
        tenant = self._tenant_limits.get(principal.tenant_id, Limits())
        held_key = self._held_key.get(principal.key_id, Decimal(0))
        held_tenant = self._held_tenant.get(principal.tenant_id, Decimal(0))
        checks = (
            ("key", "daily", limits.daily_spend, key_day, held_key, _until_next_day(now)),
            ("key", "monthly", limits.monthly_spend, key_month, held_key, _until_next_month(now)),
            ("tenant", "daily", tenant.daily_spend, tenant_day, held_tenant, _until_next_day(now)),
            (
                "tenant",
                "monthly",
                tenant.monthly_spend,
                tenant_month,
                held_tenant,
                _until_next_month(now),
            ),
        )
        for who, period, limit, settled, held, reset_s in checks:
            if refusal is not None:
                break
            refusal = _spend_refusal(
                who=who,
                period=period,
                limit=limit,
                settled=settled,
                held=held,
                cost=cost,
                reset_s=reset_s,
            )
        if refusal is not None:
            raise refusal
        # No await since the checks: the hold is atomic with them on this event loop.
        entry = window.hold(stamp, tokens)
        self._held_key[principal.key_id] = held_key + cost
        self._held_tenant[principal.tenant_id] = held_tenant + cost
        return KeyReservation(self, principal, day, cost, entry)

    def _release(
        self, principal: Principal, day: str, held: Decimal, cost: Decimal
    ) -> SpendRecord | None:
        """Drop a hold and add the real cost to this instance's total; the record to publish."""
        self._held_key[principal.key_id] = self._held_key.get(principal.key_id, held) - held
        self._held_tenant[principal.tenant_id] = (
            self._held_tenant.get(principal.tenant_id, held) - held
        )
        if cost <= 0:
            return None
        total = self._own.get((principal.key_id, day), Decimal(0)) + cost
        self._own[(principal.key_id, day)] = total
        record = SpendRecord(principal.key_id, principal.tenant_id, day, self.instance_id, total)
        # Seen here at once, not only when the topic delivers it back.
        self.totals.observe(record)
        return record
