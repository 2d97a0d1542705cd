"""Replays and forks in the pure core: recorded calls answer identical ones, divergence policy."""

from __future__ import annotations

from dataclasses import replace

from stepline_planner import outputs as o
from stepline_planner.inputs import ModelCompleted, ToolCompleted
from stepline_planner.replay import (
    Approvals,
    Divergence,
    Mode,
    RecordedCall,
    Replay,
    Served,
    canonical_arguments,
)
from stepline_planner.replay_convert import replay_from_proto, replay_to_proto
from stepline_planner.state import Message, Outcome, Reason, Role, Status, StepKind, ToolCall, Usage
from tests.planner.unit.helpers import TOOLS, Driver, context

# `search` is read-only (built in, idempotent); `echo` is a side effect; `pay` needs approval.
READ_ONLY_TOOLS = {**TOOLS, "search": replace(TOOLS["search"], source="builtin")}
RECORDED = (
    RecordedCall("orig:2:1", "search", '{"q": "y"}', "found y"),
    RecordedCall("orig:3:1", "echo", '{"x": 1}', "echoed 1"),
    RecordedCall("orig:5:1", "pay", '{"to": "bob"}', "paid bob"),
)


def driver() -> Driver:
    ctx = context()
    return Driver(replace(ctx, tools=READ_ONLY_TOOLS))


def replay(**changes: object) -> Replay:
    return replace(Replay("orig", recorded=RECORDED), **changes)  # type: ignore[arg-type]


def model_turn(d: Driver, *calls: ToolCall, content: str = "") -> None:
    model = next(p for p in d.state.pending if p.kind is StepKind.MODEL)
    finish = "TOOL_CALLS" if calls else "STOP"
    d.feed(ModelCompleted(model.step_id, model.call_id, content, calls, finish, Usage(10, 5)))


def served(d: Driver) -> list[tuple[str, Served, str]]:
    return [
        (s.tool, s.served, s.recorded_call_id)
        for s in d.history_events(o.StepCompleted)
        if s.kind is StepKind.TOOL
    ]


def test_identical_calls_are_answered_from_the_record_and_nothing_is_executed() -> None:
    d = driver()
    d.start(run_id="replay-1", replay=replay())
    started = d.history_events(o.RunStarted)[0]
    assert started.replay is not None
    assert started.replay.original_run_id == "orig"
    # Key order differs from the record: still the same call.
    model_turn(d, ToolCall("m1", "search", '{"q":"y"}'), ToolCall("m2", "echo", '{"x":1}'))
    assert not [x for x in d.history if isinstance(x, o.ToolCallRequested)]
    assert served(d) == [
        ("search", Served.RECORDED, "orig:2:1"),
        ("echo", Served.RECORDED, "orig:3:1"),
    ]
    call = d.one(o.ModelCallRequested)  # straight on to the next model turn
    assert call.replay_of == "orig"
    tools = [(m.tool_call_id, m.content) for m in call.messages if m.role is Role.TOOL]
    assert tools == [("m1", "found y"), ("m2", "echoed 1")]
    assert d.state.replay_used == (0, 1)


def test_a_recorded_approval_is_reused_the_call_is_served_without_asking() -> None:
    d = driver()
    d.start(run_id="replay-1", replay=replay())
    model_turn(d, ToolCall("m1", "pay", '{"to": "bob"}'))
    assert not d.history_events(o.ApprovalRequested)
    assert served(d) == [("pay", Served.RECORDED, "orig:5:1")]
    assert d.state.status is Status.RUNNING


def test_a_diverging_side_effect_stops_the_replay_under_stop() -> None:
    d = driver()
    d.start(run_id="replay-1", replay=replay(divergence=Divergence.EXECUTE))
    model_turn(d, ToolCall("m1", "echo", '{"x": 2}'))
    assert not [x for x in d.history if isinstance(x, o.ToolCallRequested)]
    failed = d.history_events(o.RunFailed)[0]
    assert failed.reason is Reason.REPLAY_DIVERGED
    assert failed.step_id == "replay-1:2"
    assert "echo" in failed.message
    assert "nothing was executed" in failed.message
    assert served(d) == [("echo", Served.DIVERGED, "")]


def test_a_repeated_side_effect_beyond_the_record_diverges_a_read_is_served_again() -> None:
    d = driver()
    d.start(run_id="replay-1", replay=replay())
    model_turn(d, ToolCall("m1", "search", '{"q": "y"}'), ToolCall("m2", "echo", '{"x": 1}'))
    model_turn(d, ToolCall("m3", "search", '{"q": "y"}'))
    assert served(d)[-1] == ("search", Served.RECORDED, "orig:2:1")
    model_turn(d, ToolCall("m4", "echo", '{"x": 1}'))
    assert d.state.failure_reason is Reason.REPLAY_DIVERGED


