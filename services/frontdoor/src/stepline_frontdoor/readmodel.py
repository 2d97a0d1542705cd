"""The read model's pure core: fold a run event or a usage record into the rows it changes.

No I/O, no protobuf: `convert` turns the wire types into the facts below and the store writes
the rows. Folding is idempotent: an event at or below the run's last sequence changes nothing,
so a projection rebuilt from the beginning of the topics, or a redelivered record, ends in the
same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, assert_never

__all__ = [
    "ApprovalRow",
    "ApprovalStatus",
    "AttemptRow",
    "BudgetRow",
    "EventKind",
    "EventRow",
    "Final",
    "Projection",
    "RollupRow",
    "RunFact",
    "RunRow",
    "RunStatus",
    "ToolOutputRow",
    "project",
]


class RunStatus(StrEnum):
    """Where a run stands, as the console shows and filters it."""

    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    WRAPPING_UP = "wrapping_up"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ApprovalStatus(StrEnum):
    """An approval's state."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CLOSED = "closed"  # the run ended before anyone decided


class EventKind(StrEnum):
    """The `RunEvent` kinds (the proto oneof's field names)."""

    QUEUED = "queued"
    STARTED = "started"
    STEP_STARTED = "step_started"
    STEP_COMPLETED = "step_completed"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_RESOLVED = "approval_resolved"
    DUPLICATE_RESULT_IGNORED = "duplicate_result_ignored"
    BUDGET_RESERVED = "budget_reserved"
    CHILD_RUN_STARTED = "child_run_started"
    WRAP_UP_STARTED = "wrap_up_started"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Final:
    """What a terminal event says about the whole run."""

    steps: int
    cost: Decimal
    currency: str
    input_tokens: int
    output_tokens: int
    answer: str = ""
    failure_reason: str = ""
    failure_message: str = ""


@dataclass(frozen=True, slots=True)
class RunFact:
    """One `RunEvent`, with the fields the read model needs and the rest as JSON (`body`)."""

    run_id: str
    tenant_id: str
    agent: str
    sequence: int
    occurred_at: datetime
    kind: EventKind
    body: dict[str, Any] = field(default_factory=dict)
    # started
    goal: str = ""
    session_id: str = ""
    parent_run_id: str = ""
    submitted_by: str = ""
    route: str = ""
    # The original run when this one is a replay or fork.
    replay_of: str = ""
    # approval_requested / approval_resolved
    approval_id: str = ""
    step_id: str = ""
    call_id: str = ""
    tool: str = ""
    arguments_json: str = ""
    expires_at: datetime | None = None
    approved: bool = False
    reason: str = ""
    decided_by: str = ""
    timed_out: bool = False
    arguments_edited: bool = False
    # child_run_started
    child_run_id: str = ""
    # step_completed (model steps): what the step cost, all attempts included
    step_cost: Decimal = Decimal(0)
    step_currency: str = ""
    step_input_tokens: int = 0
    step_output_tokens: int = 0
    # completed / failed / cancelled
    final: Final | None = None


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run as the list and the run page show it."""

    run_id: str
    tenant_id: str
    agent: str
    status: RunStatus
    last_sequence: int
    started_at: datetime
    updated_at: datetime
    goal: str = ""
    session_id: str = ""
    parent_run_id: str = ""
    submitted_by: str = ""
    route: str = ""
    finished_at: datetime | None = None
    steps: int = 0
    cost: Decimal = Decimal(0)
    currency: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    answer: str = ""
    failure_reason: str = ""
    failure_message: str = ""
    pending_approvals: int = 0


@dataclass(frozen=True, slots=True)
class EventRow:
    """One entry of a run's timeline."""

    run_id: str
    tenant_id: str
    sequence: int
    kind: EventKind
    occurred_at: datetime
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ApprovalRow:
    """A tool call waiting for (or past) a human decision."""

    run_id: str
    tenant_id: str
    agent: str
    approval_id: str
    step_id: str
    call_id: str
    tool: str
    arguments_json: str
    requested_at: datetime
    expires_at: datetime | None
    status: ApprovalStatus = ApprovalStatus.PENDING
    reason: str = ""
    decided_by: str = ""
    timed_out: bool = False
    arguments_edited: bool = False
    resolved_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One `UsageRecorded`: a model attempt against one deployment, or one tool execution."""

    usage_id: str
    tenant_id: str
    run_id: str
    step_id: str
    call_id: str
    kind: str  # "model" or "tool"
    agent: str
    route: str
    provider: str
    model: str
    deployment: str
    tool: str
    outcome: str
    succeeded: bool
    status_code: int
    attempt: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    currency: str
    priced: bool
    latency_ms: float
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """A tenant's budget as billing last published it (a limit of None: unlimited)."""

    tenant_id: str
    daily_limit: Decimal | None
    daily_spent: Decimal
    monthly_limit: Decimal | None
    monthly_spent: Decimal
    currency: str
    exhausted: bool
    version: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RollupRow:
    """One of billing's rollups: a tenant's spend in one hour or day for one model or tool."""

    rollup_id: str
    tenant_id: str
    granularity: str  # "hour" or "day"
    window_start: datetime
    kind: str  # "model" or "tool"
    provider: str
    model: str
    tool: str
    cost: Decimal
    currency: str
    calls: int
    failures: int
    unpriced_calls: int
    input_tokens: int
    output_tokens: int
    computed_at: datetime


