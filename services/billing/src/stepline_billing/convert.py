"""The protobuf boundary: `UsageRecorded` → `UsageRecord`, and core results → proto messages."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import budgets_pb2, model_pb2, tools_pb2, usage_pb2
from stepline_billing.budgets import Budget, Period, RunBudget
from stepline_billing.ledger import Kind, LedgerEntry, UsageRecord
from stepline_billing.rollups import Granularity, Rollup
from stepline_runtime.codec import Cause, InvalidRecordError
from stepline_vocab import MoneyError, wire

__all__ = [
    "budget_to_proto",
    "entry_to_proto",
    "granularity_from_proto",
    "kind_from_proto",
    "rollup_to_proto",
    "timestamp",
    "usage_from_proto",
]

_KINDS: dict[usage_pb2.UsageKind.ValueType, Kind] = {
    usage_pb2.USAGE_KIND_MODEL_ATTEMPT: Kind.MODEL_ATTEMPT,
    usage_pb2.USAGE_KIND_TOOL_EXECUTION: Kind.TOOL_EXECUTION,
}
_KIND_VALUES = {kind: value for value, kind in _KINDS.items()}
_GRANULARITIES: dict[usage_pb2.RollupGranularity.ValueType, Granularity] = {
    usage_pb2.ROLLUP_GRANULARITY_HOURLY: Granularity.HOURLY,
    usage_pb2.ROLLUP_GRANULARITY_DAILY: Granularity.DAILY,
}
_GRANULARITY_VALUES = {g: value for value, g in _GRANULARITIES.items()}


_NO_OUTCOME = model_pb2.ModelAttemptOutcome.Name(model_pb2.MODEL_ATTEMPT_OUTCOME_UNSPECIFIED)
_NO_TOOL_ERROR = tools_pb2.ToolCallErrorKind.Name(tools_pb2.TOOL_CALL_ERROR_KIND_UNSPECIFIED)


def _invalid(reason: str) -> InvalidRecordError:
    return InvalidRecordError(Cause.INVALID, reason)


def kind_from_proto(value: usage_pb2.UsageKind.ValueType) -> Kind | None:
    """The core kind of a `UsageKind`, None for unspecified."""
    return _KINDS.get(value)


def granularity_from_proto(value: usage_pb2.RollupGranularity.ValueType) -> Granularity:
    """The core granularity of a `RollupGranularity`; unspecified means daily."""
    return _GRANULARITIES.get(value, Granularity.DAILY)


def usage_from_proto(message: usage_pb2.UsageRecorded, fallback_time_ms: int) -> UsageRecord:
    """Validate and convert; raise `InvalidRecordError` (→ DLQ with the reason) when unusable."""
    if not message.usage_id:
        raise _invalid("UsageRecorded.usage_id is empty: it is the ledger's idempotency key")
    if not message.tenant_id:
        raise _invalid(f"usage {message.usage_id}: tenant_id is empty")
    kind = kind_from_proto(message.kind)
    if kind is None:
        raise _invalid(f"usage {message.usage_id}: kind is unspecified")
    counts = wire.tokens_from_proto(message.usage)
    if min(counts.input, counts.output, counts.cached_input, counts.cache_write_input) < 0:
        raise _invalid(f"usage {message.usage_id}: negative token counts")
    reported: Decimal | None = None
    # `priced` is the one flag of a known cost: an unpriced record omits `cost` (older
    # executors wrote "0 USD" there), and its cost is never read as zero.
    if message.priced:
        try:
            reported = wire.amount_of(message.cost, what=f"usage {message.usage_id}: cost amount")
        except MoneyError as error:
            raise _invalid(str(error)) from error
    if message.HasField("occurred_at"):
        occurred = message.occurred_at.ToDatetime(tzinfo=UTC)
    else:
        # The record's own timestamp is stable across redeliveries, unlike the clock.
        occurred = datetime.fromtimestamp(fallback_time_ms / 1000, UTC)
    return UsageRecord(
        usage_id=message.usage_id,
        tenant_id=message.tenant_id,
        kind=kind,
        occurred_at=occurred,
        run_id=message.run_id,
        step_id=message.step_id,
        call_id=message.call_id,
        provider=message.provider,
        model=message.model,
        deployment=message.deployment,
        tool=message.tool,
        outcome=model_pb2.ModelAttemptOutcome.Name(message.outcome)
        if kind is Kind.MODEL_ATTEMPT
        else "",
        tool_error_kind=tools_pb2.ToolCallErrorKind.Name(message.tool_error_kind)
        if message.tool_error_kind
        else "",
        succeeded=message.succeeded,
        tokens=counts,
        reported_cost=reported,
        reported_currency=message.cost.currency if message.priced else "",
        reported_version=message.price_book_version if message.priced else "",
        latency_us=message.latency.ToMicroseconds(),
        attempt=message.attempt,
        route=message.route,
        agent=message.agent,
        status_code=message.status_code,
    )


def timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


_money = wire.money_to_proto
tokens_to_proto = wire.tokens_to_proto


def entry_to_proto(entry: LedgerEntry) -> usage_pb2.UsageRecorded:
    """A ledger row as `UsageRecorded`, carrying the cost billing charged."""
    u = entry.usage
    latency = Duration()
    latency.FromMicroseconds(u.latency_us)
    return usage_pb2.UsageRecorded(
        usage_id=u.usage_id,
        tenant_id=u.tenant_id,
        run_id=u.run_id,
        step_id=u.step_id,
        call_id=u.call_id,
        kind=_KIND_VALUES[u.kind],
        provider=u.provider,
        model=u.model,
        deployment=u.deployment,
        tool=u.tool,
        outcome=model_pb2.ModelAttemptOutcome.Value(u.outcome or _NO_OUTCOME),
        tool_error_kind=tools_pb2.ToolCallErrorKind.Value(u.tool_error_kind or _NO_TOOL_ERROR),
        succeeded=u.succeeded,
        usage=tokens_to_proto(u.tokens),
        cost=_money(entry.cost, entry.currency),
        priced=entry.priced,
        price_book_version=entry.price_book_version,
        latency=latency,
        occurred_at=timestamp(u.occurred_at),
        attempt=u.attempt,
        route=u.route,
        agent=u.agent,
        status_code=u.status_code,
    )


def rollup_to_proto(rollup: Rollup, currency: str, computed_at: datetime) -> usage_pb2.UsageRollup:
    """A rollup as `UsageRollup`."""
    key = rollup.key
    return usage_pb2.UsageRollup(
        rollup_id=key.rollup_id,
        tenant_id=key.tenant_id,
        window_start=timestamp(key.window_start),
        window_end=timestamp(key.window_end),
        granularity=_GRANULARITY_VALUES[key.granularity],
        kind=_KIND_VALUES[key.kind],
        provider=key.provider,
        model=key.model,
        tool=key.tool,
        usage=tokens_to_proto(rollup.tokens),
        cost=_money(rollup.cost, currency),
        calls=rollup.calls,
        failures=rollup.failures,
        unpriced_calls=rollup.unpriced_calls,
        computed_at=timestamp(computed_at),
    )


def _period(period: Period, currency: str) -> budgets_pb2.BudgetPeriod:
    return budgets_pb2.BudgetPeriod(
        limit=_money(period.limit, currency),
        spent=_money(period.spent, currency),
        reserved=_money(period.reserved, currency),
        period_start=timestamp(period.start),
        period_end=timestamp(period.end),
        exhausted=period.exhausted,
    )


def _run(run: RunBudget, currency: str) -> budgets_pb2.RunBudget:
    return budgets_pb2.RunBudget(
        run_id=run.run_id,
        limit=_money(run.limit, currency),
        spent=_money(run.spent, currency),
        recorded_calls=run.recorded_calls,
        unpriced_calls=run.unpriced_calls,
        exhausted=run.exhausted,
    )


def budget_to_proto(budget: Budget, currency: str) -> budgets_pb2.BudgetState:
    """A budget as `BudgetState`."""
    return budgets_pb2.BudgetState(
        tenant_id=budget.tenant_id,
        daily=_period(budget.daily, currency),
        monthly=_period(budget.monthly, currency),
        exhausted=budget.exhausted,
        updated_at=timestamp(budget.updated_at),
        version=budget.version,
        run=None if budget.run is None else _run(budget.run, currency),
        runs=[_run(run, currency) for run in budget.runs],
    )
