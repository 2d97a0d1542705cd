"""The planner as a subprocess on the real broker, driven by the scripted responder.

One planner and one responder serve every scenario of this module (each scenario is its own
run), in a namespace of their own. The responder publishes every result twice, so every
scenario also proves that duplicates are recorded and never applied.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from stepline.v1 import common_pb2, control_pb2, model_pb2, planner_state_pb2, runs_pb2, tools_pb2
from stepline_runtime.ids import derive_run_id
from stepline_runtime.settings import KafkaSettings
from tests.planner.integration.harness import System, exhausted, kinds, tool

pytestmark = pytest.mark.kafka

ECHO = {"name": "echo", "args": {"n": 1}}
SCRIPT = {
    "three-step": [
        {"tools": [{"name": "echo", "args": {"n": 1}}, {"name": "echo", "args": {"n": 2}}]},
        {"tools": [{"name": "echo", "args": {"n": 3}}]},
        {"answer": "three steps done", "cost": "0.0001"},
    ],
    "approval": [{"tools": [{"name": "pay", "args": {"amount": 100}}]}, {"answer": "paid"}],
    "slow": [{"tools": [{"name": "echo", "args": {"sleep_s": 30}}]}, {"answer": "never"}],
    "dropped": [{"tools": [{"name": "echo", "args": {"drop": True}}]}, {"answer": "moved on"}],
    "dropped-refund": [
        {"tools": [{"name": "refund", "args": {"drop": True}}]},
        {"answer": "checked first"},
    ],
    "spendy": [{"tools": [ECHO], "cost": "0.001"}, {"answer": "unreachable"}],
    "chat": [{"answer": "first answer"}],
    "family:boss": [
        {"tools": [{"name": "delegate", "args": {"agent": "worker", "goal": "sub-task"}}]},
        {"answer": "boss done"},
    ],
    "family:worker": [{"tools": [ECHO]}, {"answer": "child answer"}],
}


@pytest.fixture(scope="module")
async def system(
    kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[System]:
    """Planner + responder in a fresh namespace, shared by this module's scenarios."""
    system = System(kafka, tmp_path_factory.mktemp("planner"), SCRIPT)
    await system.start(
        tools=[tool("echo"), tool("pay", approval=True), tool("refund", idempotent=False)],
        budgets=[exhausted("broke")],
    )
    try:
        yield system
    finally:
        await system.stop()


def body(event: runs_pb2.RunEvent) -> object:
    """The oneof payload of a run event."""
    return getattr(event, event.WhichOneof("event") or "")


def of(events: list[runs_pb2.RunEvent], kind: str) -> list[object]:
    """Payloads of one kind."""
    return [body(e) for e in events if e.WhichOneof("event") == kind]


async def latest_state(system: System, run_id: str) -> planner_state_pb2.RunState:
    """The run's newest changelog record."""
    found = [
        v for k, v, _ in await system.read("stepline.planner.state.v1") if k == run_id.encode()
    ]
    assert found
    assert found[-1] is not None
    return planner_state_pb2.RunState.FromString(found[-1])


def assert_history_is_clean(
    events: list[runs_pb2.RunEvent], state: planner_state_pb2.RunState
) -> None:
    """Gap-free sequences, one terminal event, no transcript entry twice."""
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    terminal = [k for k in kinds(events) if k in ("completed", "failed", "cancelled")]
    assert len(terminal) == 1
    answered = [
        m.tool_call_id for m in state.transcript if m.role == common_pb2.ChatMessage.ROLE_TOOL
    ]
    assert len(answered) == len(set(answered))


async def test_three_step_run_with_parallel_tool_calls(system: System) -> None:
    await system.submit("three", "worker", "three-step")
    events = await system.terminal("three")
    assert of(events, "completed")[0].answer == "three steps done"  # type: ignore[attr-defined]
    started = [(s.step_id, s.kind, s.tool) for s in of(events, "step_started")]  # type: ignore[attr-defined]
    assert [s[0] for s in started] == [f"three:{i}" for i in range(1, 7)]
    assert [s[2] for s in started] == ["", "echo", "echo", "", "echo", ""]
    # Fan-out: both tool steps of the first turn were requested before either completed.
    order = [
        (k, getattr(body(e), "step_id", "")) for e, k in zip(events, kinds(events), strict=True)
    ]
    assert order.index(("step_started", "three:3")) < order.index(("step_completed", "three:2"))
    assert of(events, "duplicate_result_ignored"), "the responder's duplicates must be recorded"
    done = [c for c in of(events, "step_completed") if c.kind == runs_pb2.STEP_KIND_MODEL]  # type: ignore[attr-defined]
    assert all(c.provider == "scripted" and c.usage.input_tokens == 10 for c in done)  # type: ignore[attr-defined]
    state = await latest_state(system, "three")
    assert_history_is_clean(events, state)
    assert state.steps_taken == 6