@dataclass(frozen=True, slots=True)
class ToolOutputRow:
    """What a tool call returned (or why it failed), as the executor reported it."""

    call_id: str
    run_id: str
    tenant_id: str
    step_id: str
    tool: str
    output: str
    error: str
    truncated: bool
    finished_at: datetime


@dataclass(frozen=True, slots=True)
class Projection:
    """The rows one event changes; `run` is None when the event changed nothing (a duplicate)."""

    run: RunRow | None
    event: EventRow | None = None
    approval: ApprovalRow | None = None
    resolved: ApprovalRow | None = None
    # A terminal event closes the run's approvals still pending.
    close_pending: bool = False


_STATUS_AFTER: dict[EventKind, RunStatus] = {
    EventKind.QUEUED: RunStatus.QUEUED,
    EventKind.STARTED: RunStatus.RUNNING,
    EventKind.APPROVAL_REQUESTED: RunStatus.AWAITING_APPROVAL,
    EventKind.WRAP_UP_STARTED: RunStatus.WRAPPING_UP,
    EventKind.COMPLETED: RunStatus.COMPLETED,
    EventKind.FAILED: RunStatus.FAILED,
    EventKind.CANCELLED: RunStatus.CANCELLED,
}


def _new_run(fact: RunFact) -> RunRow:
    return RunRow(
        run_id=fact.run_id,
        tenant_id=fact.tenant_id,
        agent=fact.agent,
        status=RunStatus.QUEUED,
        last_sequence=0,
        started_at=fact.occurred_at,
        updated_at=fact.occurred_at,
    )


def project(run: RunRow | None, fact: RunFact, pending: ApprovalRow | None = None) -> Projection:
    """Fold `fact` into its run's row; `pending` is the approval `fact` resolves, if stored."""
    if run is not None and fact.sequence <= run.last_sequence:
        return Projection(run=None)  # already folded: a redelivery or a rebuild overlap
    current = run or _new_run(fact)
    updated = replace(
        current,
        agent=fact.agent or current.agent,
        last_sequence=fact.sequence,
        updated_at=fact.occurred_at,
        status=_STATUS_AFTER.get(fact.kind, current.status),
    )
    event = EventRow(
        fact.run_id, fact.tenant_id, fact.sequence, fact.kind, fact.occurred_at, fact.body
    )
    approval: ApprovalRow | None = None
    resolved: ApprovalRow | None = None
    match fact.kind:
        case EventKind.STARTED:
            updated = replace(
                updated,
                goal=fact.goal,
                session_id=fact.session_id,
                parent_run_id=fact.parent_run_id,
                submitted_by=fact.submitted_by,
                route=fact.route,
                started_at=fact.occurred_at,
            )
        case EventKind.STEP_COMPLETED:
            updated = replace(
                updated,
                steps=updated.steps + 1,
                cost=updated.cost + fact.step_cost,
                currency=updated.currency or fact.step_currency,
                input_tokens=updated.input_tokens + fact.step_input_tokens,
                output_tokens=updated.output_tokens + fact.step_output_tokens,
            )
        case EventKind.APPROVAL_REQUESTED:
            updated = replace(updated, pending_approvals=updated.pending_approvals + 1)
            approval = ApprovalRow(
                run_id=fact.run_id,
                tenant_id=fact.tenant_id,
                agent=updated.agent,
                approval_id=fact.approval_id,
                step_id=fact.step_id,
                call_id=fact.call_id,
                tool=fact.tool,
                arguments_json=fact.arguments_json,
                requested_at=fact.occurred_at,
                expires_at=fact.expires_at,
            )
        case EventKind.APPROVAL_RESOLVED:
            left = max(updated.pending_approvals - 1, 0)
            # Other tool calls of the same turn may still wait for a decision.
            status = RunStatus.AWAITING_APPROVAL if left else RunStatus.RUNNING
            updated = replace(updated, pending_approvals=left, status=status)
            if pending is not None:
                resolved = replace(
                    pending,
                    status=ApprovalStatus.APPROVED if fact.approved else ApprovalStatus.DENIED,
                    reason=fact.reason,
                    decided_by=fact.decided_by,
                    timed_out=fact.timed_out,
                    arguments_edited=fact.arguments_edited,
                    resolved_at=fact.occurred_at,
                )
        case EventKind.COMPLETED | EventKind.FAILED | EventKind.CANCELLED:
            final = fact.final or Final(0, Decimal(0), "", 0, 0)
            updated = replace(
                updated,
                finished_at=fact.occurred_at,
                steps=final.steps or updated.steps,
                cost=final.cost,
                currency=final.currency or updated.currency,
                input_tokens=final.input_tokens,
                output_tokens=final.output_tokens,
                answer=final.answer,
                failure_reason=final.failure_reason,
                failure_message=final.failure_message,
                pending_approvals=0,
            )
        case (
            EventKind.QUEUED
            | EventKind.STEP_STARTED
            | EventKind.DUPLICATE_RESULT_IGNORED
            | EventKind.BUDGET_RESERVED
            | EventKind.CHILD_RUN_STARTED
            | EventKind.WRAP_UP_STARTED
        ):
            pass  # the timeline entry is all they add
        case _:
            assert_never(fact.kind)
    terminal = fact.kind in (EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED)
    return Projection(
        run=updated, event=event, approval=approval, resolved=resolved, close_pending=terminal
    )
