"""Protobuf ↔ core types. Protobuf stops here; the core never sees a generated class."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Any, TypeAlias, assert_never, cast

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import (
    budgets_pb2,
    common_pb2,
    control_pb2,
    goals_pb2,
    model_pb2,
    planner_state_pb2,
    runs_pb2,
    tools_pb2,
)
from stepline_planner import outputs as o
from stepline_planner.decide import TenantBudget
from stepline_planner.inputs import (
    ApprovalDecided,
    CancelRequested,
    ChildEnded,
    Goal,
    ModelCompleted,
    ModelFailed,
    ToolCompleted,
    ToolFailed,
)
from stepline_planner.replay_convert import (
    origin_to_proto,
    replay_from_proto,
    replay_to_proto,
    served_to_proto,
)
from stepline_planner.state import (
    Decision,
    IgnoredReason,
    Message,
    Outcome,
    PendingStep,
    Reason,
    Role,
    Run,
    Session,
    Status,
    StepKind,
)
from stepline_vocab import BadInputError, MoneyError, wire

__all__ = [
    "RUN_HEAD_FIELDS",
    "ConversionError",
    "EventBodyProto",
    "approval_from_proto",
    "budget_from_proto",
    "cancel_from_proto",
    "child_ended_from_proto",
    "child_ended_to_proto",
    "decimal_of",
    "event_body_to_proto",
    "event_head_to_proto",
    "event_to_proto",
    "goal_from_proto",
    "goal_to_proto",
    "messages_from_proto",
    "messages_to_proto",
    "model_request_head_to_proto",
    "model_request_to_proto",
    "model_result_from_proto",
    "pending_step_to_proto",
    "run_from_proto",
    "run_head_to_proto",
    "run_progress_to_proto",
    "run_to_proto",
    "session_from_proto",
    "session_to_proto",
    "tool_cancel_to_proto",
    "tool_request_to_proto",
    "tool_result_from_proto",
    "tool_spec_from_proto",
]


class ConversionError(BadInputError):
    """A message field cannot become a core value (e.g. a malformed amount)."""


# --- scalars ----------------------------------------------------------------------------------


def _ts(value: datetime | None) -> Timestamp | None:
    return None if value is None else wire.timestamp_to_proto(value)


def _dt(stamp: Timestamp, present: bool = True) -> datetime | None:
    if not present or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def _duration(value: timedelta) -> Duration:
    if value < timedelta(0):  # Duration's nanos take the sign of its seconds: let it normalise
        duration = Duration()
        duration.FromTimedelta(value)
        return duration
    return Duration(seconds=value.days * 86_400 + value.seconds, nanos=value.microseconds * 1_000)


def decimal_of(money: common_pb2.Money) -> Decimal:
    """The amount of `money` ("" is zero); raises ConversionError for malformed amounts."""
    try:
        # Negative amounts are legal here: a budget's remainder can be below zero.
        return wire.amount_of(money, negative=True)
    except MoneyError as error:
        raise ConversionError(str(error)) from error


# Every event and snapshot carries a few amounts and token counts, mostly the same values again
# (a run's cost, a price): each is converted once. The messages are shared, so they are only
# ever passed to a constructor, which copies them, never changed.
_money = lru_cache(maxsize=4096)(wire.money_to_proto)
_usage = lru_cache(maxsize=4096)(wire.tokens_to_proto)
_usage_of = wire.tokens_from_proto


def _enum_name(enum_type: object, prefix: str, value: int) -> str:
    name: str = enum_type.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix)


def _by_prefix(enum_type: Any, prefix: str, members: Iterable[StrEnum]) -> dict[StrEnum, int]:
    """Each core enum member's proto value (`PREFIX_NAME`); a member without one fails import."""
    return {m: enum_type.Value(f"{prefix}{m.value}") for m in members}


# Looked up on every event and snapshot: built once, and a core value the proto lacks fails at
# import instead of on the first event that carries it.
_STATUSES = _by_prefix(runs_pb2.RunStatus, "RUN_STATUS_", Status)
_REASONS = _by_prefix(runs_pb2.RunFailureReason, "RUN_FAILURE_REASON_", Reason)
_KINDS = _by_prefix(runs_pb2.StepKind, "STEP_KIND_", StepKind)
_OUTCOMES = _by_prefix(runs_pb2.StepOutcome, "STEP_OUTCOME_", Outcome)
_IGNORED = _by_prefix(runs_pb2.IgnoredResultReason, "IGNORED_RESULT_REASON_", IgnoredReason)
_DECISIONS = _by_prefix(control_pb2.ApprovalDecision, "APPROVAL_DECISION_", Decision)