def test_stub_answers_not_executed_and_the_run_goes_on() -> None:
    d = driver()
    d.start(run_id="replay-1", replay=replay(divergence=Divergence.STUB))
    model_turn(d, ToolCall("m1", "echo", '{"x": 9}'))
    assert served(d) == [("echo", Served.STUBBED, "")]
    call = d.one(o.ModelCallRequested)
    assert "not executed in replay" in call.messages[-1].content
    model_turn(d, content="done")
    assert d.state.status is Status.COMPLETED


def test_execute_runs_read_only_tools_and_explicitly_allowed_ones_only() -> None:
    d = driver()
    d.start(run_id="replay-1", replay=replay(divergence=Divergence.EXECUTE, execute_tools=("pay",)))
    model_turn(d, ToolCall("m1", "search", '{"q": "new"}'), ToolCall("m2", "pay", '{"to": "x"}'))
    requested = [x for x in d.history if isinstance(x, o.ToolCallRequested)]
    assert [x.tool for x in requested] == ["search"]  # pay needs approval: denied by policy
    assert requested[0].replay_of == "orig"  # the executor marks its usage with it
    assert served(d) == [("pay", Served.DENIED, "")]
    d.feed(ToolCompleted("replay-1:2", "replay-1:2:1", "new results"))
    assert d.one(o.ModelCallRequested)


def test_approvals_request_policy_asks_a_human_for_an_executed_call() -> None:
    d = driver()
    chosen = replay(
        divergence=Divergence.EXECUTE, execute_tools=("pay",), approvals=Approvals.REQUEST
    )
    d.start(run_id="replay-1", replay=chosen)
    model_turn(d, ToolCall("m1", "pay", '{"to": "x"}'))
    assert d.history_events(o.ApprovalRequested)
    assert d.state.status is Status.AWAITING_APPROVAL


def test_a_replay_needs_a_run_id_of_the_replay_namespace() -> None:
    d = driver()
    d.start(run_id="run-1", replay=replay())
    assert d.state.failure_reason is Reason.INVALID_GOAL
    assert "must start with replay- or fork-" in d.state.failure_message


def test_route_and_prompt_overrides() -> None:
    d = driver()
    d.start(run_id="replay-1", replay=replay(route="r", system_prompt="Be brief."))
    call = d.one(o.ModelCallRequested)
    assert call.messages[0].content == "Be brief."
    d2 = driver()
    d2.start(run_id="replay-2", replay=replay(route="nope"))
    assert d2.state.failure_reason is Reason.INVALID_GOAL
    assert "replay route 'nope' is neither a route nor a deployment" in d2.state.failure_message


def test_fork_takes_the_recorded_turns_and_continues_live_from_the_next_step() -> None:
    forked = (
        Message(Role.ASSISTANT, "", tool_calls=(ToolCall("m1", "echo", '{"x": 1}'),)),
        Message(Role.TOOL, "echoed 1", tool_call_id="m1", name="echo"),
    )
    d = driver()
    d.start(
        run_id="fork-1", replay=replay(mode=Mode.FORK, from_step=2, forked=forked, steps_forked=2)
    )
    call = d.one(o.ModelCallRequested)
    assert call.step_id == "fork-1:3"  # steps 1-2 came from the record: no call for them
    assert [m.role for m in call.messages] == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.TOOL]
    assert d.state.steps_taken == 2
    assert d.state.replay is not None
    assert d.state.replay.forked == ()
    # After the fork point the run is live: a new call is executed.
    model_turn(d, ToolCall("m2", "echo", '{"x": 2}'))
    assert [x.tool for x in d.out if isinstance(x, o.ToolCallRequested)] == ["echo"]


def test_the_spec_survives_the_wire_and_arguments_are_canonical() -> None:
    spec = replay(divergence=Divergence.STUB, execute_tools=("a",), approvals=Approvals.REQUEST)
    spec = replace(spec, recorded=(*RECORDED, replace(RECORDED[0], outcome=Outcome.DENIED)))
    assert replay_from_proto(replay_to_proto(spec)) == spec
    assert canonical_arguments('{"b": 1, "a": [1, 2]}') == '{"a":[1,2],"b":1}'
    assert canonical_arguments("not json") == "not json"