async def _approval_run(
    system: System, run_id: str, agent: str = "worker"
) -> runs_pb2.ApprovalRequested:
    await system.submit(run_id, agent, "approval")
    events = await system.wait_for(run_id, lambda es: "approval_requested" in kinds(es), "approval")
    asked = of(events, "approval_requested")[0]
    assert isinstance(asked, runs_pb2.ApprovalRequested)
    return asked


async def test_approval_granted_with_edited_arguments(system: System) -> None:
    asked = await _approval_run(system, "approve")
    decision = control_pb2.ApprovalDecided(
        approval_id=asked.approval_id,
        call_id=asked.call_id,
        decision=control_pb2.APPROVAL_DECISION_APPROVED,
        edited_arguments_json='{"amount": 5}',
        decided_by="alice",
    )
    await system.control("approve", approval_decided=decision)
    events = await system.terminal("approve")
    assert of(events, "completed")[0].answer == "paid"  # type: ignore[attr-defined]
    assert of(events, "approval_resolved")[0].arguments_edited  # type: ignore[attr-defined]
    sent = [v for k, v, _ in await system.read("stepline.tool.requests.v1") if k == b"approve"]
    assert len(sent) == 1
    from stepline.v1 import tools_pb2

    assert json.loads(tools_pb2.ToolCallRequested.FromString(sent[0] or b"").arguments_json) == {
        "amount": 5
    }


async def test_approval_denied(system: System) -> None:
    asked = await _approval_run(system, "deny")
    decision = control_pb2.ApprovalDecided(
        approval_id=asked.approval_id, decision=control_pb2.APPROVAL_DECISION_DENIED, reason="no"
    )
    await system.control("deny", approval_decided=decision)
    events = await system.terminal("deny")
    assert "completed" in kinds(events)
    tool_steps = [c for c in of(events, "step_completed") if c.kind == runs_pb2.STEP_KIND_TOOL]  # type: ignore[attr-defined]
    assert [c.outcome for c in tool_steps] == [runs_pb2.STEP_OUTCOME_DENIED]  # type: ignore[attr-defined]
    assert not [k for k, _, _ in await system.read("stepline.tool.requests.v1") if k == b"deny"]


async def test_approval_timed_out(system: System) -> None:
    await _approval_run(system, "unanswered", agent="hasty")
    events = await system.terminal("unanswered")
    resolved = of(events, "approval_resolved")[0]
    assert resolved.timed_out  # type: ignore[attr-defined]
    assert resolved.decision == control_pb2.APPROVAL_DECISION_DENIED  # type: ignore[attr-defined]
    assert "completed" in kinds(events)


async def test_cancellation_mid_run(system: System) -> None:
    await system.submit("cancel-me", "worker", "slow")
    await system.wait_for(
        "cancel-me", lambda es: sum(k == "step_started" for k in kinds(es)) == 2, "the tool step"
    )
    await system.control(
        "cancel-me",
        run_cancel_requested=control_pb2.RunCancelRequested(reason="stop", requested_by="bob"),
    )
    events = await system.terminal("cancel-me")
    cancelled = of(events, "cancelled")[0]
    assert (cancelled.reason, cancelled.requested_by) == ("stop", "bob")  # type: ignore[attr-defined]
    requests = [
        h for k, _, h in await system.read("stepline.tool.requests.v1") if k == b"cancel-me"
    ]
    types = [h["ce_type"].decode() for h in requests]
    assert types == ["stepline.v1.ToolCallRequested", "stepline.v1.ToolCallsCancelRequested"]


async def test_step_deadline_becomes_a_result_and_run_deadline_fails(system: System) -> None:
    await system.submit("step-timeout", "hasty", "dropped")
    await system.submit("run-timeout", "sprinter", "slow")
    events = await system.terminal("step-timeout")
    tool_steps = [c for c in of(events, "step_completed") if c.kind == runs_pb2.STEP_KIND_TOOL]  # type: ignore[attr-defined]
    assert tool_steps[0].outcome == runs_pb2.STEP_OUTCOME_TIMED_OUT  # type: ignore[attr-defined]
    assert of(events, "completed")[0].answer == "moved on"  # type: ignore[attr-defined]
    events = await system.terminal("run-timeout")
    assert of(events, "failed")[0].reason == runs_pb2.RUN_FAILURE_REASON_DEADLINE_EXCEEDED  # type: ignore[attr-defined]