def _status(status: Status) -> runs_pb2.RunStatus.ValueType:
    return cast(runs_pb2.RunStatus.ValueType, _STATUSES[status])


def _reason(reason: Reason) -> runs_pb2.RunFailureReason.ValueType:
    return cast(runs_pb2.RunFailureReason.ValueType, _REASONS[reason])


def _reason_of(value: int) -> Reason:
    return Reason(_enum_name(runs_pb2.RunFailureReason, "RUN_FAILURE_REASON_", value))


def _kind(kind: StepKind) -> runs_pb2.StepKind.ValueType:
    return cast(runs_pb2.StepKind.ValueType, _KINDS[kind])


def _decision(decision: Decision) -> control_pb2.ApprovalDecision.ValueType:
    return cast(control_pb2.ApprovalDecision.ValueType, _DECISIONS[decision])


@lru_cache(maxsize=64)  # a handful of kinds, named by the executor's enum
def _tool_error(kind: str) -> tools_pb2.ToolCallErrorKind.ValueType:
    if not kind:
        return tools_pb2.TOOL_CALL_ERROR_KIND_UNSPECIFIED
    return tools_pb2.ToolCallErrorKind.Value(f"TOOL_CALL_ERROR_KIND_{kind}")


@lru_cache(maxsize=64)  # a handful of reasons, named by the router's enum
def _finish(reason: str) -> model_pb2.FinishReason.ValueType:
    if not reason:
        return model_pb2.FINISH_REASON_UNSPECIFIED
    return model_pb2.FinishReason.Value(f"FINISH_REASON_{reason}")


# --- transcripts ------------------------------------------------------------------------------


def messages_to_proto(messages: Iterable[Message]) -> list[common_pb2.ChatMessage]:
    """Core messages as ChatMessage protos."""
    return [wire.message_to_proto(m) for m in messages]


_calls = wire.tool_calls_from_proto


def messages_from_proto(messages: Iterable[common_pb2.ChatMessage]) -> tuple[Message, ...]:
    """ChatMessage protos as core messages (unspecified roles become USER)."""
    return tuple(
        wire.message_from_proto(m, wire.role_from_proto(m.role) or Role.USER) for m in messages
    )


# --- goals ------------------------------------------------------------------------------------


def goal_from_proto(goal: goals_pb2.GoalSubmitted) -> Goal:
    """A GoalSubmitted as a core Goal."""
    has_budget = goal.HasField("budget")
    return Goal(
        run_id=goal.run_id,
        tenant_id=goal.tenant_id,
        agent=goal.agent,
        goal=goal.goal,
        session_id=goal.session_id,
        budget=decimal_of(goal.budget) if has_budget else None,
        budget_currency=goal.budget.currency if has_budget else "",
        deadline=_dt(goal.deadline, goal.HasField("deadline")),
        metadata=dict(goal.metadata),
        idempotency_key=goal.idempotency_key,
        parent_run_id=goal.parent_run_id,
        submitted_by=goal.submitted_by,
        max_steps=goal.max_steps,
        replay=replay_from_proto(goal.replay) if goal.HasField("replay") else None,
    )


def goal_to_proto(goal: Goal, submitted_at: datetime) -> goals_pb2.GoalSubmitted:
    """A core Goal as GoalSubmitted (child runs, forwarded goals)."""
    return goals_pb2.GoalSubmitted(
        run_id=goal.run_id,
        tenant_id=goal.tenant_id,
        agent=goal.agent,
        goal=goal.goal,
        session_id=goal.session_id,
        budget=_money(goal.budget, goal.budget_currency),
        deadline=_ts(goal.deadline),
        metadata=dict(goal.metadata),
        idempotency_key=goal.idempotency_key,
        submitted_at=_ts(submitted_at),
        parent_run_id=goal.parent_run_id,
        submitted_by=goal.submitted_by,
        max_steps=goal.max_steps,
        replay=replay_to_proto(goal.replay) if goal.replay else None,
    )


# --- results and commands ---------------------------------------------------------------------


