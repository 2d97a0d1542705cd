"""The pure agent loop, one transition at a time."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from stepline_planner import outputs as o
from stepline_planner.decide import RejectedError, TenantBudget, next_due
from stepline_planner.inputs import (
    ApprovalDecided,
    CancelRequested,
    GoalReceived,
    ModelCompleted,
    ModelFailed,
    Tick,
    ToolCompleted,
    ToolFailed,
)
from stepline_planner.profiles import BudgetPolicy, DeadlinePolicy, StepTimeoutPolicy
from stepline_planner.state import (
    Decision,
    IgnoredReason,
    Outcome,
    Reason,
    Role,
    Status,
    StepKind,
    ToolCall,
    Usage,
)
from stepline_runtime.ids import derive_run_id
from tests.planner.unit.helpers import Driver, context, profile, sequences

CALLS = (ToolCall("m1", "echo", '{"x": 1}'), ToolCall("m2", "search", '{"q": "y"}'))


def tools_turn(d: Driver, calls: tuple[ToolCall, ...] = CALLS) -> list[o.ToolCallRequested]:
    """Answer the pending model step with tool calls."""
    model = next(p for p in d.state.pending if p.kind is StepKind.MODEL)
    d.feed(ModelCompleted(model.step_id, model.call_id, "", calls, "TOOL_CALLS", Usage(10, 5)))
    return d.of(o.ToolCallRequested)


def test_goal_starts_the_run_with_a_model_call() -> None:
    d = Driver()
    d.start()
    assert d.state.status is Status.RUNNING
    started = d.events(o.RunStarted)[0]
    assert started.route == "r"
    assert started.max_steps == 10
    call = d.one(o.ModelCallRequested)
    assert (call.step_id, call.call_id) == ("r1:1", "r1:1:1")
    assert [m.role for m in call.messages] == [Role.SYSTEM, Role.USER]
    assert {t.name for t in call.tools} == {"echo", "search", "pay"}
    assert call.tools_allowed
    assert d.events(o.BudgetReserved)[0].amount > 0
    assert sequences(d.out) == [1, 2, 3]


def test_tool_calls_fan_out_in_parallel_and_fan_in_in_model_order() -> None:
    d = Driver()
    d.start()
    requested = tools_turn(d)
    assert [(r.step_id, r.call_id, r.tool) for r in requested] == [
        ("r1:2", "r1:2:1", "echo"),
        ("r1:3", "r1:3:1", "search"),
    ]
    assert requested[0].idempotency_key == "r1:2:1"
    # Results arrive in reverse order; nothing is asked of the model until both are in.
    d.feed(ToolCompleted("r1:3", "r1:3:1", "found"))
    assert not d.of(o.ModelCallRequested)
    d.feed(ToolCompleted("r1:2", "r1:2:1", "echoed", cost=Decimal("0.001")))
    call = d.one(o.ModelCallRequested)
    assert call.step_id == "r1:4"
    tools = [m for m in call.messages if m.role is Role.TOOL]
    assert [(m.tool_call_id, m.content) for m in tools] == [("m1", "echoed"), ("m2", "found")]
    assert d.state.cost == Decimal("0.001")  # what the executor billed the echo call
    assert d.state.steps_taken == 3


def test_final_answer_completes_the_run() -> None:
    d = Driver()
    d.start()
    d.feed(ModelCompleted("r1:1", "r1:1:1", "42", (), "STOP", Usage(7, 3), Decimal("0.5")))
    done = d.events(o.RunCompleted)[0]
    assert (done.answer, done.steps, done.cost, done.usage) == (
        "42",
        1,
        Decimal("0.5"),
        Usage(7, 3),
    )
    assert d.state.status is Status.COMPLETED
    assert d.state.transcript[-1].content == "42"
    assert d.state.pending == ()


def test_duplicate_and_late_results_are_recorded_not_applied() -> None:
    d = Driver()
    d.start()
    tools_turn(d)
    d.feed(ToolCompleted("r1:2", "r1:2:1", "echoed"))
    length = len(d.state.transcript)
    d.feed(ToolCompleted("r1:2", "r1:2:1", "echoed"))
    ignored = d.events(o.DuplicateResultIgnored)
    assert [(i.step_id, i.reason) for i in ignored] == [("r1:2", IgnoredReason.ALREADY_COMPLETED)]
    assert len(d.state.transcript) == length
    d.feed(ToolCompleted("r1:99", "r1:99:1", "?"))
    assert d.events(o.DuplicateResultIgnored)[0].reason is IgnoredReason.UNKNOWN_STEP
    d.feed(ToolCompleted("r1:3", "r1:3:7", "?"))
    assert d.events(o.DuplicateResultIgnored)[0].reason is IgnoredReason.CALL_MISMATCH
    d.feed(ToolCompleted("r1:3", "r1:3:1", "found"))
    d.feed(ModelCompleted("r1:4", "r1:4:1", "done"))
    d.feed(ModelCompleted("r1:4", "r1:4:1", "done"))
    assert d.events(o.DuplicateResultIgnored)[0].reason is IgnoredReason.RUN_FINISHED
    assert [m.content for m in d.state.transcript].count("done") == 1


def test_parallelism_is_limited() -> None:
    d = Driver(context(profile(max_parallel_tool_calls=2)))
    d.start()
    calls = (*CALLS, ToolCall("m3", "echo", "{}"))
    assert [r.call_id for r in tools_turn(d, calls)] == ["r1:2:1", "r1:3:1"]
    assert len(d.state.queued_tool_calls) == 1
    d.feed(ToolCompleted("r1:2", "r1:2:1", "a"))
    assert [r.call_id for r in d.of(o.ToolCallRequested)] == ["r1:4:1"]


def test_approval_granted_with_edited_arguments() -> None:
    d = Driver()
    d.start()
    assert tools_turn(d, (ToolCall("m1", "pay", '{"amount": 100}'),)) == []
    asked = d.events(o.ApprovalRequested)[0]
    assert d.state.status is Status.AWAITING_APPROVAL
    d.feed(
        ApprovalDecided(
            "t1", asked.approval_id, asked.call_id, Decision.APPROVED, "", '{"amount": 5}', "bob"
        )
    )
    sent = d.one(o.ToolCallRequested)
    assert sent.arguments_json == '{"amount": 5}'
    assert d.events(o.ApprovalResolved)[0].arguments_edited
    assert d.state.status.value == "RUNNING"
    # A second decision for the same approval is ignored.
    assert d.feed(ApprovalDecided("t1", asked.approval_id, "", Decision.DENIED)) == []


def test_approval_denied_tells_the_model_why() -> None:
    d = Driver()
    d.start()
    tools_turn(d, (ToolCall("m1", "pay", "{}"),))
    asked = d.events(o.ApprovalRequested)[0]
    d.feed(ApprovalDecided("t1", asked.approval_id, "", Decision.DENIED, "too much"))
    assert d.events(o.StepCompleted)[0].outcome is Outcome.DENIED
    call = d.one(o.ModelCallRequested)
    assert "too much" in call.messages[-1].content
    assert not d.of(o.ToolCallRequested)


def test_approval_times_out_as_denial() -> None:
    d = Driver()
    d.start()
    tools_turn(d, (ToolCall("m1", "pay", "{}"),))
    assert d.feed(Tick(), after_s=99) == []
    d.feed(Tick(), after_s=1)
    resolved = d.events(o.ApprovalResolved)[0]
    assert resolved.timed_out
    assert resolved.decision is Decision.DENIED
    assert d.one(o.ModelCallRequested)


def test_approval_from_another_tenant_is_rejected() -> None:
    d = Driver()
    d.start()
    tools_turn(d, (ToolCall("m1", "pay", "{}"),))
    asked = d.events(o.ApprovalRequested)[0]
    before = d.state
    with pytest.raises(RejectedError):
        d.feed(ApprovalDecided("other", asked.approval_id, "", Decision.APPROVED))
    assert d.state is before


def test_cancel_stops_in_flight_tools_and_children() -> None:
    d = Driver(context(profile(delegates=("a",))))
    d.start()
    tools_turn(d, (CALLS[0], ToolCall("m9", "delegate", '{"agent": "a", "goal": "sub"}')))
    child = d.one(o.ChildGoalSubmitted).goal
    assert (child.run_id, child.parent_run_id) == ("r1:3:1", "r1")
    d.feed(CancelRequested("t1", "user changed their mind", "alice"))
    assert d.one(o.ToolCallsCancelRequested).call_ids == ("r1:2:1",)
    assert d.one(o.RunCancelSent).run_id == "r1:3:1"
    # The priced echo call was in flight: the run's end waits for what it was billed.
    assert d.events(o.RunCancelled) == []
    d.feed(ToolFailed("r1:2", "r1:2:1", "CANCELLED", "cancelled: user changed their mind"))
    cancelled = d.events(o.RunCancelled)[0]
    assert (cancelled.reason, cancelled.requested_by) == ("user changed their mind", "alice")
    assert d.state.status is Status.CANCELLED
    assert d.feed(CancelRequested("t1")) == []


def test_child_run_reports_to_parent_and_parent_resumes() -> None:
    parent = Driver(context(profile(delegates=("a",))))
    parent.start()
    tools_turn(parent, (ToolCall("m9", "delegate", '{"agent": "a", "goal": "sub"}'),))
    child_goal = parent.one(o.ChildGoalSubmitted).goal
    child = Driver(parent.ctx)
    child.feed(GoalReceived(child_goal))
    child.feed(ModelCompleted(f"{child_goal.run_id}:1", f"{child_goal.run_id}:1:1", "sub-answer"))
    ended = child.one(o.ChildEndedSent)
    assert (ended.parent_run_id, ended.answer) == ("r1", "sub-answer")
    from stepline_planner.inputs import ChildEnded

    parent.feed(ChildEnded(ended.child_run_id, ended.status, ended.answer, cost=Decimal("0.2")))
    call = parent.one(o.ModelCallRequested)
    assert call.messages[-1].content == "sub-answer"
    assert parent.state.cost == Decimal("0.2")


def test_child_cancelled_by_parent_says_so() -> None:
    child = Driver()
    child.start(run_id="r1:3:1", parent_run_id="r1")
    child.feed(CancelRequested("t1", "parent cancelled", "run:r1"))
    assert child.events(o.RunCancelled)[0].by_parent


def test_tool_timeout_becomes_a_result_the_model_sees() -> None:
    d = Driver()
    d.start()
    tools_turn(d, CALLS[1:])  # search is idempotent: calling it again is safe
    d.feed(Tick(), after_s=31)
    assert d.one(o.ToolCallsCancelRequested).call_ids == ("r1:2:1",)
    assert d.events(o.StepCompleted)[0].outcome is Outcome.TIMED_OUT
    call = d.one(o.ModelCallRequested)
    assert "TIMED_OUT" in call.messages[-1].content
    d.feed(ToolCompleted("r1:2", "r1:2:1", "late"))
    assert d.events(o.DuplicateResultIgnored)[0].reason is IgnoredReason.ALREADY_COMPLETED


def test_a_non_idempotent_tool_step_that_expires_is_an_unknown_outcome_not_a_timeout() -> None:
    # Issue 19 defect 1: "timed out" would invite the model to send the side effect again.
    d = Driver()
    d.start()
    tools_turn(d, CALLS[:1])  # echo is not idempotent
    d.feed(Tick(), after_s=31)
    done = d.events(o.StepCompleted)[0]
    assert (done.outcome, done.tool_error_kind) == (Outcome.FAILED, "OUTCOME_UNKNOWN")
    told = d.one(o.ModelCallRequested).messages[-1].content
    assert told.startswith("error (OUTCOME_UNKNOWN):")
    assert "sent to the tool executor (step started at 2026-11-01T12:00:00" in told
    assert "may have run" in told
    assert "TIMED_OUT" not in told


def test_failed_tool_results_count_what_they_were_billed() -> None:
    # Issue 19 defect 2: the ledger bills an executed call whatever its outcome.
    d = Driver()
    d.start()
    tools_turn(d)
    d.feed(ToolFailed("r1:2", "r1:2:1", "OUTCOME_UNKNOWN", "maybe sent", cost=Decimal("0.25")))
    d.feed(ToolCompleted("r1:3", "r1:3:1", "found", cost=Decimal("0.002")))
    costs = [e.cost for e in d.history_events(o.StepCompleted) if e.kind is StepKind.TOOL]
    assert costs == [Decimal("0.25"), Decimal("0.002")]
    assert d.state.cost == Decimal("0.252")


def test_a_late_result_of_an_expired_call_counts_its_cost_once() -> None:
    d = Driver()
    d.start()
    tools_turn(d, CALLS[:1])
    d.feed(Tick(), after_s=31)
    # Until the executor says what it billed, the tool's price stays out of the budget.
    assert [u.reserved for u in d.state.unsettled] == [Decimal("0.001")]
    held_back = d.state.reserved
    late = ToolFailed(
        "r1:2", "r1:2:1", "OUTCOME_UNKNOWN", "executor restarted", cost=Decimal("0.001")
    )
    d.feed(late, after_s=5)
    ignored = d.events(o.DuplicateResultIgnored)[0]
    assert (ignored.reason, ignored.cost) == (IgnoredReason.STEP_TIMED_OUT, Decimal("0.001"))
    assert d.state.cost == Decimal("0.001")
    assert d.state.reserved == held_back - Decimal("0.001")
    d.feed(late)  # a redelivered copy is not counted again
    assert d.events(o.DuplicateResultIgnored)[0].cost == 0
    assert d.state.cost == Decimal("0.001")


def test_a_run_ending_with_a_priced_call_unsettled_waits_for_its_cost() -> None:
    d = Driver()
    d.start()
    tools_turn(d, CALLS[:1])  # echo costs 0.001 a call
    d.feed(Tick(), after_s=31)
    d.feed(ModelCompleted("r1:3", "r1:3:1", "done", cost=Decimal("0.01")))
    assert d.state.status is Status.COMPLETED
    assert d.events(o.RunCompleted) == []  # held until the executor says what it billed
    d.feed(ToolFailed("r1:2", "r1:2:1", "OUTCOME_UNKNOWN", "restarted", cost=Decimal("0.001")))
    completed = d.events(o.RunCompleted)[0]
    assert completed.cost == Decimal("0.011")
    assert completed.answer == "done"
    assert completed.duration.total_seconds() == 31


def test_a_held_end_is_released_when_the_settle_window_passes() -> None:
    d = Driver(context(profile(on_tool_timeout=StepTimeoutPolicy.FAIL)))
    d.start()
    tools_turn(d, CALLS[:1])
    d.feed(Tick(), after_s=31)
    assert d.state.status is Status.FAILED
    assert d.events(o.RunFailed) == []
    due = next_due(d.state, timedelta(hours=1))
    assert due is not None
    d.feed(Tick(), after_s=(due - d.now).total_seconds())
    failed = d.events(o.RunFailed)[0]
    assert (failed.reason, failed.step_id) == (Reason.DEADLINE_EXCEEDED, "r1:2")
    assert failed.cost == 0
    d.feed(ToolFailed("r1:2", "r1:2:1", "OUTCOME_UNKNOWN", "too late", cost=Decimal("0.001")))
    assert d.events(o.RunFailed) == []
    assert d.events(o.DuplicateResultIgnored)[0].reason is IgnoredReason.RUN_FINISHED


def test_a_cancelled_run_waits_for_what_its_in_flight_calls_were_billed() -> None:
    d = Driver()
    d.start()
    tools_turn(d)  # echo (priced) and search (free) in flight
    d.feed(CancelRequested("t1", "stop", "alice"))
    assert d.events(o.RunCancelled) == []
    d.feed(ToolFailed("r1:2", "r1:2:1", "CANCELLED", "cancelled", cost=Decimal("0.001")))
    cancelled = d.events(o.RunCancelled)[0]
    assert (cancelled.cost, cancelled.requested_by) == (Decimal("0.001"), "alice")


def test_tool_timeout_fails_the_run_when_policy_says_so() -> None:
    d = Driver(context(profile(on_tool_timeout=StepTimeoutPolicy.FAIL)))
    d.start()
    tools_turn(d, CALLS[1:])
    d.feed(Tick(), after_s=31)
    assert d.events(o.RunFailed)[0].reason is Reason.DEADLINE_EXCEEDED


def test_model_failure_fails_the_run() -> None:
    d = Driver()
    d.start()
    d.feed(ModelFailed("r1:1", "r1:1:1", "ALL_DEPLOYMENTS_FAILED", "all down"))
    assert d.events(o.RunFailed)[0].reason is Reason.MODEL_FAILED


def test_run_deadline_fails_and_cancels_tools() -> None:
    d = Driver(context(profile(run_deadline_s=20, tool_step_deadline_s=100)))
    d.start()
    tools_turn(d, CALLS[:1])
    d.feed(Tick(), after_s=21)
    assert d.one(o.ToolCallsCancelRequested).call_ids == ("r1:2:1",)
    d.feed(ToolFailed("r1:2", "r1:2:1", "CANCELLED", "cancelled: the run failed"))
    assert d.events(o.RunFailed)[0].reason is Reason.DEADLINE_EXCEEDED


def test_run_deadline_wraps_up_when_policy_says_so() -> None:
    d = Driver(context(profile(run_deadline_s=20, on_deadline=DeadlinePolicy.WRAP_UP)))
    d.start()
    tools_turn(d, CALLS[1:])
    d.feed(Tick(), after_s=21)
    assert d.events(o.WrapUpStarted)[0].limit is Reason.DEADLINE_EXCEEDED
    call = d.one(o.ModelCallRequested)
    assert not call.tools_allowed
    assert call.deadline > d.now
    d.feed(ModelCompleted(call.step_id, call.call_id, "partial answer"))
    assert d.events(o.RunCompleted)[0].limit_reached is Reason.DEADLINE_EXCEEDED


def test_budget_that_does_not_fit_wraps_up() -> None:
    # Worst case of a normal call ≈ 1000 output tokens × 2/1M = 0.002; a wrap-up ≈ 0.0002.
    d = Driver()
    d.start(budget=Decimal("0.0021"))
    tools_turn(d, CALLS[:1])
    d.feed(ToolCompleted("r1:2", "r1:2:1", "x", cost=Decimal("0.001")))
    assert d.events(o.WrapUpStarted)[0].limit is Reason.BUDGET_EXCEEDED
    assert not d.one(o.ModelCallRequested).tools_allowed


def test_budget_that_does_not_fit_fails_when_policy_says_so() -> None:
    d = Driver(context(profile(on_budget_exceeded=BudgetPolicy.FAIL)))
    d.start(budget=Decimal("0.001"))
    assert d.events(o.RunFailed)[0].reason is Reason.BUDGET_EXCEEDED


def test_tenant_budget_is_respected() -> None:
    d = Driver(context(budgets={"t1": TenantBudget(exhausted=True)}))
    d.start()
    assert d.events(o.RunFailed)[0].reason is Reason.BUDGET_EXCEEDED
    low = Driver(context(budgets={"t1": TenantBudget(remaining=Decimal("0.00001"))}))
    low.start()
    assert low.events(o.RunFailed)[0].reason is Reason.BUDGET_EXCEEDED


def test_max_steps_ends_with_a_wrap_up_turn() -> None:
    d = Driver(context(profile(max_steps=3)))
    d.start()
    tools_turn(d, CALLS)  # step 1 done; only one tool may run, the last step is the wrap-up
    assert len(d.of(o.ToolCallRequested)) == 1
    d.feed(ToolCompleted("r1:2", "r1:2:1", "x"))
    assert d.events(o.WrapUpStarted)[0].limit is Reason.MAX_STEPS
    call = d.one(o.ModelCallRequested)
    assert any("step limit" in m.content for m in call.messages if m.role is Role.TOOL)
    d.feed(ModelCompleted(call.step_id, call.call_id, "final"))
    done = d.events(o.RunCompleted)[0]
    assert (done.limit_reached, done.steps) == (Reason.MAX_STEPS, 3)


@pytest.mark.parametrize(
    ("changes", "reason", "text"),
    [
        ({"agent": "nobody"}, Reason.UNKNOWN_AGENT, "unknown agent"),
        ({"goal": "  "}, Reason.INVALID_GOAL, "empty"),
        ({"tenant_id": ""}, Reason.INVALID_GOAL, "tenant_id"),
        ({"tenant_id": "Acme Corp"}, Reason.INVALID_GOAL, "lower-case letters"),
        ({"tenant_id": "x" * 65}, Reason.INVALID_GOAL, "longer than 64"),
        ({"budget": Decimal("-1")}, Reason.INVALID_GOAL, "negative"),
        ({"budget": Decimal("0")}, Reason.BUDGET_EXCEEDED, "zero"),
    ],
)
def test_bad_goals_fail_with_a_clear_reason(
    changes: dict[str, object], reason: Reason, text: str
) -> None:
    d = Driver()
    d.start(**changes)
    failed = d.events(o.RunFailed)[0]
    assert failed.reason is reason
    assert text in failed.message
    assert not d.of(o.ModelCallRequested)


def test_tool_not_allowed_for_tenant_fails_the_goal() -> None:
    d = Driver(context(tenant_tools={"t1": frozenset({"echo"})}))
    d.start()
    failed = d.events(o.RunFailed)[0]
    assert failed.reason is Reason.TOOL_NOT_ALLOWED
    assert "pay" in failed.message


def test_model_asking_for_a_tool_it_was_not_offered_gets_an_error_result() -> None:
    d = Driver()
    d.start()
    tools_turn(d, (ToolCall("m1", "rm_rf", "{}"),))
    assert d.events(o.StepCompleted)[1].tool_error_kind == "UNKNOWN_TOOL"
    assert "not available" in d.one(o.ModelCallRequested).messages[-1].content


def test_idempotent_submission_forwards_then_dedupes() -> None:
    d = Driver()
    d.start(run_id="caller-id", idempotency_key="k1")
    forwarded = d.one(o.GoalForwarded).goal
    assert forwarded.run_id == derive_run_id("t1", "k1")
    assert d.run is None
    d.feed(GoalReceived(forwarded))
    assert d.state.run_id == forwarded.run_id
    assert d.feed(GoalReceived(forwarded)) == []


def test_tool_failure_is_shown_to_the_model() -> None:
    d = Driver()
    d.start()
    tools_turn(d, CALLS[:1])
    d.feed(ToolFailed("r1:2", "r1:2:1", "EXECUTION_FAILED", "HTTP 500"))
    assert "HTTP 500" in d.one(o.ModelCallRequested).messages[-1].content


def test_large_tool_outputs_are_truncated() -> None:
    d = Driver(context(profile(max_tool_output_chars=10)))
    d.start()
    tools_turn(d, CALLS[:1])
    d.feed(ToolCompleted("r1:2", "r1:2:1", "x" * 100))
    assert d.events(o.StepCompleted)[0].output_truncated
    assert "truncated 90 characters" in d.one(o.ModelCallRequested).messages[-1].content


def test_model_step_that_timed_out_is_retried_once_then_completes() -> None:
    # The router was down longer than the step's deadline: its request is asked for again.
    d = Driver(context(profile(run_deadline_s=100)))
    d.start()
    first = d.one(o.ModelCallRequested)
    d.feed(Tick(), after_s=61)
    assert d.events(o.RunFailed) == []
    retry = d.one(o.ModelCallRequested)
    assert (retry.step_id, retry.call_id) == ("r1:1", "r1:1:2")
    assert retry.messages == first.messages
    assert retry.tools == first.tools
    assert retry.deadline == first.requested_at + timedelta(seconds=100)  # capped by the run's
    ended = d.events(o.StepCompleted)[0]
    assert (ended.call_id, ended.outcome) == ("r1:1:1", Outcome.TIMED_OUT)
    assert "r1:1:2" in ended.error_message
    started = d.events(o.StepStarted)[0]
    assert (started.step_id, started.call_id, started.deadline) == (
        "r1:1",
        "r1:1:2",
        retry.deadline,
    )
    assert d.events(o.BudgetReserved) == []  # the step keeps its reservation
    assert d.state.steps_taken == 0
    # The first call's late answer is a stale duplicate: recorded, never applied.
    d.feed(ModelCompleted("r1:1", "r1:1:1", "stale"))
    ignored = d.events(o.DuplicateResultIgnored)
    assert [(i.call_id, i.reason) for i in ignored] == [("r1:1:1", IgnoredReason.STEP_TIMED_OUT)]
    d.feed(ModelCompleted("r1:1", "r1:1:2", "42"))
    assert d.events(o.RunCompleted)[0].answer == "42"
    assert "stale" not in [m.content for m in d.state.transcript]


def test_a_late_answer_to_a_superseded_model_call_counts_what_it_was_billed_once() -> None:
    # The router was slow, not down: it answered (and billed) the call the step gave up on.
    d = Driver(context(profile(run_deadline_s=100)))
    d.start()
    d.feed(Tick(), after_s=61)  # retried as r1:1:2
    late = ModelCompleted("r1:1", "r1:1:1", "slow", usage=Usage(100, 10), cost=Decimal("0.003"))
    d.feed(late, after_s=2)
    ignored = d.events(o.DuplicateResultIgnored)
    assert [(i.call_id, i.reason, i.cost) for i in ignored] == [
        ("r1:1:1", IgnoredReason.STEP_TIMED_OUT, Decimal("0.003"))
    ]
    assert (d.state.cost, d.state.usage) == (Decimal("0.003"), Usage(100, 10))
    d.feed(late)  # a redelivered copy is not counted again
    assert d.events(o.DuplicateResultIgnored)[0].cost == 0
    assert d.state.cost == Decimal("0.003")
    d.feed(ModelCompleted("r1:1", "r1:1:2", "42", usage=Usage(50, 5), cost=Decimal("0.002")))
    completed = d.events(o.RunCompleted)[0]
    assert (completed.cost, completed.usage) == (Decimal("0.005"), Usage(150, 15))
    assert "slow" not in [m.content for m in d.state.transcript]


def test_a_run_answered_before_its_superseded_model_call_reports_waits_for_its_cost() -> None:
    d = Driver(context(profile(run_deadline_s=100)))
    d.start()
    d.feed(Tick(), after_s=61)
    d.feed(ModelCompleted("r1:1", "r1:1:2", "42", cost=Decimal("0.002")), after_s=1)
    assert d.events(o.RunCompleted) == []  # the first call may still be billed
    assert d.state.status is Status.COMPLETED
    assert d.state.end_held
    d.feed(ModelFailed("r1:1", "r1:1:1", "UNAVAILABLE", cost=Decimal("0.001")), after_s=1)
    ignored = d.events(o.DuplicateResultIgnored)[0]
    assert (ignored.reason, ignored.cost) == (IgnoredReason.RUN_FINISHED, Decimal("0.001"))
    completed = d.events(o.RunCompleted)[0]
    assert (completed.answer, completed.cost) == ("42", Decimal("0.003"))
    # A call that never reports holds the end for the settle window only.
    other = Driver(context(profile(run_deadline_s=100)))
    other.start()
    other.feed(Tick(), after_s=61)
    other.feed(ModelCompleted("r1:1", "r1:1:2", "42", cost=Decimal("0.002")), after_s=1)
    assert other.events(o.RunCompleted) == []
    other.feed(Tick(), after_s=30)
    assert other.events(o.RunCompleted)[0].cost == Decimal("0.002")


def test_model_step_is_retried_only_once() -> None:
    d = Driver()
    d.start()
    d.feed(Tick(), after_s=61)
    assert d.one(o.ModelCallRequested).call_id == "r1:1:2"
    d.feed(Tick(), after_s=61)
    failed = d.events(o.RunFailed)[0]
    assert (failed.reason, failed.step_id) == (Reason.MODEL_FAILED, "r1:1")
    assert "after 2 requests" in failed.message
    assert d.of(o.ModelCallRequested) == []


def test_router_deadline_before_any_attempt_is_retried_but_not_after_attempts() -> None:
    d = Driver()
    d.start()
    d.feed(
        ModelFailed(
            "r1:1", "r1:1:1", "DEADLINE_EXCEEDED", "the deadline passed before the call started"
        ),
        after_s=5,
    )
    retry = d.one(o.ModelCallRequested)
    assert (retry.call_id, retry.deadline) == ("r1:1:2", d.now + timedelta(seconds=60))
    assert d.events(o.StepCompleted)[0].outcome is Outcome.FAILED
    # Same input, same decision: the retry's ids derive from the step, not from a clock or uuid.
    again = Driver()
    again.start()
    again.feed(
        ModelFailed(
            "r1:1", "r1:1:1", "DEADLINE_EXCEEDED", "the deadline passed before the call started"
        ),
        after_s=5,
    )
    assert again.out == d.out
    # A provider that was tried and ran out of time is no downtime: the run fails.
    slow = Driver()
    slow.start()
    slow.feed(
        ModelFailed("r1:1", "r1:1:1", "DEADLINE_EXCEEDED", "deadline passed after 2", attempts=2)
    )
    assert slow.events(o.RunFailed)[0].reason is Reason.MODEL_FAILED