async def test_an_expired_call_of_a_non_idempotent_tool_is_an_unknown_outcome(
    system: System,
) -> None:
    # Issue 19 defect 1: the request was sent, no result came back before the step deadline.
    await system.submit("refund-lost", "hasty", "dropped-refund")
    events = await system.terminal("refund-lost")
    [step] = [c for c in of(events, "step_completed") if c.kind == runs_pb2.STEP_KIND_TOOL]  # type: ignore[attr-defined]
    assert step.outcome == runs_pb2.STEP_OUTCOME_FAILED  # type: ignore[attr-defined]
    assert step.tool_error_kind == tools_pb2.TOOL_CALL_ERROR_KIND_OUTCOME_UNKNOWN  # type: ignore[attr-defined]
    assert "may have run" in step.error_message  # type: ignore[attr-defined]
    state = await latest_state(system, "refund-lost")
    told = [m.content for m in state.transcript if m.role == common_pb2.ChatMessage.ROLE_TOOL]
    assert told[0].startswith("error (OUTCOME_UNKNOWN):")
    assert "TIMED_OUT" not in told[0]


async def test_budget_exhaustion(system: System) -> None:
    # Turn 1 costs 0.001 of 0.0012; a full turn (up to 1000 output tokens) no longer fits.
    await system.submit(
        "spender", "worker", "spendy", budget=common_pb2.Money(currency="USD", amount="0.0012")
    )
    await system.submit("broke-run", "worker", "chat", tenant_id="broke")
    events = await system.terminal("spender")
    assert of(events, "wrap_up_started")[0].limit == runs_pb2.RUN_FAILURE_REASON_BUDGET_EXCEEDED  # type: ignore[attr-defined]
    done = of(events, "completed")[0]
    assert done.limit_reached == runs_pb2.RUN_FAILURE_REASON_BUDGET_EXCEEDED  # type: ignore[attr-defined]
    assert done.answer == "wrap-up: 1 tool results"  # type: ignore[attr-defined]
    events = await system.terminal("broke-run")
    assert of(events, "failed")[0].reason == runs_pb2.RUN_FAILURE_REASON_BUDGET_EXCEEDED  # type: ignore[attr-defined]


async def test_session_with_two_goals(system: System) -> None:
    await system.submit("s-first", "worker", "chat", session_id="s1", goal="my name is Ada")
    await system.submit("s-second", "worker", "chat", session_id="s1", goal="what is my name?")
    first = await system.terminal("s-first")
    second = await system.terminal("s-second")
    assert "completed" in kinds(first)
    assert "completed" in kinds(second)
    # The second run started only after the first ended, and saw its conversation.
    assert kinds(second)[:2] == ["queued", "started"]
    assert second[1].occurred_at.ToDatetime() >= first[-1].occurred_at.ToDatetime()
    requests = [
        v for k, v, _ in await system.read("stepline.model.requests.v1") if k == b"s-second"
    ]
    messages = [
        m.content for m in model_pb2.ModelCallRequested.FromString(requests[0] or b"").messages
    ]
    assert messages[1:] == ["my name is Ada", "first answer", "what is my name?"]


async def test_parent_with_a_child_run(system: System) -> None:
    await system.submit("parent", "boss", "family")
    events = await system.terminal("parent")
    child_id = of(events, "child_run_started")[0].child_run_id  # type: ignore[attr-defined]
    assert of(events, "completed")[0].answer == "boss done"  # type: ignore[attr-defined]
    child = await system.terminal(child_id)
    assert child[0].started.parent_run_id == "parent"
    assert of(child, "completed")[0].answer == "child answer"  # type: ignore[attr-defined]
    requests = [v for k, v, _ in await system.read("stepline.model.requests.v1") if k == b"parent"]
    last = model_pb2.ModelCallRequested.FromString(requests[-1] or b"")
    assert last.messages[-1].content == "child answer"


async def test_bad_goal_and_idempotent_resubmission(system: System) -> None:
    await system.submit("nobody", "ghost", "chat")
    events = await system.terminal("nobody")
    assert of(events, "failed")[0].reason == runs_pb2.RUN_FAILURE_REASON_UNKNOWN_AGENT  # type: ignore[attr-defined]
    await system.submit("retry-1", "worker", "chat", idempotency_key="order-7")
    await system.submit("retry-2", "worker", "chat", idempotency_key="order-7")
    run_id = derive_run_id("acme", "order-7")
    events = await system.terminal(run_id)
    # Both copies get forwarded under the derived id; once both were processed, still one run.
    for _ in range(100):
        forwarded = [
            k for k, _, _ in await system.read("stepline.goals.v1") if k == run_id.encode()
        ]
        if len(forwarded) == 2:
            break
    assert len(forwarded) == 2
    await system.wait_consumed("stepline.goals.v1", run_id)
    assert kinds(system.events[run_id]).count("started") == 1
    assert not system.events["retry-1"]
    assert not system.events["retry-2"]
    assert_history_is_clean(events, await latest_state(system, run_id))