def model_result_from_proto(result: model_pb2.ModelCallResult) -> ModelCompleted | ModelFailed:
    """A router result as a core input; raises ConversionError when it has no outcome."""
    which = result.WhichOneof("outcome")
    if which is None:
        raise ConversionError("ModelCallResult has neither completed nor failed")
    if which == "completed":
        done = result.completed
        finish = _enum_name(model_pb2.FinishReason, "FINISH_REASON_", done.finish_reason)
        return ModelCompleted(
            step_id=result.step_id,
            call_id=result.call_id,
            content=done.content,
            tool_calls=_calls(done.tool_calls),
            finish_reason="" if finish == "UNSPECIFIED" else finish,
            usage=_usage_of(done.usage),
            cost=decimal_of(done.cost),
            provider=done.provider,
            model=done.model,
            deployment=done.deployment,
        )
    if which == "failed":
        failed = result.failed
        return ModelFailed(
            step_id=result.step_id,
            call_id=result.call_id,
            kind=_enum_name(model_pb2.ModelCallErrorKind, "MODEL_CALL_ERROR_KIND_", failed.kind),
            message=failed.message,
            usage=_usage_of(failed.usage),
            cost=decimal_of(failed.cost),
            attempts=len(failed.attempts),
        )
    assert_never(which)


def tool_result_from_proto(result: tools_pb2.ToolCallResult) -> ToolCompleted | ToolFailed:
    """An executor result as a core input."""
    which = result.WhichOneof("outcome")
    if which is None:
        raise ConversionError("ToolCallResult has neither completed nor failed")
    if which == "completed":
        done = result.completed
        return ToolCompleted(
            result.step_id,
            result.call_id,
            done.output,
            done.output_truncated,
            cost=decimal_of(result.cost),
        )
    if which == "failed":
        kind = _enum_name(tools_pb2.ToolCallErrorKind, "TOOL_CALL_ERROR_KIND_", result.failed.kind)
        return ToolFailed(
            result.step_id, result.call_id, kind, result.failed.message, decimal_of(result.cost)
        )
    assert_never(which)


def approval_from_proto(tenant_id: str, decided: control_pb2.ApprovalDecided) -> ApprovalDecided:
    """An ApprovalDecided command as a core input."""
    if decided.decision == control_pb2.APPROVAL_DECISION_APPROVED:
        decision = Decision.APPROVED
    elif decided.decision == control_pb2.APPROVAL_DECISION_DENIED:
        decision = Decision.DENIED
    else:
        raise ConversionError("ApprovalDecided.decision is unspecified")
    return ApprovalDecided(
        tenant_id=tenant_id,
        approval_id=decided.approval_id,
        call_id=decided.call_id,
        decision=decision,
        reason=decided.reason,
        edited_arguments_json=decided.edited_arguments_json,
        decided_by=decided.decided_by,
    )


def cancel_from_proto(tenant_id: str, cancel: control_pb2.RunCancelRequested) -> CancelRequested:
    """A RunCancelRequested command as a core input."""
    return CancelRequested(tenant_id, cancel.reason, cancel.requested_by, cancel.keep_children)


def child_ended_from_proto(ended: planner_state_pb2.ChildRunEnded) -> ChildEnded:
    """A child's notice as a core input."""
    status = Status(_enum_name(runs_pb2.RunStatus, "RUN_STATUS_", ended.status))
    return ChildEnded(
        ended.child_run_id,
        status,
        ended.answer,
        ended.message,
        _usage_of(ended.usage),
        decimal_of(ended.cost),
    )


def child_ended_to_proto(sent: o.ChildEndedSent) -> planner_state_pb2.ChildRunEnded:
    """A child's notice as its internal message."""
    return planner_state_pb2.ChildRunEnded(
        tenant_id=sent.tenant_id,
        parent_run_id=sent.parent_run_id,
        child_run_id=sent.child_run_id,
        status=_status(sent.status),
        answer=sent.answer,
        message=sent.message,
        usage=_usage(sent.usage),
        cost=_money(sent.cost, sent.currency),
    )


# --- tables -----------------------------------------------------------------------------------


def tool_spec_from_proto(registered: tools_pb2.ToolRegistered) -> o.ToolSpec:
    """A registry entry as the definition offered to models."""
    d = registered.definition
    return o.ToolSpec(
        d.name,
        d.description,
        d.parameters_json_schema or "{}",
        d.requires_approval,
        d.idempotent,
        registered.source,
    )


