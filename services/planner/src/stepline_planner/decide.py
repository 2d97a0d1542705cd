"""The agent loop as a pure function: `decide(run, input, now, context) -> (run, outputs)`.

No Kafka, no protobuf, no clock: the handler passes `now` and the tables it reads (tool
registry, tenant budgets). The state passed in is never mutated, so a transition that raises
leaves everything as it was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import assert_never

from stepline_planner.copies import replace
from stepline_planner.inputs import (
    ApprovalDecided,
    CancelRequested,
    ChildEnded,
    Goal,
    GoalReceived,
    Input,
    ModelCompleted,
    ModelFailed,
    SessionGranted,
    SessionRejected,
    Tick,
    ToolCompleted,
    ToolFailed,
)
from stepline_planner.outputs import (
    ApprovalRequested,
    ApprovalResolved,
    BudgetReserved,
    ChildEndedSent,
    ChildGoalSubmitted,
    ChildRunStarted,
    DuplicateResultIgnored,
    EventBody,
    GoalForwarded,
    ModelCallRequested,
    Output,
    RunCancelled,
    RunCancelSent,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunQueued,
    RunStarted,
    SessionTurnEnded,
    SessionTurnRequested,
    StepCompleted,
    StepStarted,
    ToolCallRequested,
    ToolCallsCancelRequested,
    ToolSpec,
    WrapUpStarted,
)
from stepline_planner.profiles import (
    AgentProfile,
    BudgetPolicy,
    DeadlinePolicy,
    Profiles,
    Route,
    StepTimeoutPolicy,
)
from stepline_planner.replay import (
    BUILTIN_SOURCE,
    Divergence,
    Replay,
    Served,
    canonical_arguments,
    match_recorded,
    may_execute,
)
from stepline_planner.replay import Approvals as ReplayApprovals
from stepline_planner.replay import Mode as ReplayMode
from stepline_planner.state import (
    Decision,
    IgnoredReason,
    Message,
    Outcome,
    PendingStep,
    Reason,
    Role,
    Run,
    Status,
    StepKind,
    ToolCall,
    Usage,
    call_id_of,
)
from stepline_planner.transcript import bound_memory, compact, estimate_tokens, truncate
from stepline_runtime.ids import (
    REPLAY_RUN_PREFIXES,
    derive_run_id,
    is_replay_run,
    tenant_id_problem,
)
from stepline_vocab import BadInputError, format_amount

__all__ = [
    "DELEGATE_TOOL",
    "SETTLE_WINDOW",
    "Context",
    "RejectedError",
    "TenantBudget",
    "decide",
    "next_due",
]

DELEGATE_TOOL = ToolSpec(
    name="delegate",
    description="Hand a sub-task to another agent and get its final answer back.",
    parameters_json_schema=json.dumps(
        {
            "type": "object",
            "properties": {
                "agent": {"type": "string", "description": "Name of the agent to delegate to."},
                "goal": {"type": "string", "description": "The sub-task, self-contained."},
            },
            "required": ["agent", "goal"],
        },
        sort_keys=True,
    ),
)
# A child's notice needs a moment to travel back before the parent gives up on it.
_CHILD_GRACE = timedelta(seconds=5)
# Requests per model step: one retry when the first outlived the router's downtime.
_MODEL_STEP_ATTEMPTS = 2
# How long a priced call given up on (a tool call at its step deadline or the run's end, a model
# request a retry superseded) may still report what it was billed; a run that ends meanwhile
# holds its terminal event so its cost equals the ledger. It covers an executor restart and its
# consumer group's rebalance.
SETTLE_WINDOW = timedelta(seconds=30)


class RejectedError(BadInputError):
    """The input is refused (e.g. a command for another tenant's run); state is unchanged."""


@dataclass(frozen=True, slots=True)
class TenantBudget:
    """A tenant's budget as billing last published it."""

    exhausted: bool = False
    remaining: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """Everything outside the run that a transition may consult."""

    profiles: Profiles
    tools: Mapping[str, ToolSpec] = field(default_factory=dict)
    budgets: Mapping[str, TenantBudget] = field(default_factory=dict)
    tool_prices: Mapping[str, Decimal] = field(default_factory=dict)


def next_due(run: Run, retention: timedelta) -> datetime | None:
    """When `tick` next has something to do for `run` (a deadline, or tombstoning)."""
    settles = [u.deadline for u in run.unsettled]
    if run.status.terminal:
        if run.end_held:
            return min(settles)
        return (run.finished_at or run.updated_at) + retention
    deadline_wrap = (
        run.status is Status.WRAPPING_UP and run.wrap_up_limit is Reason.DEADLINE_EXCEEDED
    )
    times: list[datetime | None] = [run.deadline] if not deadline_wrap else []
    for step in run.pending:
        times.append(step.approval_deadline if step.awaiting_approval else step.deadline)
    times.extend(settles)
    return min((t for t in times if t is not None), default=None)


def decide(
    run: Run | None, event: Input, now: datetime, ctx: Context
) -> tuple[Run | None, list[Output]]:
    """Fold one input into a run; returns the new state (None: no run) and what to emit."""
    if isinstance(event, GoalReceived):
        return _on_goal(run, event.goal, now, ctx)
    if run is None:
        return None, []
    tx = _Tx(run, now, ctx)
    if isinstance(event, Tick):
        _on_tick(tx)
    elif isinstance(event, ModelCompleted):
        _on_model_completed(tx, event)
    elif isinstance(event, ModelFailed):
        _on_model_failed(tx, event)
    elif isinstance(event, (ToolCompleted, ToolFailed)):
        _on_tool_result(tx, event)
    elif isinstance(event, ApprovalDecided):
        _on_approval(tx, event)
    elif isinstance(event, CancelRequested):
        _on_cancel(tx, event)
    elif isinstance(event, SessionGranted):
        _on_session_granted(tx, event)
    elif isinstance(event, SessionRejected):
        if tx.run.status is Status.QUEUED:
            _fail(tx, Reason.INVALID_GOAL, f"session {run.session_id!r} is busy: {event.reason}")
    elif isinstance(event, ChildEnded):
        _on_child_ended(tx, event)
    else:
        assert_never(event)
    if tx.run is not run:
        tx.set(updated_at=now)
    return tx.run, tx.out


_write = object.__setattr__


class _Tx:
    """One transition in progress: the evolving state and the outputs so far.

    The first change copies the run; later changes write into that copy. A transition changes
    its run ~10 times, and a copy of every field each time was the core's largest cost. The
    copy is this transition's own until `decide` returns it, so nobody sees it change: the
    run passed in is never touched and the run returned is not changed afterwards.
    """

    def __init__(self, run: Run, now: datetime, ctx: Context, *, owned: bool = False) -> None:
        self.run = run
        self.now = now
        self.ctx = ctx
        self.out: list[Output] = []
        # Whether `run` is this transition's own copy (built here), free to write into.
        self._owned = owned

    @property
    def profile(self) -> AgentProfile | None:
        return self.ctx.profiles.agents.get(self.run.agent)

    def set(self, **changes: object) -> None:
        if self._owned:
            run = self.run
            for name, value in changes.items():
                # Frozen from the outside; this copy is not visible to anyone yet (see above).
                _write(run, name, value)
            return
        self.run = replace(self.run, **changes)
        self._owned = True

    def emit(self, body: EventBody) -> None:
        sequence = self.run.last_event_sequence + 1
        self.set(last_event_sequence=sequence)
        run = self.run
        self.out.append(
            RunEvent(run.run_id, run.tenant_id, run.agent, sequence, self.now, run.currency, body)
        )

    def next_step_id(self) -> tuple[str, str]:
        ordinal = self.run.step_ordinal + 1
        self.set(step_ordinal=ordinal)
        step_id = f"{self.run.run_id}:{ordinal}"
        return step_id, call_id_of(step_id, 1)

    def remove(self, step: PendingStep) -> None:
        self.set(pending=tuple(p for p in self.run.pending if p.step_id != step.step_id))

    def append(self, *messages: Message) -> None:
        self.set(transcript=(*self.run.transcript, *messages))


# --- goals ------------------------------------------------------------------------------------


def _on_goal(
    run: Run | None, goal: Goal, now: datetime, ctx: Context
) -> tuple[Run | None, list[Output]]:
    if run is not None:
        return run, []  # a resubmitted goal never starts a second run
    if goal.idempotency_key and goal.tenant_id:
        derived = derive_run_id(goal.tenant_id, goal.idempotency_key)
        if goal.run_id != derived:
            # Move the goal to the partition that owns the derived id; it is decided there.
            return None, [GoalForwarded(replace(goal, run_id=derived))]
    profile = ctx.profiles.agents.get(goal.agent)
    replay = goal.replay
    limit = profile.run_deadline_s if profile else 0.0
    deadline = now + timedelta(seconds=limit)
    if goal.deadline is not None:
        deadline = min(deadline, goal.deadline) if profile else goal.deadline
    max_steps = profile.max_steps if profile else 0
    if profile and 0 < goal.max_steps < max_steps:
        max_steps = goal.max_steps
    budget = goal.budget if goal.budget is not None else (profile.max_cost if profile else None)
    tx = _Tx(
        Run(
            run_id=goal.run_id,
            tenant_id=goal.tenant_id,
            agent=goal.agent,
            status=Status.RUNNING,
            goal=goal.goal,
            currency=ctx.profiles.currency,
            started_at=now,
            updated_at=now,
            session_id=goal.session_id,
            route=(replay.route if replay else "") or (profile.route if profile else ""),
            max_steps=max_steps,
            budget=budget,
            deadline=deadline,
            parent_run_id=goal.parent_run_id,
            metadata=dict(goal.metadata),
            idempotency_key=goal.idempotency_key,
            submitted_by=goal.submitted_by,
            replay=replay,
        ),
        now,
        ctx,
        owned=True,
    )
    failure = _invalid(goal, profile, ctx, now)
    if failure is not None:
        _fail(tx, *failure)
        return tx.run, tx.out
    if goal.session_id:
        tx.set(status=Status.QUEUED)
        tx.emit(RunQueued(f"waiting for session {goal.session_id!r}"))
        tx.out.append(SessionTurnRequested(goal.tenant_id, goal.session_id, goal.run_id))
    else:
        _start(tx, ())
    return tx.run, tx.out


def _invalid(
    goal: Goal, profile: AgentProfile | None, ctx: Context, now: datetime
) -> tuple[Reason, str] | None:
    tenant_problem = tenant_id_problem(goal.tenant_id)
    if tenant_problem is not None:
        return Reason.INVALID_GOAL, tenant_problem
    if not goal.agent:
        return Reason.INVALID_GOAL, "agent is required"
    if not goal.goal.strip():
        return Reason.INVALID_GOAL, "goal text is empty"
    if goal.max_steps < 0:
        return Reason.INVALID_GOAL, f"max_steps must not be negative, got {goal.max_steps}"
    if goal.budget is not None and goal.budget < 0:
        return Reason.INVALID_GOAL, f"budget must not be negative, got {goal.budget}"
    if goal.budget is not None and goal.budget_currency not in ("", ctx.profiles.currency):
        return (
            Reason.INVALID_GOAL,
            f"budget currency {goal.budget_currency} is not {ctx.profiles.currency}",
        )
    if profile is None:
        known = ", ".join(sorted(ctx.profiles.agents)) or "none"
        return Reason.UNKNOWN_AGENT, f"unknown agent {goal.agent!r} (known: {known})"
    if profile.route not in ctx.profiles.routes:
        return (
            Reason.MODEL_FAILED,
            f"agent {goal.agent!r} uses route {profile.route!r}, which the router's routes "
            "file does not define",
        )
    replay_problem = _replay_problem(goal, ctx)
    if replay_problem is not None:
        return Reason.INVALID_GOAL, replay_problem
    allowed = ctx.profiles.tenant_tools.get(goal.tenant_id)
    if allowed is not None:
        used = list(profile.tools) + ([DELEGATE_TOOL.name] if profile.delegates else [])
        refused = sorted(t for t in used if t not in allowed)
        if refused:
            return (
                Reason.TOOL_NOT_ALLOWED,
                f"agent {goal.agent!r} uses tools not allowed for tenant "
                f"{goal.tenant_id!r}: {', '.join(refused)}",
            )
    tenant = ctx.budgets.get(goal.tenant_id)
    if tenant is not None and (
        tenant.exhausted or (tenant.remaining is not None and tenant.remaining <= 0)
    ):
        return Reason.BUDGET_EXCEEDED, f"tenant {goal.tenant_id!r} has no budget left"
    budget = goal.budget if goal.budget is not None else profile.max_cost
    if budget is not None and budget <= 0:
        return Reason.BUDGET_EXCEEDED, "the run's budget is zero"
    if goal.deadline is not None and goal.deadline <= now:
        return Reason.DEADLINE_EXCEEDED, "the goal's deadline has already passed"
    return None


def _replay_problem(goal: Goal, ctx: Context) -> str | None:
    """Why a replay goal cannot run, or None."""
    replay = goal.replay
    if replay is None:
        return None
    if not replay.original_run_id:
        return "a replay must name the original run"
    if not is_replay_run(goal.run_id):
        return (
            f"a replay's run id must start with {' or '.join(REPLAY_RUN_PREFIXES)} "
            "(stepline_runtime.ids.derive_replay_run_id), so its spend is told apart"
        )
    if replay.route and replay.route not in ctx.profiles.routes:
        known = ", ".join(sorted(ctx.profiles.routes)) or "none"
        return (
            f"replay route {replay.route!r} is neither a route nor a deployment of the routes "
            f"file (known: {known})"
        )
    if replay.mode is ReplayMode.FORK and replay.steps_forked < 0:
        return f"a fork cannot start before step 0, got {replay.steps_forked}"
    return None


def _start(tx: _Tx, memory: tuple[Message, ...]) -> None:
    profile = tx.profile
    if profile is None:
        _fail(tx, Reason.UNKNOWN_AGENT, f"agent {tx.run.agent!r} is no longer configured")
        return
    run = tx.run
    replay = run.replay
    prompt = (replay.system_prompt if replay else "") or profile.system_prompt
    forked = replay.forked if replay and replay.mode is ReplayMode.FORK else ()
    tx.set(
        status=Status.RUNNING,
        transcript=(
            Message(Role.SYSTEM, prompt),
            *memory,
            Message(Role.USER, run.goal),
            *forked,
        ),
    )
    if replay is not None:
        # The forked steps count as taken (no model or tool call for them); the record is in
        # the transcript now, so the state keeps no second copy.
        steps = replay.steps_forked if forked else 0
        tx.set(
            steps_taken=steps,
            step_ordinal=steps,
            replay=replace(replay, forked=()),
        )
    tx.emit(
        RunStarted(
            goal=run.goal,
            session_id=run.session_id,
            budget=run.budget,
            deadline=run.deadline,
            parent_run_id=run.parent_run_id,
            submitted_by=run.submitted_by,
            route=run.route,
            max_steps=run.max_steps,
            metadata=run.metadata,
            replay=tx.run.replay,
        )
    )
    _next_model_turn(tx)


def _on_session_granted(tx: _Tx, event: SessionGranted) -> None:
    if tx.run.status is Status.QUEUED:
        _start(tx, event.memory)
    elif tx.run.status.terminal:
        # Ended while queued (cancelled, deadline): give the session straight back.
        run = tx.run
        tx.out.append(SessionTurnEnded(run.tenant_id, run.session_id, run.run_id, False))


# --- model steps ------------------------------------------------------------------------------


def _offered(tx: _Tx, profile: AgentProfile) -> tuple[ToolSpec, ...]:
    offered = [tx.ctx.tools[name] for name in profile.tools if name in tx.ctx.tools]
    if profile.delegates:
        offered.append(DELEGATE_TOOL)
    return tuple(offered)


def _available(tx: _Tx) -> Decimal | None:
    """What the next step may spend: the least of the run's and the tenant's remaining budget."""
    run = tx.run
    limits: list[Decimal] = []
    if run.budget is not None:
        limits.append(run.budget - run.cost - run.reserved)
    tenant = tx.ctx.budgets.get(run.tenant_id)
    if tenant is not None:
        if tenant.exhausted:
            limits.append(Decimal(0))
        elif tenant.remaining is not None:
            limits.append(tenant.remaining - run.reserved)
    return min(limits) if limits else None


def _begin_wrap_up(tx: _Tx, limit: Reason, message: str) -> None:
    tx.set(status=Status.WRAPPING_UP, wrap_up_limit=limit)
    tx.emit(WrapUpStarted(limit, message))


def _model_request(
    tx: _Tx, profile: AgentProfile, route: Route
) -> tuple[tuple[ToolSpec, ...], int, tuple[Message, ...], Decimal]:
    """What the next model call sends (tools, output cap, messages) and its worst-case cost."""
    wrapping = tx.run.status is Status.WRAPPING_UP
    tools = () if wrapping else _offered(tx, profile)
    max_out = profile.wrap_up_max_output_tokens if wrapping else profile.max_output_tokens
    transcript, limit = tx.run.transcript, route.context_window_tokens - max_out
    tokens = estimate_tokens(transcript, tools)
    # Compacted only when it does not fit (the estimate walks the whole transcript: once).
    messages = transcript if tokens <= limit else compact(transcript, limit, tools)
    if messages is not transcript:
        tokens = estimate_tokens(messages, tools)
    worst = route.price.worst_case(tokens, max_out)
    return tools, max_out, messages, worst


def _model_deadline(tx: _Tx, profile: AgentProfile) -> datetime:
    """When a model step requested now times out."""
    if tx.run.wrap_up_limit is Reason.DEADLINE_EXCEEDED:
        return tx.now + timedelta(seconds=profile.wrap_up_grace_s)
    deadline = tx.now + timedelta(seconds=profile.model_step_deadline_s)
    return deadline if tx.run.deadline is None else min(deadline, tx.run.deadline)


def _next_model_turn(tx: _Tx) -> None:
    profile = tx.profile
    route = tx.ctx.profiles.routes.get(tx.run.route)
    if profile is None or route is None:
        _fail(tx, Reason.INTERNAL, f"agent {tx.run.agent!r} or its route is no longer configured")
        return
    if tx.run.status is not Status.WRAPPING_UP and tx.run.steps_taken + 1 >= tx.run.max_steps:
        _begin_wrap_up(tx, Reason.MAX_STEPS, f"step limit of {tx.run.max_steps} reached")
    tools, max_out, messages, worst = _model_request(tx, profile, route)
    available = _available(tx)
    if available is not None and worst > available:
        if tx.run.status is Status.WRAPPING_UP or profile.on_budget_exceeded is BudgetPolicy.FAIL:
            _fail(tx, Reason.BUDGET_EXCEEDED, _budget_message(worst, available, tx.run.currency))
            return
        _begin_wrap_up(
            tx, Reason.BUDGET_EXCEEDED, _budget_message(worst, available, tx.run.currency)
        )
        tools, max_out, messages, worst = _model_request(tx, profile, route)
        if worst > available:
            _fail(tx, Reason.BUDGET_EXCEEDED, _budget_message(worst, available, tx.run.currency))
            return
    step_id, call_id = tx.next_step_id()
    deadline = _model_deadline(tx, profile)
    step = PendingStep(step_id, call_id, StepKind.MODEL, deadline, tx.now, reserved=worst)
    tx.set(transcript=messages, pending=(*tx.run.pending, step))
    tx.emit(BudgetReserved(step_id, worst, tx.run.reserved))
    tx.emit(StepStarted(step_id, call_id, StepKind.MODEL, deadline, route=route.name))
    _request_model(tx, step, profile, route, tools, max_out)


def _request_model(
    tx: _Tx,
    step: PendingStep,
    profile: AgentProfile,
    route: Route,
    tools: tuple[ToolSpec, ...],
    max_out: int,
) -> None:
    """Ask the router for `step`: the transcript as it stands, within what the budget has left."""
    run = tx.run
    # What the run may still spend, this step's own reservation included.
    run_left = None if run.budget is None else run.budget - run.cost - run.reserved + step.reserved
    tx.out.append(
        ModelCallRequested(
            run_id=run.run_id,
            tenant_id=run.tenant_id,
            agent=run.agent,
            step_id=step.step_id,
            call_id=step.call_id,
            route=route.name,
            messages=run.transcript,
            tools=tools,
            tools_allowed=bool(tools),
            max_output_tokens=max_out,
            deadline=step.deadline,
            max_cost=run_left,
            currency=run.currency,
            metadata=run.metadata,
            requested_at=tx.now,
            stream=profile.stream or route.stream,
            replay_of=run.replay.original_run_id if run.replay else "",
        )
    )


def _retry_model_step(
    tx: _Tx,
    step: PendingStep,
    outcome: Outcome,
    why: str,
    usage: Usage | None = None,
    cost: Decimal = Decimal(0),
) -> bool:
    """Ask the router once more for a step whose request outlived the router's downtime.

    The retry is the same step with the next call id (`step_id:2`) and a fresh deadline, so
    a late answer to the first call is told apart and ignored. False: no retry is left.
    """
    profile = tx.profile
    route = tx.ctx.profiles.routes.get(tx.run.route)
    if (
        profile is None
        or route is None
        or step.attempt >= _MODEL_STEP_ATTEMPTS
        # A deadline wrap-up has its grace period only: no time for a second request.
        or tx.run.wrap_up_limit is Reason.DEADLINE_EXCEEDED
    ):
        return False
    deadline = _model_deadline(tx, profile)
    if deadline <= tx.now:
        return False
    retried = replace(
        step,
        call_id=call_id_of(step.step_id, step.attempt + 1),
        deadline=deadline,
        started_at=tx.now,
    )
    tx.set(
        pending=tuple(retried if p.step_id == step.step_id else p for p in tx.run.pending),
        usage=tx.run.usage + (usage or Usage()),
        cost=tx.run.cost + cost,
    )
    tx.emit(
        StepCompleted(
            step.step_id,
            step.call_id,
            StepKind.MODEL,
            outcome,
            tx.now - step.started_at,
            route=route.name,
            usage=usage or Usage(),
            cost=cost,
            error_message=f"{why}; retrying as call {retried.call_id}",
        )
    )
    tx.emit(StepStarted(step.step_id, retried.call_id, StepKind.MODEL, deadline, route=route.name))
    tools, max_out, _, _ = _model_request(tx, profile, route)
    _request_model(tx, retried, profile, route, tools, max_out)
    return True


def _budget_message(worst: Decimal, available: Decimal, currency: str) -> str:
    return (
        f"the next model call may cost up to {format_amount(worst)} {currency} but only "
        f"{format_amount(max(available, Decimal(0)))} {currency} of budget is left"
    )


def _pending_or_ignore(tx: _Tx, step_id: str, call_id: str, kind: StepKind) -> PendingStep | None:
    """The pending step a result answers, or None after recording why it is ignored."""
    run = tx.run
    step = run.step(step_id)
    reason: IgnoredReason
    if run.status.terminal:
        reason = IgnoredReason.RUN_FINISHED
    elif step is None:
        known = step_id.startswith(f"{run.run_id}:") and step_id[len(run.run_id) + 1 :].isdigit()
        if known and int(step_id[len(run.run_id) + 1 :]) <= run.step_ordinal:
            reason = IgnoredReason.ALREADY_COMPLETED
        else:
            reason = IgnoredReason.UNKNOWN_STEP
    elif step.call_id == call_id and step.kind is kind and not step.awaiting_approval:
        return step  # the answer awaited (tested first: by far the most frequent)
    elif step.kind is kind and call_id in _superseded(step):
        reason = IgnoredReason.STEP_TIMED_OUT  # the answer to a call the step gave up on
    else:
        reason = IgnoredReason.CALL_MISMATCH
    tx.emit(DuplicateResultIgnored(step_id, call_id, reason, kind))
    return None


def _superseded(step: PendingStep) -> tuple[str, ...]:
    """The call ids of the requests a retried step no longer waits for."""
    return tuple(call_id_of(step.step_id, n) for n in range(1, step.attempt))


def _on_model_completed(tx: _Tx, event: ModelCompleted) -> None:
    if _settle(tx, event, StepKind.MODEL, event.usage):
        return
    step = _pending_or_ignore(tx, event.step_id, event.call_id, StepKind.MODEL)
    if step is None:
        return
    tx.remove(step)
    tx.set(
        steps_taken=tx.run.steps_taken + 1,
        usage=tx.run.usage + event.usage,
        cost=tx.run.cost + event.cost,
    )
    tx.emit(
        StepCompleted(
            step.step_id,
            step.call_id,
            StepKind.MODEL,
            Outcome.SUCCEEDED,
            tx.now - step.started_at,
            route=tx.run.route,
            provider=event.provider,
            model=event.model,
            deployment=event.deployment,
            finish_reason=event.finish_reason,
            requested_tools=tuple(c.name for c in event.tool_calls),
            usage=event.usage,
            cost=event.cost,
            content=event.content,
            tool_calls=event.tool_calls,
        )
    )
    if tx.run.status is Status.WRAPPING_UP or not event.tool_calls:
        _complete(tx, event.content)
        return
    tx.append(Message(Role.ASSISTANT, event.content, tool_calls=event.tool_calls))
    tx.set(queued_tool_calls=event.tool_calls)
    _pump_tools(tx)


def _on_model_failed(tx: _Tx, event: ModelFailed) -> None:
    if _settle(tx, event, StepKind.MODEL, event.usage):
        return
    step = _pending_or_ignore(tx, event.step_id, event.call_id, StepKind.MODEL)
    if step is None:
        return
    # The router reached the request only after its deadline, before trying any provider:
    # it was down (or far behind) for longer than the step allows. Ask once more.
    outlived = event.kind == "DEADLINE_EXCEEDED" and event.attempts == 0
    if outlived and _retry_model_step(
        tx, step, Outcome.FAILED, f"the router: {event.message}", event.usage, event.cost
    ):
        return
    tx.remove(step)
    tx.set(
        steps_taken=tx.run.steps_taken + 1,
        usage=tx.run.usage + event.usage,
        cost=tx.run.cost + event.cost,
    )
    tx.emit(
        StepCompleted(
            step.step_id,
            step.call_id,
            StepKind.MODEL,
            Outcome.FAILED,
            tx.now - step.started_at,
            route=tx.run.route,
            usage=event.usage,
            cost=event.cost,
            error_message=event.message,
        )
    )
    reason = Reason.BUDGET_EXCEEDED if event.kind == "BUDGET_EXCEEDED" else Reason.MODEL_FAILED
    _fail(tx, reason, f"model call failed ({event.kind}): {event.message}", step.step_id)


# --- tool steps -------------------------------------------------------------------------------


def _pump_tools(tx: _Tx) -> None:
    """Start queued tool calls while there is room; when all are done, ask the model again."""
    profile = tx.profile
    if profile is None:
        _fail(tx, Reason.INTERNAL, f"agent {tx.run.agent!r} is no longer configured")
        return
    while tx.run.queued_tool_calls and not tx.run.status.terminal:
        in_flight = sum(1 for p in tx.run.pending if p.kind is StepKind.TOOL)
        if in_flight >= profile.max_parallel_tool_calls:
            return
        call, rest = tx.run.queued_tool_calls[0], tx.run.queued_tool_calls[1:]
        tx.set(queued_tool_calls=rest)
        if tx.run.steps_taken + len(tx.run.pending) + 1 >= tx.run.max_steps:
            # Keep the last step for the wrap-up answer.
            tx.append(_tool_message(call, "not executed: the run's step limit was reached"))
            continue
        _start_tool(tx, profile, call)
    if not tx.run.pending and not tx.run.status.terminal:
        _order_tool_results(tx)
        _next_model_turn(tx)


def _tool_message(call: ToolCall, content: str) -> Message:
    return Message(Role.TOOL, content, tool_call_id=call.call_id, name=call.name)


def _order_tool_results(tx: _Tx) -> None:
    """Put the tool results of the last turn in the order the model asked for them."""
    transcript = list(tx.run.transcript)
    last = max((i for i, m in enumerate(transcript) if m.role is Role.ASSISTANT), default=-1)
    if last < 0:
        return
    order = {c.call_id: i for i, c in enumerate(transcript[last].tool_calls)}
    results = sorted(transcript[last + 1 :], key=lambda m: order.get(m.tool_call_id, len(order)))
    tx.set(transcript=(*transcript[: last + 1], *results))


def _start_tool(tx: _Tx, profile: AgentProfile, call: ToolCall) -> None:
    step_id, call_id = tx.next_step_id()
    replay = tx.run.replay
    replaying = replay is not None and replay.mode is ReplayMode.REPLAY
    if replaying and replay is not None and _replay_tool(tx, replay, call, step_id, call_id):
        return
    if call.name == DELEGATE_TOOL.name and profile.delegates:
        _start_child(tx, profile, call, step_id, call_id)
        return
    deadline = tx.now + timedelta(seconds=profile.tool_step_deadline_s)
    spec = tx.ctx.tools.get(call.name)
    if call.name not in profile.tools or spec is None:
        why = "not allowed for this agent" if spec else "not available"
        _tool_refused(tx, call, step_id, call_id, "NOT_ALLOWED" if spec else "UNKNOWN_TOOL", why)
        return
    step = PendingStep(
        step_id,
        call_id,
        StepKind.TOOL,
        deadline,
        tx.now,
        tool=call.name,
        arguments_json=call.arguments_json,
        model_tool_call_id=call.call_id,
        idempotency_key=call_id,
    )
    tx.emit(
        StepStarted(
            step_id,
            call_id,
            StepKind.TOOL,
            deadline,
            tool=call.name,
            arguments_json=call.arguments_json,
        )
    )
    needs_approval = profile.approvals.get(call.name, spec.requires_approval)
    if needs_approval and replay is not None:
        recorded = _recorded_decision(replay, call)
        if recorded is not None and recorded[0] is Decision.APPROVED:
            # The same call was approved (and ran) in the original: the decision is reused.
            needs_approval = False
            tx.emit(
                ApprovalResolved(
                    f"{call_id}/approval",
                    step_id,
                    call_id,
                    Decision.APPROVED,
                    reason=f"reused: call {recorded[1]} of run {replay.original_run_id}",
                    decided_by=f"replay:{replay.original_run_id}",
                )
            )
        elif recorded is not None or replay.approvals is ReplayApprovals.DENY:
            why = (
                f"denied: the same call ({recorded[1]}) was denied in run "
                f"{replay.original_run_id}, and the decision is reused"
                if recorded is not None
                else "approval auto-denied: this replay does not ask humans (approvals: deny)"
            )
            _tool_answered(tx, call, step_id, call_id, why, Outcome.DENIED, Served.DENIED)
            return
    if needs_approval:
        expires = tx.now + timedelta(seconds=profile.approval_timeout_s)
        step = replace(
            step,
            awaiting_approval=True,
            approval_id=f"{call_id}/approval",
            approval_deadline=expires,
            deadline=expires,
        )
        tx.set(pending=(*tx.run.pending, step), status=Status.AWAITING_APPROVAL)
        tx.emit(
            ApprovalRequested(
                step.approval_id, step_id, call_id, call.name, call.arguments_json, expires
            )
        )
        return
    tx.set(pending=(*tx.run.pending, step))
    _request_tool(tx, step)


def _replay_tool(tx: _Tx, replay: Replay, call: ToolCall, step_id: str, call_id: str) -> bool:
    """Answer a replay's tool call from the record, or apply the divergence policy.

    True when the call is dealt with (served, stubbed, or the replay stopped); False when it
    runs for real (a diverging call the policy allows to execute).
    """
    spec = tx.ctx.tools.get(call.name)
    read_only = spec is not None and spec.idempotent and spec.source == BUILTIN_SOURCE
    index = match_recorded(replay, tx.run.replay_used, call.name, call.arguments_json, read_only)
    if index is not None:
        recorded = replay.recorded[index]
        if index not in tx.run.replay_used:
            tx.set(replay_used=(*tx.run.replay_used, index))
        _tool_answered(
            tx,
            call,
            step_id,
            call_id,
            recorded.output,
            recorded.outcome,
            Served.RECORDED,
            recorded_call_id=recorded.call_id,
            error_kind=recorded.error_kind,
        )
        return True
    if may_execute(replay, call.name, spec):
        return False
    original = replay.original_run_id
    if replay.divergence is Divergence.STUB:
        text = (
            f"[not executed in replay: the original run {original} made no call of "
            f"{call.name} with these arguments, and this replay does not run new calls]"
        )
        _tool_answered(tx, call, step_id, call_id, text, Outcome.CANCELLED, Served.STUBBED)
        return True
    why = (
        f"replay diverged at step {step_id}: {call.name}({call.arguments_json}) matches no "
        f"call of the original run {original}, and the policy "
        f"{replay.divergence.value.lower()} does not run it; nothing was executed"
    )
    _tool_answered(tx, call, step_id, call_id, why, Outcome.CANCELLED, Served.DIVERGED)
    _fail(tx, Reason.REPLAY_DIVERGED, why, step_id)
    return True


def _recorded_decision(replay: Replay, call: ToolCall) -> tuple[Decision, str] | None:
    """How a human decided on an identical call in the original run, and that call's id."""
    wanted = canonical_arguments(call.arguments_json)
    for recorded in replay.recorded:
        if recorded.tool != call.name or canonical_arguments(recorded.arguments_json) != wanted:
            continue
        if recorded.outcome is Outcome.DENIED:
            return Decision.DENIED, recorded.call_id
        if recorded.outcome is not Outcome.CANCELLED:  # cancelled: nobody decided
            return Decision.APPROVED, recorded.call_id
    return None


def _tool_answered(
    tx: _Tx,
    call: ToolCall,
    step_id: str,
    call_id: str,
    text: str,
    outcome: Outcome,
    served: Served,
    *,
    recorded_call_id: str = "",
    error_kind: str = "",
) -> None:
    """A tool step answered without the executor (a replay's record, stub or refusal)."""
    tx.emit(
        StepStarted(
            step_id,
            call_id,
            StepKind.TOOL,
            tx.now,
            tool=call.name,
            arguments_json=call.arguments_json,
        )
    )
    tx.emit(
        StepCompleted(
            step_id,
            call_id,
            StepKind.TOOL,
            outcome,
            timedelta(0),
            tool=call.name,
            tool_error_kind=error_kind,
            error_message="" if outcome is Outcome.SUCCEEDED else text,
            output=text,
            model_tool_call_id=call.call_id,
            served=served,
            recorded_call_id=recorded_call_id,
        )
    )
    tx.set(steps_taken=tx.run.steps_taken + 1)
    tx.append(_tool_message(call, text))


def _request_tool(tx: _Tx, step: PendingStep) -> None:
    run = tx.run
    tx.out.append(
        ToolCallRequested(
            run_id=run.run_id,
            tenant_id=run.tenant_id,
            agent=run.agent,
            step_id=step.step_id,
            call_id=step.call_id,
            tool=step.tool,
            arguments_json=step.arguments_json,
            idempotency_key=step.idempotency_key,
            deadline=step.deadline,
            metadata=run.metadata,
            requested_at=tx.now,
            replay_of=run.replay.original_run_id if run.replay else "",
        )
    )


def _tool_refused(tx: _Tx, call: ToolCall, step_id: str, call_id: str, kind: str, why: str) -> None:
    """A tool step that fails before it is sent; the model is told why."""
    message = f"tool {call.name!r} is {why}"
    tx.emit(
        StepStarted(
            step_id,
            call_id,
            StepKind.TOOL,
            tx.now,
            tool=call.name,
            arguments_json=call.arguments_json,
        )
    )
    tx.emit(
        StepCompleted(
            step_id,
            call_id,
            StepKind.TOOL,
            Outcome.FAILED,
            timedelta(0),
            tool=call.name,
            tool_error_kind=kind,
            error_message=message,
            output=f"error ({kind}): {message}",
            model_tool_call_id=call.call_id,
        )
    )
    tx.set(steps_taken=tx.run.steps_taken + 1)
    tx.append(_tool_message(call, f"error ({kind}): {message}"))


def _start_child(
    tx: _Tx, profile: AgentProfile, call: ToolCall, step_id: str, call_id: str
) -> None:
    try:
        args = json.loads(call.arguments_json or "{}")
    except json.JSONDecodeError:
        args = None
    agent = args.get("agent") if isinstance(args, dict) else None
    goal = args.get("goal") if isinstance(args, dict) else None
    if not isinstance(agent, str) or not isinstance(goal, str) or not goal.strip():
        why = 'called with invalid arguments: expected {"agent": "...", "goal": "..."}'
        _tool_refused(tx, call, step_id, call_id, "INVALID_ARGUMENTS", why)
        return
    child_profile = tx.ctx.profiles.agents.get(agent)
    if agent not in profile.delegates or child_profile is None:
        allowed = ", ".join(profile.delegates)
        _tool_refused(
            tx, call, step_id, call_id, "NOT_ALLOWED", f"not allowed to reach {agent!r} ({allowed})"
        )
        return
    run = tx.run
    child_deadline = tx.now + timedelta(seconds=child_profile.run_deadline_s)
    if run.deadline is not None:
        child_deadline = min(child_deadline, run.deadline)
    deadline = child_deadline + _CHILD_GRACE
    left = None if run.budget is None else max(Decimal(0), run.budget - run.cost - run.reserved)
    step = PendingStep(
        step_id,
        call_id,
        StepKind.TOOL,
        deadline,
        tx.now,
        tool=call.name,
        arguments_json=call.arguments_json,
        model_tool_call_id=call.call_id,
    )
    tx.set(pending=(*run.pending, step), child_run_ids=(*run.child_run_ids, call_id))
    tx.emit(
        StepStarted(
            step_id,
            call_id,
            StepKind.TOOL,
            deadline,
            tool=call.name,
            arguments_json=call.arguments_json,
        )
    )
    tx.emit(ChildRunStarted(call_id, agent, goal, step_id))
    tx.out.append(
        ChildGoalSubmitted(
            Goal(
                run_id=call_id,
                tenant_id=run.tenant_id,
                agent=agent,
                goal=goal,
                budget=left,
                budget_currency=run.currency if left is not None else "",
                deadline=child_deadline,
                metadata=run.metadata,
                parent_run_id=run.run_id,
                submitted_by=f"run:{run.run_id}",
            )
        )
    )


def _finish_tool_step(
    tx: _Tx,
    step: PendingStep,
    content: str,
    outcome: Outcome,
    *,
    error_kind: str = "",
    error_message: str = "",
    truncated: bool = False,
    usage: Usage | None = None,
    cost: Decimal = Decimal(0),
) -> None:
    profile = tx.profile
    limit = profile.max_tool_output_chars if profile else 8000
    text, cut = truncate(content, limit)
    tx.remove(step)
    tx.set(
        steps_taken=tx.run.steps_taken + 1,
        cost=tx.run.cost + cost,
        usage=tx.run.usage + (usage or Usage()),
    )
    tx.append(Message(Role.TOOL, text, tool_call_id=step.model_tool_call_id, name=step.tool))
    tx.emit(
        StepCompleted(
            step.step_id,
            step.call_id,
            StepKind.TOOL,
            outcome,
            tx.now - step.started_at,
            tool=step.tool,
            tool_error_kind=error_kind,
            output_truncated=truncated or cut,
            usage=usage or Usage(),
            cost=cost,
            error_message=error_message,
            output=text,
            model_tool_call_id=step.model_tool_call_id,
        )
    )
    if tx.run.status is Status.AWAITING_APPROVAL and not any(
        p.awaiting_approval for p in tx.run.pending
    ):
        tx.set(status=Status.RUNNING)
    _pump_tools(tx)


def _on_tool_result(tx: _Tx, event: ToolCompleted | ToolFailed) -> None:
    if _settle(tx, event, StepKind.TOOL):
        return
    step = _pending_or_ignore(tx, event.step_id, event.call_id, StepKind.TOOL)
    if step is None:
        return
    if isinstance(event, ToolCompleted):
        _finish_tool_step(
            tx, step, event.output, Outcome.SUCCEEDED, truncated=event.truncated, cost=event.cost
        )
    else:
        outcome = Outcome.TIMED_OUT if event.kind == "TIMED_OUT" else Outcome.FAILED
        _finish_tool_step(
            tx,
            step,
            f"error ({event.kind}): {event.message}",
            outcome,
            error_kind=event.kind,
            error_message=event.message,
            cost=event.cost,
        )


def _settle(
    tx: _Tx,
    event: ToolCompleted | ToolFailed | ModelCompleted | ModelFailed,
    kind: StepKind,
    usage: Usage | None = None,
) -> bool:
    """Count what a late result for a call given up on was billed; True when `event` was one."""
    if not tx.run.unsettled:
        return False
    late = next(
        (
            u
            for u in tx.run.unsettled
            if (u.step_id, u.call_id, u.kind) == (event.step_id, event.call_id, kind)
        ),
        None,
    )
    if late is None:
        return False
    reason = IgnoredReason.RUN_FINISHED if tx.run.status.terminal else IgnoredReason.STEP_TIMED_OUT
    tx.set(
        unsettled=tuple(u for u in tx.run.unsettled if u is not late),
        cost=tx.run.cost + event.cost,
        usage=tx.run.usage + usage if usage is not None else tx.run.usage,
    )
    tx.emit(DuplicateResultIgnored(late.step_id, late.call_id, reason, kind, event.cost))
    if tx.run.end_held and not tx.run.unsettled:
        _release_end(tx)
    return True


def _unsettle(tx: _Tx, step: PendingStep) -> None:
    """Keep waiting for what a sent call given up on was billed, if it may cost anything."""
    price = tx.ctx.tool_prices.get(step.tool)
    if step.tool == DELEGATE_TOOL.name or step.awaiting_approval or not price:
        return
    # Its price stays reserved until the executor says what it billed.
    waiting = replace(step, deadline=tx.now + SETTLE_WINDOW, reserved=price)
    tx.set(unsettled=(*tx.run.unsettled, waiting))


def _unsettle_model_call(tx: _Tx, step: PendingStep) -> None:
    """Keep waiting for what a superseded model request was billed, if it may cost anything."""
    if step.reserved <= 0:
        return  # a free route: nothing to wait for
    tx.set(unsettled=(*tx.run.unsettled, replace(step, deadline=tx.now + SETTLE_WINDOW)))


def _on_child_ended(tx: _Tx, event: ChildEnded) -> None:
    step = next(
        (
            p
            for p in tx.run.pending
            if p.call_id == event.child_run_id and p.tool == DELEGATE_TOOL.name
        ),
        None,
    )
    if step is None or tx.run.status.terminal:
        reason = (
            IgnoredReason.RUN_FINISHED
            if tx.run.status.terminal
            else IgnoredReason.ALREADY_COMPLETED
        )
        step_id = event.child_run_id.rsplit(":", 1)[0]
        tx.emit(DuplicateResultIgnored(step_id, event.child_run_id, reason, StepKind.TOOL))
        return
    if event.status is Status.COMPLETED:
        content, outcome, kind = event.answer, Outcome.SUCCEEDED, ""
    else:
        content = f"error: the sub-agent run ended {event.status.value.lower()}: {event.message}"
        outcome, kind = Outcome.FAILED, "EXECUTION_FAILED"
    _finish_tool_step(
        tx,
        step,
        content,
        outcome,
        error_kind=kind,
        error_message="" if outcome is Outcome.SUCCEEDED else event.message,
        usage=event.usage,
        cost=event.cost,
    )


# --- approvals --------------------------------------------------------------------------------


def _on_approval(tx: _Tx, event: ApprovalDecided) -> None:
    if event.tenant_id != tx.run.tenant_id:
        raise RejectedError(f"approval for run {tx.run.run_id} names another tenant")
    step = next(
        (p for p in tx.run.pending if p.approval_id == event.approval_id and p.awaiting_approval),
        None,
    )
    if step is None or tx.run.status.terminal:
        return  # no longer pending (decided, timed out, run ended): ignored by contract
    if event.call_id and event.call_id != step.call_id:
        raise RejectedError(f"approval {event.approval_id} quotes call {event.call_id}")
    edited = event.edited_arguments_json.strip()
    if event.decision is Decision.APPROVED and edited:
        try:
            parsed = json.loads(edited)
        except json.JSONDecodeError as error:
            raise RejectedError(f"edited arguments are not JSON: {error}") from error
        if not isinstance(parsed, dict):
            raise RejectedError("edited arguments must be a JSON object")
    tx.emit(
        ApprovalResolved(
            step.approval_id,
            step.step_id,
            step.call_id,
            event.decision,
            reason=event.reason,
            decided_by=event.decided_by,
            arguments_edited=bool(edited) and event.decision is Decision.APPROVED,
        )
    )
    if event.decision is Decision.APPROVED:
        profile = tx.profile
        seconds = profile.tool_step_deadline_s if profile else 60.0
        sent = replace(
            step,
            awaiting_approval=False,
            arguments_json=edited or step.arguments_json,
            deadline=tx.now + timedelta(seconds=seconds),
        )
        tx.set(pending=tuple(sent if p.step_id == step.step_id else p for p in tx.run.pending))
        if not any(p.awaiting_approval for p in tx.run.pending):
            tx.set(status=Status.RUNNING)
        _request_tool(tx, sent)
    else:
        why = event.reason or "no reason given"
        _finish_tool_step(
            tx, step, f"The call was denied by a human reviewer: {why}", Outcome.DENIED
        )


# --- time -------------------------------------------------------------------------------------


def _on_tick(tx: _Tx) -> None:
    expired = [u for u in tx.run.unsettled if tx.now >= u.deadline]
    if expired:
        # Stop waiting: a result after this still shows its cost on DuplicateResultIgnored only.
        tx.set(unsettled=tuple(u for u in tx.run.unsettled if u not in expired))
        if tx.run.end_held and not tx.run.unsettled:
            _release_end(tx)
    run = tx.run
    if run.status.terminal:
        return
    deadline_wrap = (
        run.status is Status.WRAPPING_UP and run.wrap_up_limit is Reason.DEADLINE_EXCEEDED
    )
    if run.deadline is not None and tx.now >= run.deadline and not deadline_wrap:
        _on_run_deadline(tx)
        return
    for snapshot in run.pending:
        step = tx.run.step(snapshot.step_id)
        if tx.run.status.terminal:
            break
        if step is None:
            continue
        if step.awaiting_approval:
            if step.approval_deadline is not None and tx.now >= step.approval_deadline:
                tx.emit(
                    ApprovalResolved(
                        step.approval_id,
                        step.step_id,
                        step.call_id,
                        Decision.DENIED,
                        reason="approval timed out",
                        timed_out=True,
                    )
                )
                _finish_tool_step(
                    tx,
                    step,
                    "The call was denied: no human decided before the approval timed out.",
                    Outcome.DENIED,
                )
        elif tx.now >= step.deadline:
            _on_step_timeout(tx, step)


def _on_step_timeout(tx: _Tx, step: PendingStep) -> None:
    seconds = int((step.deadline - step.started_at).total_seconds())
    message = f"no result within {seconds}s"
    spec = tx.ctx.tools.get(step.tool)
    if step.kind is StepKind.TOOL and step.tool != DELEGATE_TOOL.name:
        _unsettle(tx, step)
        if spec is None or not spec.idempotent:
            # The request may have reached the tool: "timed out" would invite a second call.
            message = (
                f"no result within {seconds}s: the call was sent to the tool executor (step"
                f" started at {step.started_at.isoformat()}) and may have run, so its outcome"
                " is unknown; it was not retried. Check the target system before calling it"
                " again"
            )
            _step_unknown(tx, step, message)
            return
    if step.kind is StepKind.MODEL:
        if _retry_model_step(tx, step, Outcome.TIMED_OUT, message):
            # The router may have been slow rather than down: the first request can still be
            # answered, and billed. Its reservation stays until it says what it cost.
            _unsettle_model_call(tx, step)
            return
        tx.remove(step)
        tx.set(steps_taken=tx.run.steps_taken + 1)
        tx.emit(
            StepCompleted(
                step.step_id,
                step.call_id,
                StepKind.MODEL,
                Outcome.TIMED_OUT,
                tx.now - step.started_at,
                route=tx.run.route,
                error_message=message,
            )
        )
        reason = (
            tx.run.wrap_up_limit if tx.run.status is Status.WRAPPING_UP else Reason.MODEL_FAILED
        )
        tries = f" (after {step.attempt} requests)" if step.attempt > 1 else ""
        _fail(tx, reason, f"model step {step.step_id} timed out{tries}: {message}", step.step_id)
        return
    run = tx.run
    if step.tool == DELEGATE_TOOL.name:
        tx.out.append(
            RunCancelSent(step.call_id, run.tenant_id, "parent step timed out", f"run:{run.run_id}")
        )
    else:
        tx.out.append(
            ToolCallsCancelRequested(
                run.run_id, run.tenant_id, (step.call_id,), "step deadline exceeded", tx.now
            )
        )
    profile = tx.profile
    if profile is not None and profile.on_tool_timeout is StepTimeoutPolicy.FAIL:
        tx.remove(step)
        tx.set(steps_taken=tx.run.steps_taken + 1)
        tx.emit(
            StepCompleted(
                step.step_id,
                step.call_id,
                StepKind.TOOL,
                Outcome.TIMED_OUT,
                tx.now - step.started_at,
                tool=step.tool,
                tool_error_kind="TIMED_OUT",
                error_message=message,
            )
        )
        _fail(tx, Reason.DEADLINE_EXCEEDED, f"tool step {step.step_id} timed out", step.step_id)
        return
    _finish_tool_step(
        tx,
        step,
        f"error (TIMED_OUT): the tool gave {message}",
        Outcome.TIMED_OUT,
        error_kind="TIMED_OUT",
        error_message=message,
    )


def _step_unknown(tx: _Tx, step: PendingStep, message: str) -> None:
    """End a non-idempotent tool step whose result never came: its outcome is unknown."""
    kind = "OUTCOME_UNKNOWN"
    tx.out.append(
        ToolCallsCancelRequested(
            tx.run.run_id, tx.run.tenant_id, (step.call_id,), "step deadline exceeded", tx.now
        )
    )
    profile = tx.profile
    if profile is not None and profile.on_tool_timeout is StepTimeoutPolicy.FAIL:
        tx.remove(step)
        tx.set(steps_taken=tx.run.steps_taken + 1)
        tx.emit(
            StepCompleted(
                step.step_id,
                step.call_id,
                StepKind.TOOL,
                Outcome.FAILED,
                tx.now - step.started_at,
                tool=step.tool,
                tool_error_kind=kind,
                error_message=message,
            )
        )
        _fail(tx, Reason.DEADLINE_EXCEEDED, f"tool step {step.step_id}: {message}", step.step_id)
        return
    _finish_tool_step(
        tx,
        step,
        f"error ({kind}): {message}",
        Outcome.FAILED,
        error_kind=kind,
        error_message=message,
    )


def _on_run_deadline(tx: _Tx) -> None:
    profile = tx.profile
    wrap = (
        profile is not None
        and profile.on_deadline is DeadlinePolicy.WRAP_UP
        and tx.run.status not in (Status.QUEUED, Status.WRAPPING_UP)
    )
    if not wrap:
        _fail(tx, Reason.DEADLINE_EXCEEDED, "the run's deadline passed")
        return
    _abandon(tx, "not executed: the run's deadline passed", cancel_children=True)
    _begin_wrap_up(tx, Reason.DEADLINE_EXCEEDED, "the run's deadline passed")
    _next_model_turn(tx)


# --- endings ----------------------------------------------------------------------------------


def _abandon(tx: _Tx, text: str, *, cancel_children: bool) -> None:
    """End every pending and queued step; tools in flight are asked to stop."""
    run = tx.run
    in_flight: list[str] = []
    for step in run.pending:
        tx.emit(
            StepCompleted(
                step.step_id,
                step.call_id,
                step.kind,
                Outcome.CANCELLED,
                tx.now - step.started_at,
                route=run.route if step.kind is StepKind.MODEL else "",
                tool=step.tool,
                error_message=text,
            )
        )
        if step.kind is StepKind.MODEL:
            continue
        tx.append(Message(Role.TOOL, text, tool_call_id=step.model_tool_call_id, name=step.tool))
        if step.tool == DELEGATE_TOOL.name:
            if cancel_children:
                tx.out.append(RunCancelSent(step.call_id, run.tenant_id, text, f"run:{run.run_id}"))
        elif not step.awaiting_approval:
            in_flight.append(step.call_id)
            _unsettle(tx, step)
    for call in run.queued_tool_calls:
        tx.append(_tool_message(call, text))
    if in_flight:
        tx.out.append(
            ToolCallsCancelRequested(run.run_id, run.tenant_id, tuple(in_flight), text, tx.now)
        )
    tx.set(pending=(), queued_tool_calls=())


def _end(tx: _Tx, status: Status, body: EventBody) -> None:
    tx.set(status=status, finished_at=tx.now)
    if tx.run.unsettled:
        # Calls given up on may still be billed: the terminal event waits for their cost (or
        # the settle window) and is then rebuilt from state, so its cost equals the ledger.
        tx.set(end_held=True)
        return
    _announce_end(tx, body)


def _release_end(tx: _Tx) -> None:
    """Emit the terminal event a settled run held back, with its final cost."""
    tx.set(end_held=False)
    _announce_end(tx, _terminal_body(tx.run))


def _terminal_body(run: Run) -> EventBody:
    """The terminal event of an ended run, rebuilt from its state."""
    duration = (run.finished_at or run.updated_at) - run.started_at
    match run.status:
        case Status.COMPLETED:
            return RunCompleted(
                run.answer,
                run.usage,
                run.cost,
                run.steps_taken,
                duration,
                limit_reached=run.wrap_up_limit,
            )
        case Status.FAILED:
            return RunFailed(
                run.failure_reason,
                run.failure_message,
                run.usage,
                run.cost,
                run.steps_taken,
                duration,
                run.failed_step_id,
            )
        case Status.CANCELLED:
            by_parent = bool(run.parent_run_id) and run.cancelled_by == f"run:{run.parent_run_id}"
            return RunCancelled(
                run.failure_message,
                run.cancelled_by,
                by_parent,
                run.usage,
                run.cost,
                run.steps_taken,
                duration,
            )
        case _:
            raise AssertionError(f"run {run.run_id} is {run.status}, it has not ended")


def _announce_end(tx: _Tx, body: EventBody) -> None:
    tx.emit(body)
    run = tx.run
    if run.session_id:
        completed = run.status is Status.COMPLETED
        profiles = tx.ctx.profiles
        memory = bound_memory(run.transcript, profiles.session_memory_messages) if completed else ()
        tx.out.append(
            SessionTurnEnded(run.tenant_id, run.session_id, run.run_id, completed, memory)
        )
    if run.parent_run_id:
        tx.out.append(
            ChildEndedSent(
                run.parent_run_id,
                run.run_id,
                run.tenant_id,
                run.status,
                run.answer,
                run.failure_message,
                run.usage,
                run.cost,
                run.currency,
            )
        )


def _complete(tx: _Tx, answer: str) -> None:
    tx.append(Message(Role.ASSISTANT, answer))
    tx.set(answer=answer)
    run = tx.run
    _end(
        tx,
        Status.COMPLETED,
        RunCompleted(
            answer,
            run.usage,
            run.cost,
            run.steps_taken,
            tx.now - run.started_at,
            limit_reached=run.wrap_up_limit,
        ),
    )


def _fail(tx: _Tx, reason: Reason, message: str, step_id: str = "") -> None:
    if tx.run.pending or tx.run.queued_tool_calls:
        _abandon(tx, f"cancelled: the run failed ({reason.value})", cancel_children=True)
    tx.set(failure_reason=reason, failure_message=message, failed_step_id=step_id)
    run = tx.run
    _end(
        tx,
        Status.FAILED,
        RunFailed(
            reason, message, run.usage, run.cost, run.steps_taken, tx.now - run.started_at, step_id
        ),
    )


def _on_cancel(tx: _Tx, event: CancelRequested) -> None:
    if event.tenant_id != tx.run.tenant_id:
        raise RejectedError(f"cancel for run {tx.run.run_id} names another tenant")
    if tx.run.status.terminal:
        return  # cancelling a finished run is a no-op
    reason = event.reason or "cancelled"
    _abandon(tx, f"cancelled: {reason}", cancel_children=not event.keep_children)
    by_parent = bool(tx.run.parent_run_id) and event.requested_by == f"run:{tx.run.parent_run_id}"
    tx.set(failure_message=reason, cancelled_by=event.requested_by)
    run = tx.run
    _end(
        tx,
        Status.CANCELLED,
        RunCancelled(
            reason,
            event.requested_by,
            by_parent,
            run.usage,
            run.cost,
            run.steps_taken,
            tx.now - run.started_at,
        ),
    )
