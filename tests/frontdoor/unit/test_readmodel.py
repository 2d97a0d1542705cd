"""The pure projection: what each run event does to the run, its timeline and its approvals."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from stepline.v1 import model_pb2
from stepline_frontdoor.convert import attempt_row, run_fact
from stepline_frontdoor.readmodel import (
    ApprovalRow,
    ApprovalStatus,
    Projection,
    RunRow,
    RunStatus,
    project,
)
from stepline_frontdoor.reports import CircuitState, Granularity, agent_spend, provider_health
from tests.frontdoor.factories import T0, RunScript, model_attempt


def _fold(script: RunScript) -> tuple[RunRow, dict[str, ApprovalRow], list[Projection]]:
    run: RunRow | None = None
    approvals: dict[str, ApprovalRow] = {}
    projections = []
    for event in script.events:
        fact = run_fact(event, T0)
        p = project(run, fact, approvals.get(fact.approval_id))
        projections.append(p)
        if p.run is not None:
            run = p.run
        for a in (p.approval, p.resolved):
            if a is not None:
                approvals[a.approval_id] = a
    assert run is not None
    return run, approvals, projections


def test_a_started_run_is_running_with_its_goal_and_route() -> None:
    run, _, [p] = _fold(RunScript("r1").started(goal="refund order 7"))
    assert run.status is RunStatus.RUNNING
    assert (run.goal, run.route, run.tenant_id, run.agent) == (
        "refund order 7", "default", "acme", "support",
    )  # fmt: skip
    assert p.event is not None
    assert p.event.body["goal"] == "refund order 7"


def test_model_steps_add_up_steps_cost_and_tokens_until_the_final_total_replaces_them() -> None:
    script = RunScript("r1").started().model_step(1, "0.001").model_step(2, "0.0015")
    run, _, _ = _fold(script)
    assert (run.steps, run.cost, run.input_tokens) == (2, Decimal("0.0025"), 200)
    run, _, _ = _fold(script.completed(answer="refunded", cost="0.003"))
    assert run.status is RunStatus.COMPLETED
    assert (run.answer, run.cost, run.currency) == ("refunded", Decimal("0.003"), "USD")
    assert run.finished_at == T0 + timedelta(seconds=len(script.events))


def test_an_approval_pauses_the_run_until_it_is_decided() -> None:
    run, approvals, _ = _fold(RunScript("r1").started().approval("a1"))
    assert run.status is RunStatus.AWAITING_APPROVAL
    assert run.pending_approvals == 1
    assert approvals["a1"].status is ApprovalStatus.PENDING
    assert approvals["a1"].arguments_json == '{"to": "ann@example.com"}'

    run, approvals, _ = _fold(
        RunScript("r1").started().approval("a1").resolved("a1", approve=False, reason="no")
    )
    assert run.status is RunStatus.RUNNING
    assert run.pending_approvals == 0
    assert approvals["a1"].status is ApprovalStatus.DENIED
    assert (approvals["a1"].reason, approvals["a1"].decided_by) == ("no", "alice")


def test_one_of_two_parallel_approvals_decided_leaves_the_run_waiting() -> None:
    run, approvals, _ = _fold(
        RunScript("r1").started().approval("a1").approval("a2").resolved("a1", approve=True)
    )
    assert run.status is RunStatus.AWAITING_APPROVAL
    assert run.pending_approvals == 1
    assert approvals["a1"].status is ApprovalStatus.APPROVED


def test_a_terminal_event_closes_what_is_still_pending() -> None:
    _, _, projections = _fold(RunScript("r1").started().approval("a1").failed())
    assert projections[-1].close_pending
    assert projections[-1].run is not None
    assert projections[-1].run.status is RunStatus.FAILED
    assert projections[-1].run.failure_reason == "model_failed"
    assert projections[-1].run.pending_approvals == 0


def test_an_event_already_folded_changes_nothing() -> None:
    script = RunScript("r1").started().model_step(1)
    run, _, _ = _fold(script)
    again = project(run, run_fact(script.events[1], T0))
    assert again == Projection(run=None)


def test_agent_spend_groups_attempts_by_window_and_agent() -> None:
    rows = [
        attempt_row(model_attempt("r1", 1, at=T0, cost="0.001"), T0),
        attempt_row(model_attempt("r1", 2, at=T0 + timedelta(minutes=5), cost="0.002"), T0),
        attempt_row(model_attempt("r2", 1, at=T0 + timedelta(hours=1), cost="0.004"), T0),
    ]
    hourly = agent_spend(rows, Granularity.HOUR)
    assert [(s.window_start, s.cost, s.calls) for s in hourly] == [
        (T0, Decimal("0.003"), 2),
        (T0 + timedelta(hours=1), Decimal("0.004"), 1),
    ]
    refused = model_attempt("r3", 1, outcome=model_pb2.MODEL_ATTEMPT_OUTCOME_CIRCUIT_OPEN)
    assert agent_spend([*rows, attempt_row(refused, T0)], Granularity.HOUR) == hourly
    [daily] = agent_spend(rows, Granularity.DAY)
    assert (daily.cost, daily.calls, daily.tenant_id) == (Decimal("0.007"), 3, "acme")


def test_provider_health_shows_an_open_circuit_error_rates_and_latency() -> None:
    overloaded = model_pb2.MODEL_ATTEMPT_OUTCOME_OVERLOADED
    refused = model_pb2.MODEL_ATTEMPT_OUTCOME_CIRCUIT_OPEN
    rows = [
        attempt_row(model_attempt("r1", 1, deployment="primary", outcome=overloaded,
                                  at=T0 + timedelta(seconds=i), latency_ms=50), T0)
        for i in range(5)
    ] + [
        attempt_row(model_attempt("r2", 1, deployment="primary", outcome=refused,
                                  at=T0 + timedelta(seconds=10), latency_ms=0), T0),
        attempt_row(model_attempt("r2", 1, attempt=2, deployment="local",
                                  at=T0 + timedelta(seconds=11), latency_ms=200), T0),
    ]  # fmt: skip
    health = {
        h.deployment: h
        for h in provider_health(rows, now=T0 + timedelta(minutes=1), window=timedelta(minutes=5))
    }
    primary, local = health["primary"], health["local"]
    assert primary.circuit is CircuitState.OPEN
    assert primary.errors_by_outcome == {"circuit_open": 1, "overloaded": 5}
    assert primary.error_rate == 1.0
    assert primary.latency_p50_ms == 50  # refusals are not latencies
    assert local.circuit is CircuitState.CLOSED
    assert local.error_rate == 0
    assert local.latency_p99_ms == 200