def budget_from_proto(state: budgets_pb2.BudgetState) -> TenantBudget:
    """A tenant's budget: exhausted, and the least remaining amount over limited periods."""
    remaining: Decimal | None = None
    for period in (state.daily, state.monthly):
        if period.HasField("limit"):
            left = decimal_of(period.limit) - decimal_of(period.spent) - decimal_of(period.reserved)
            remaining = left if remaining is None else min(remaining, left)
    return TenantBudget(state.exhausted, remaining)


# --- requests ---------------------------------------------------------------------------------


def model_request_to_proto(req: o.ModelCallRequested) -> model_pb2.ModelCallRequested:
    """A model step request as ModelCallRequested."""
    request = model_request_head_to_proto(req)
    request.messages.extend(messages_to_proto(req.messages))
    return request


def model_request_head_to_proto(req: o.ModelCallRequested) -> model_pb2.ModelCallRequested:
    """A model step request without its messages (they are appended as cached entries)."""
    mode = model_pb2.TOOL_CHOICE_MODE_AUTO if req.tools_allowed else model_pb2.TOOL_CHOICE_MODE_NONE
    return model_pb2.ModelCallRequested(
        run_id=req.run_id,
        tenant_id=req.tenant_id,
        step_id=req.step_id,
        call_id=req.call_id,
        route=req.route,
        tools=[
            common_pb2.ToolDefinition(
                name=t.name,
                description=t.description,
                parameters_json_schema=t.parameters_json_schema,
                requires_approval=t.requires_approval,
                idempotent=t.idempotent,
            )
            for t in req.tools
        ],
        parameters=model_pb2.ModelParameters(
            max_output_tokens=req.max_output_tokens,
            tool_choice=model_pb2.ToolChoice(mode=mode),
        ),
        deadline=_ts(req.deadline),
        max_cost=_money(req.max_cost, req.currency),
        metadata=dict(req.metadata),
        agent=req.agent,
        requested_at=_ts(req.requested_at),
        stream=req.stream,
        replay_of=req.replay_of,
    )


def tool_request_to_proto(req: o.ToolCallRequested) -> tools_pb2.ToolCallRequested:
    """A tool step request as ToolCallRequested."""
    return tools_pb2.ToolCallRequested(
        run_id=req.run_id,
        tenant_id=req.tenant_id,
        step_id=req.step_id,
        call_id=req.call_id,
        tool=req.tool,
        arguments_json=req.arguments_json,
        idempotency_key=req.idempotency_key,
        deadline=_ts(req.deadline),
        agent=req.agent,
        requested_at=_ts(req.requested_at),
        metadata=dict(req.metadata),
        replay_of=req.replay_of,
    )


def tool_cancel_to_proto(req: o.ToolCallsCancelRequested) -> tools_pb2.ToolCallsCancelRequested:
    """A cancellation of in-flight tool calls."""
    return tools_pb2.ToolCallsCancelRequested(
        run_id=req.run_id,
        tenant_id=req.tenant_id,
        call_ids=list(req.call_ids),
        reason=req.reason,
        requested_at=_ts(req.requested_at),
    )


# --- run events -------------------------------------------------------------------------------


def event_to_proto(event: o.RunEvent) -> runs_pb2.RunEvent:
    """A core run event as RunEvent."""
    msg = event_head_to_proto(event)
    field, body = event_body_to_proto(event)
    getattr(msg, field).CopyFrom(body)
    return msg


def event_head_to_proto(event: o.RunEvent) -> runs_pb2.RunEvent:
    """A run event's envelope (ids, sequence, time) without its body."""
    return runs_pb2.RunEvent(
        run_id=event.run_id,
        tenant_id=event.tenant_id,
        event_id=event.event_id,
        sequence=event.sequence,
        occurred_at=_ts(event.occurred_at),
        agent=event.agent,
    )


# A RunEvent body: the name of its `RunEvent` oneof field and the message that goes there.
EventBodyProto: TypeAlias = tuple[str, ProtoMessage]


