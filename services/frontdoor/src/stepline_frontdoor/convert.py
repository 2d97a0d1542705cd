"""Wire types to read-model facts: the only place the projection touches protobuf."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import (
    budgets_pb2,
    common_pb2,
    control_pb2,
    model_pb2,
    runs_pb2,
    tools_pb2,
    usage_pb2,
)
from stepline_frontdoor.readmodel import (
    AttemptRow,
    BudgetRow,
    EventKind,
    EventRow,
    Final,
    RollupRow,
    RunFact,
    ToolOutputRow,
)

__all__ = [
    "MAX_OUTPUT_CHARS",
    "attempt_row",
    "budget_row",
    "enum_label",
    "refused_attempts",
    "rollup_row",
    "run_event",
    "run_fact",
    "tool_output_row",
]

# The console shows outputs truncated anyway; the read model keeps at most this much of each.
MAX_OUTPUT_CHARS = 65_536


def _time(stamp: Timestamp, fallback: datetime) -> datetime:
    if not stamp.seconds and not stamp.nanos:
        return fallback
    return stamp.ToDatetime(tzinfo=UTC)


def _amount(money: common_pb2.Money) -> Decimal:
    try:
        value = Decimal(money.amount or "0")
    except InvalidOperation:
        return Decimal(0)
    return value if value.is_finite() else Decimal(0)


def enum_label(name: str, prefix: str) -> str:
    """`MODEL_ATTEMPT_OUTCOME_RATE_LIMITED` → `rate_limited`."""
    return name.removeprefix(prefix).lower()


def _final(event: runs_pb2.RunEvent, kind: str) -> Final:
    done = getattr(event, kind)
    reason = ""
    if kind == "failed":
        reason = enum_label(
            runs_pb2.RunFailureReason.Name(event.failed.reason), "RUN_FAILURE_REASON_"
        )
    return Final(
        steps=done.steps,
        cost=_amount(done.cost),
        currency=done.cost.currency,
        input_tokens=done.usage.input_tokens,
        output_tokens=done.usage.output_tokens,
        answer=event.completed.answer if kind == "completed" else "",
        failure_reason=reason,
        failure_message=event.failed.message if kind == "failed" else event.cancelled.reason,
    )


def run_fact(event: runs_pb2.RunEvent, received_at: datetime) -> RunFact:
    """The fact a `RunEvent` states; `received_at` stands in for a missing `occurred_at`."""
    which = event.WhichOneof("event")
    if which is None:
        raise ValueError("RunEvent carries no event")
    kind = EventKind(which)
    detail = getattr(event, which)
    body: dict[str, Any] = MessageToDict(detail, preserving_proto_field_name=True)
    fields: dict[str, Any] = {}
    if kind is EventKind.STARTED:
        s = event.started
        fields = {
            "goal": s.goal,
            "session_id": s.session_id,
            "parent_run_id": s.parent_run_id,
            "submitted_by": s.submitted_by,
            "route": s.route,
            "replay_of": s.replay.original_run_id if s.HasField("replay") else "",
        }
    elif kind is EventKind.APPROVAL_REQUESTED:
        a = event.approval_requested
        fields = {
            "approval_id": a.approval_id,
            "step_id": a.step_id,
            "call_id": a.call_id,
            "tool": a.tool,
            "arguments_json": a.arguments_json,
            "expires_at": _time(a.expires_at, received_at) if a.HasField("expires_at") else None,
        }
    elif kind is EventKind.APPROVAL_RESOLVED:
        r = event.approval_resolved
        fields = {
            "approval_id": r.approval_id,
            "step_id": r.step_id,
            "call_id": r.call_id,
            "approved": r.decision == control_pb2.APPROVAL_DECISION_APPROVED,
            "reason": r.reason,
            "decided_by": r.decided_by,
            "timed_out": r.timed_out,
            "arguments_edited": r.arguments_edited,
        }
    elif kind is EventKind.CHILD_RUN_STARTED:
        fields = {"child_run_id": event.child_run_started.child_run_id}
    elif kind is EventKind.STEP_COMPLETED:
        c = event.step_completed
        fields = {
            "step_cost": _amount(c.cost),
            "step_currency": c.cost.currency,
            "step_input_tokens": c.usage.input_tokens,
            "step_output_tokens": c.usage.output_tokens,
        }
    elif kind in (EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED):
        fields = {"final": _final(event, which)}
    return RunFact(
        run_id=event.run_id,
        tenant_id=event.tenant_id,
        agent=event.agent,
        sequence=event.sequence,
        occurred_at=_time(event.occurred_at, received_at),
        kind=kind,
        body=body,
        **fields,
    )


def run_event(row: EventRow, agent: str) -> runs_pb2.RunEvent:
    """The `RunEvent` a timeline row of a run of `agent` was projected from (its body is the
    detail as proto JSON)."""
    event = runs_pb2.RunEvent(
        run_id=row.run_id,
        tenant_id=row.tenant_id,
        agent=agent,
        event_id=f"{row.run_id}/{row.sequence}",
        sequence=row.sequence,
    )
    event.occurred_at.FromDatetime(row.occurred_at)
    detail = getattr(event, row.kind.value)
    detail.SetInParent()  # an event whose detail has only defaults still names its kind
    ParseDict(row.body, detail, ignore_unknown_fields=True)
    return event


def attempt_row(record: usage_pb2.UsageRecorded, received_at: datetime) -> AttemptRow:
    """The attempt row of one `UsageRecorded`."""
    model = record.kind == usage_pb2.USAGE_KIND_MODEL_ATTEMPT
    if model:
        outcome = enum_label(
            model_pb2.ModelAttemptOutcome.Name(record.outcome), "MODEL_ATTEMPT_OUTCOME_"
        )
    else:
        outcome = "succeeded" if record.succeeded else "failed"
    latency = record.latency.seconds * 1000 + record.latency.nanos / 1e6
    return AttemptRow(
        usage_id=record.usage_id,
        tenant_id=record.tenant_id,
        run_id=record.run_id,
        step_id=record.step_id,
        call_id=record.call_id,
        kind="model" if model else "tool",
        agent=record.agent,
        route=record.route,
        provider=record.provider,
        model=record.model,
        deployment=record.deployment,
        tool=record.tool,
        outcome=outcome,
        succeeded=record.succeeded,
        status_code=record.status_code,
        attempt=record.attempt,
        input_tokens=record.usage.input_tokens,
        output_tokens=record.usage.output_tokens,
        cost=_amount(record.cost),
        currency=record.cost.currency,
        priced=record.priced,
        latency_ms=round(latency, 3),
        occurred_at=_time(record.occurred_at, received_at),
    )


_GRANULARITY = {
    usage_pb2.ROLLUP_GRANULARITY_HOURLY: "hour",
    usage_pb2.ROLLUP_GRANULARITY_DAILY: "day",
}


def rollup_row(rollup: usage_pb2.UsageRollup, received_at: datetime) -> RollupRow:
    """The row of one billing `UsageRollup`; ValueError for one of no known granularity."""
    granularity = _GRANULARITY.get(rollup.granularity)
    if granularity is None or not rollup.rollup_id or not rollup.tenant_id:
        raise ValueError("a usage rollup needs an id, a tenant and an hourly or daily window")
    return RollupRow(
        rollup_id=rollup.rollup_id,
        tenant_id=rollup.tenant_id,
        granularity=granularity,
        window_start=_time(rollup.window_start, received_at),
        kind="model" if rollup.kind == usage_pb2.USAGE_KIND_MODEL_ATTEMPT else "tool",
        provider=rollup.provider,
        model=rollup.model,
        tool=rollup.tool,
        cost=_amount(rollup.cost),
        currency=rollup.cost.currency,
        calls=rollup.calls,
        failures=rollup.failures,
        unpriced_calls=rollup.unpriced_calls,
        input_tokens=rollup.usage.input_tokens,
        output_tokens=rollup.usage.output_tokens,
        computed_at=_time(rollup.computed_at, received_at),
    )


def tool_output_row(result: tools_pb2.ToolCallResult, received_at: datetime) -> ToolOutputRow:
    """The output row of one `ToolCallResult`."""
    output, error, truncated = "", "", False
    if result.WhichOneof("outcome") == "completed":
        output = result.completed.output
        truncated = result.completed.output_truncated
    elif result.WhichOneof("outcome") == "failed":
        kind = enum_label(
            tools_pb2.ToolCallErrorKind.Name(result.failed.kind), "TOOL_CALL_ERROR_KIND_"
        )
        error = f"{kind}: {result.failed.message}"
    if len(output) > MAX_OUTPUT_CHARS:
        output, truncated = output[:MAX_OUTPUT_CHARS] + "…[truncated]", True
    return ToolOutputRow(
        call_id=result.call_id,
        run_id=result.run_id,
        tenant_id=result.tenant_id,
        step_id=result.step_id,
        tool=result.tool,
        output=output,
        error=error,
        truncated=truncated,
        finished_at=_time(result.finished_at, received_at),
    )


def refused_attempts(result: model_pb2.ModelCallResult, received_at: datetime) -> list[AttemptRow]:
    """The attempts the router did not send (circuit open), as the model result lists them.

    The router also records each as a `UsageRecorded` (outcome circuit_open, nothing spent);
    the row carries that record's usage id, so whichever of the two arrives first is kept and
    the other is the same attempt, not a second one.
    """
    which = result.WhichOneof("outcome")
    if which is None:
        return []
    trail = getattr(result, which).attempts
    return [
        AttemptRow(
            # The router's usage id of the attempt ("<call_id>/attempt/<n>"): one row per attempt.
            usage_id=f"{result.call_id}/attempt/{a.attempt}",
            tenant_id=result.tenant_id,
            run_id=result.run_id,
            step_id=result.step_id,
            call_id=result.call_id,
            kind="model",
            agent="",
            route="",
            provider=a.provider,
            model=a.model,
            deployment=a.deployment,
            tool="",
            outcome="circuit_open",
            succeeded=False,
            status_code=0,
            attempt=a.attempt,
            input_tokens=0,
            output_tokens=0,
            cost=Decimal(0),
            currency="",
            priced=False,
            latency_ms=0.0,
            occurred_at=_time(a.started_at, _time(result.finished_at, received_at)),
        )
        for a in trail
        if a.outcome == model_pb2.MODEL_ATTEMPT_OUTCOME_CIRCUIT_OPEN
    ]


def budget_row(state: budgets_pb2.BudgetState, received_at: datetime) -> BudgetRow:
    """The tenant's budget a `BudgetState` states (billing adds the run's when it has one)."""
    daily, monthly = state.daily, state.monthly
    return BudgetRow(
        tenant_id=state.tenant_id,
        daily_limit=_amount(daily.limit) if daily.HasField("limit") else None,
        daily_spent=_amount(daily.spent),
        monthly_limit=_amount(monthly.limit) if monthly.HasField("limit") else None,
        monthly_spent=_amount(monthly.spent),
        currency=daily.spent.currency or monthly.spent.currency or daily.limit.currency,
        exhausted=state.exhausted,
        version=state.version,
        updated_at=_time(state.updated_at, received_at),
    )