def event_body_to_proto(event: o.RunEvent) -> EventBodyProto:
    """A run event's body: its oneof field name and message (the hot kinds tested first)."""
    c, b = event.currency, event.body
    if isinstance(b, o.StepStarted):
        return "step_started", runs_pb2.StepStarted(
            step_id=b.step_id,
            call_id=b.call_id,
            kind=_kind(b.kind),
            route=b.route,
            tool=b.tool,
            arguments_json=b.arguments_json,
            deadline=_ts(b.deadline),
        )
    if isinstance(b, o.StepCompleted):
        return "step_completed", _step_completed(b, c)
    if isinstance(b, o.BudgetReserved):
        return "budget_reserved", runs_pb2.BudgetReserved(
            step_id=b.step_id,
            amount=_money(b.amount, c),
            reserved_total=_money(b.reserved_total, c),
        )
    if isinstance(b, o.RunQueued):
        return "queued", runs_pb2.RunQueued(reason=b.reason)
    if isinstance(b, o.RunStarted):
        return "started", runs_pb2.RunStarted(
            goal=b.goal,
            session_id=b.session_id,
            budget=_money(b.budget, c),
            deadline=_ts(b.deadline),
            parent_run_id=b.parent_run_id,
            submitted_by=b.submitted_by,
            route=b.route,
            max_steps=b.max_steps,
            metadata=dict(b.metadata),
            replay=origin_to_proto(b.replay, b.route) if b.replay else None,
        )
    if isinstance(b, o.ApprovalRequested):
        return "approval_requested", runs_pb2.ApprovalRequested(
            approval_id=b.approval_id,
            step_id=b.step_id,
            call_id=b.call_id,
            tool=b.tool,
            arguments_json=b.arguments_json,
            expires_at=_ts(b.expires_at),
        )
    if isinstance(b, o.ApprovalResolved):
        return "approval_resolved", runs_pb2.ApprovalResolved(
            approval_id=b.approval_id,
            step_id=b.step_id,
            call_id=b.call_id,
            decision=_decision(b.decision),
            reason=b.reason,
            decided_by=b.decided_by,
            timed_out=b.timed_out,
            arguments_edited=b.arguments_edited,
        )
    if isinstance(b, o.DuplicateResultIgnored):
        return "duplicate_result_ignored", runs_pb2.DuplicateResultIgnored(
            step_id=b.step_id,
            call_id=b.call_id,
            reason=cast(runs_pb2.IgnoredResultReason.ValueType, _IGNORED[b.reason]),
            kind=_kind(b.kind),
            cost=_money(b.cost, c) if b.cost else None,
        )
    if isinstance(b, o.ChildRunStarted):
        return "child_run_started", runs_pb2.ChildRunStarted(
            child_run_id=b.child_run_id, agent=b.agent, goal=b.goal, step_id=b.step_id
        )
    if isinstance(b, o.WrapUpStarted):
        return "wrap_up_started", runs_pb2.WrapUpStarted(limit=_reason(b.limit), message=b.message)
    if isinstance(b, o.RunCompleted):
        return "completed", runs_pb2.RunCompleted(
            answer=b.answer,
            usage=_usage(b.usage),
            cost=_money(b.cost, c),
            steps=b.steps,
            duration=_duration(b.duration),
            limit_reached=_reason(b.limit_reached),
        )
    if isinstance(b, o.RunFailed):
        return "failed", runs_pb2.RunFailed(
            reason=_reason(b.reason),
            message=b.message,
            usage=_usage(b.usage),
            cost=_money(b.cost, c),
            steps=b.steps,
            duration=_duration(b.duration),
            step_id=b.step_id,
        )
    if isinstance(b, o.RunCancelled):
        return "cancelled", runs_pb2.RunCancelled(
            reason=b.reason,
            requested_by=b.requested_by,
            by_parent=b.by_parent,
            usage=_usage(b.usage),
            cost=_money(b.cost, c),
            steps=b.steps,
            duration=_duration(b.duration),
        )
    assert_never(b)


# StepCompleted fields copied as they are (strings and a flag), when set.
_STEP_PLAIN_FIELDS = (
    "route",
    "provider",
    "model",
    "deployment",
    "tool",
    "output_truncated",
    "error_message",
    "output",
    "content",
    "model_tool_call_id",
    "recorded_call_id",
)


def _step_completed(b: o.StepCompleted, currency: str) -> runs_pb2.StepCompleted:
    step = runs_pb2.StepCompleted(
        step_id=b.step_id,
        call_id=b.call_id,
        kind=_kind(b.kind),
        outcome=cast(runs_pb2.StepOutcome.ValueType, _OUTCOMES[b.outcome]),
        usage=_usage(b.usage),
        cost=_money(b.cost, currency),
        duration=_duration(b.duration),
        replay_served=served_to_proto(b.served),
    )
    # Most fields are empty for a given kind of step: set only the others (an empty string,
    # zero or list serialises like an unset one), so a step costs what it carries.
    for name in _STEP_PLAIN_FIELDS:
        value = getattr(b, name)
        if value:
            setattr(step, name, value)
    if b.finish_reason:
        step.finish_reason = _finish(b.finish_reason)
    if b.requested_tools:
        step.requested_tools.extend(b.requested_tools)
    if b.tool_error_kind:
        step.tool_error_kind = _tool_error(b.tool_error_kind)
    if b.tool_calls:
        step.tool_calls.extend(wire.tool_call_to_proto(t) for t in b.tool_calls)
    return step


# --- durable state ----------------------------------------------------------------------------


def run_to_proto(run: Run) -> planner_state_pb2.RunState:
    """A run as its changelog record."""
    state = run_head_to_proto(run)
    state.MergeFrom(run_progress_to_proto(run))
    state.pending_steps.extend(pending_step_to_proto(p, run.currency) for p in run.pending)
    state.unsettled_steps.extend(pending_step_to_proto(p, run.currency) for p in run.unsettled)
    state.transcript.extend(messages_to_proto(run.transcript))
    return state


# The fields of `Run` that `run_head_to_proto` reads, and only those: what the goal fixed
# (a replay's spec changes once, at the start). A snapshot reuses a run's encoded head while
# these are the same objects; a unit test checks no other field reaches the head.
RUN_HEAD_FIELDS = (
    "run_id",
    "tenant_id",
    "agent",
    "session_id",
    "goal",
    "currency",
    "route",
    "max_steps",
    "budget",
    "deadline",
    "parent_run_id",
    "metadata",
    "idempotency_key",
    "submitted_by",
    "started_at",
    "replay",
)


def run_head_to_proto(run: Run) -> planner_state_pb2.RunState:
    """The part of a run's record that its goal fixed (`RUN_HEAD_FIELDS`)."""
    c = run.currency
    return planner_state_pb2.RunState(
        run_id=run.run_id,
        tenant_id=run.tenant_id,
        agent=run.agent,
        session_id=run.session_id,
        goal=run.goal,
        route=run.route,
        max_steps=run.max_steps,
        budget=_money(run.budget, c),
        deadline=_ts(run.deadline),
        parent_run_id=run.parent_run_id,
        metadata=dict(run.metadata),
        idempotency_key=run.idempotency_key,
        submitted_by=run.submitted_by,
        started_at=_ts(run.started_at),
        replay=replay_to_proto(run.replay) if run.replay else None,
    )


def run_progress_to_proto(run: Run) -> planner_state_pb2.RunState:
    """The part of a run's record that transitions change, without steps and transcript."""
    c = run.currency
    state = planner_state_pb2.RunState(
        status=_status(run.status),
        step_ordinal=run.step_ordinal,
        usage=_usage(run.usage),
        cost=_money(run.cost, c),
        reserved_cost=_money(run.reserved, c),
        last_event_sequence=run.last_event_sequence,
        steps_taken=run.steps_taken,
        updated_at=_ts(run.updated_at),
        finished_at=_ts(run.finished_at),
    )
    # Set only what is not empty (an empty value serialises like an unset one): most of these
    # stay empty until the run ends.
    if run.child_run_ids:
        state.child_run_ids.extend(run.child_run_ids)
    if run.answer:
        state.answer = run.answer
    if run.failure_reason is not Reason.UNSPECIFIED:
        state.failure_reason = _reason(run.failure_reason)
    if run.failure_message:
        state.failure_message = run.failure_message
    if run.wrap_up_limit is not Reason.UNSPECIFIED:
        state.wrap_up_limit = _reason(run.wrap_up_limit)
    if run.queued_tool_calls:
        state.queued_tool_calls.extend(wire.tool_call_to_proto(t) for t in run.queued_tool_calls)
    if run.end_held:
        state.end_held = True
    if run.failed_step_id:
        state.failed_step_id = run.failed_step_id
    if run.cancelled_by:
        state.cancelled_by = run.cancelled_by
    if run.replay_used:
        state.replay_used.extend(run.replay_used)
    return state


def pending_step_to_proto(p: PendingStep, currency: str) -> planner_state_pb2.PendingStep:
    """A pending (or unsettled) step as its entry in the run's record."""
    return planner_state_pb2.PendingStep(
        step_id=p.step_id,
        call_id=p.call_id,
        kind=_kind(p.kind),
        deadline=_ts(p.deadline),
        tool=p.tool,
        arguments_json=p.arguments_json,
        model_tool_call_id=p.model_tool_call_id,
        awaiting_approval=p.awaiting_approval,
        approval_id=p.approval_id,
        approval_deadline=_ts(p.approval_deadline),
        idempotency_key=p.idempotency_key,
        started_at=_ts(p.started_at),
        reserved_cost=_money(p.reserved, currency),
    )


def _step_from_proto(p: planner_state_pb2.PendingStep) -> PendingStep:
    epoch = datetime.fromtimestamp(0, UTC)
    return PendingStep(
        step_id=p.step_id,
        call_id=p.call_id,
        kind=StepKind(_enum_name(runs_pb2.StepKind, "STEP_KIND_", p.kind)),
        deadline=_dt(p.deadline) or epoch,
        started_at=_dt(p.started_at) or epoch,
        tool=p.tool,
        arguments_json=p.arguments_json,
        model_tool_call_id=p.model_tool_call_id,
        awaiting_approval=p.awaiting_approval,
        approval_id=p.approval_id,
        approval_deadline=_dt(p.approval_deadline, p.HasField("approval_deadline")),
        idempotency_key=p.idempotency_key,
        reserved=decimal_of(p.reserved_cost),
    )


def run_from_proto(state: planner_state_pb2.RunState, currency: str) -> Run:
    """A changelog record as a run."""
    epoch = datetime.fromtimestamp(0, UTC)
    pending = tuple(_step_from_proto(p) for p in state.pending_steps)
    return Run(
        run_id=state.run_id,
        tenant_id=state.tenant_id,
        agent=state.agent,
        status=Status(_enum_name(runs_pb2.RunStatus, "RUN_STATUS_", state.status)),
        goal=state.goal,
        currency=state.cost.currency or state.budget.currency or currency,
        started_at=_dt(state.started_at) or epoch,
        updated_at=_dt(state.updated_at) or epoch,
        session_id=state.session_id,
        transcript=messages_from_proto(state.transcript),
        pending=pending,
        queued_tool_calls=_calls(state.queued_tool_calls),
        step_ordinal=state.step_ordinal,
        route=state.route,
        max_steps=state.max_steps,
        budget=decimal_of(state.budget) if state.HasField("budget") else None,
        deadline=_dt(state.deadline, state.HasField("deadline")),
        usage=_usage_of(state.usage),
        cost=decimal_of(state.cost),
        parent_run_id=state.parent_run_id,
        child_run_ids=tuple(state.child_run_ids),
        metadata=dict(state.metadata),
        idempotency_key=state.idempotency_key,
        submitted_by=state.submitted_by,
        finished_at=_dt(state.finished_at, state.HasField("finished_at")),
        last_event_sequence=state.last_event_sequence,
        answer=state.answer,
        failure_reason=_reason_of(state.failure_reason),
        failure_message=state.failure_message,
        wrap_up_limit=_reason_of(state.wrap_up_limit),
        steps_taken=state.steps_taken,
        unsettled=tuple(_step_from_proto(p) for p in state.unsettled_steps),
        end_held=state.end_held,
        failed_step_id=state.failed_step_id,
        cancelled_by=state.cancelled_by,
        replay=replay_from_proto(state.replay) if state.HasField("replay") else None,
        replay_used=tuple(state.replay_used),
    )


def session_to_proto(session: Session) -> planner_state_pb2.SessionState:
    """A session as its changelog record."""
    return planner_state_pb2.SessionState(
        tenant_id=session.tenant_id,
        session_id=session.session_id,
        active_run_id=session.active_run_id,
        queued_run_ids=list(session.queued_run_ids),
        memory=messages_to_proto(session.memory),
        updated_at=_ts(session.updated_at),
    )


def session_from_proto(state: planner_state_pb2.SessionState) -> Session:
    """A changelog record as a session."""
    return Session(
        tenant_id=state.tenant_id,
        session_id=state.session_id,
        updated_at=_dt(state.updated_at) or datetime.fromtimestamp(0, UTC),
        active_run_id=state.active_run_id,
        queued_run_ids=tuple(state.queued_run_ids),
        memory=messages_from_proto(state.memory),
    )
