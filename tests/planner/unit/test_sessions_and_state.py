"""Sessions, transcript bounds, the changelog format and the handler around the core."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

from stepline.v1 import common_pb2, control_pb2, goals_pb2, model_pb2, planner_state_pb2, runs_pb2
from stepline_planner import convert
from stepline_planner import outputs as o
from stepline_planner.decide import SETTLE_WINDOW
from stepline_planner.handlers import PlannerHandler, PlannerTopics
from stepline_planner.inputs import ModelCompleted, ModelFailed, SessionGranted, Tick, ToolCompleted
from stepline_planner.profiles import SessionBusyPolicy
from stepline_planner.sessions import decide_session
from stepline_planner.state import Message, Role, Status, ToolCall
from stepline_planner.tables import InMemoryTables
from stepline_planner.transcript import bound_memory, compact, estimate_tokens
from stepline_runtime.codec import encode
from stepline_runtime.records import InboundRecord
from tests.planner.unit.helpers import T0, TOOLS, Driver, context, profile


def test_session_goal_waits_for_its_turn_and_hands_memory_back() -> None:
    d = Driver()
    d.start(session_id="s1")
    assert d.state.status is Status.QUEUED
    assert d.one(o.SessionTurnRequested).session_id == "s1"
    memory = (Message(Role.USER, "my name is Ada"), Message(Role.ASSISTANT, "hello Ada"))
    d.feed(SessionGranted(memory))
    call = d.one(o.ModelCallRequested)
    assert [m.content for m in call.messages[1:]] == ["my name is Ada", "hello Ada", "do the thing"]
    d.feed(ModelCompleted("r1:1", "r1:1:1", "done, Ada"))
    ended = d.one(o.SessionTurnEnded)
    assert ended.memory_updated
    assert [m.content for m in ended.memory][-2:] == ["do the thing", "done, Ada"]


def test_session_owner_grants_queues_and_passes_on() -> None:
    profiles = context().profiles
    s, out = decide_session(None, o.SessionTurnRequested("t1", "s1", "r1"), T0, profiles)
    assert out == [o.SessionTurnGranted("t1", "s1", "r1", ())]
    s, out = decide_session(s, o.SessionTurnRequested("t1", "s1", "r2"), T0, profiles)
    assert (out, s.queued_run_ids) == ([], ("r2",))
    memory = (Message(Role.USER, "q"), Message(Role.ASSISTANT, "a"))
    s, out = decide_session(s, o.SessionTurnEnded("t1", "s1", "r1", True, memory), T0, profiles)
    assert out == [o.SessionTurnGranted("t1", "s1", "r2", memory)]
    assert (s.active_run_id, s.queued_run_ids) == ("r2", ())
    # A run that failed leaves the memory as it was.
    s, out = decide_session(s, o.SessionTurnEnded("t1", "s1", "r2", False), T0, profiles)
    assert (s.active_run_id, s.memory, out) == ("", memory, [])


def test_busy_session_rejects_when_configured() -> None:
    profiles = context(session_busy=SessionBusyPolicy.REJECT).profiles
    s, _ = decide_session(None, o.SessionTurnRequested("t1", "s1", "r1"), T0, profiles)
    _, out = decide_session(s, o.SessionTurnRequested("t1", "s1", "r2"), T0, profiles)
    assert isinstance(out[0], o.SessionTurnRejected)


def test_compaction_keeps_system_goal_and_whole_turns() -> None:
    call = ToolCall("c1", "echo", "{}")
    old = [Message(Role.USER, "old question " * 50), Message(Role.ASSISTANT, "old answer " * 50)]
    turn = [
        Message(Role.ASSISTANT, "", (call,)),
        Message(Role.TOOL, "result " * 50, tool_call_id="c1"),
    ]
    messages = [Message(Role.SYSTEM, "sys"), *old, Message(Role.USER, "goal"), *turn, *turn]
    compacted = compact(messages, 200)
    assert estimate_tokens(compacted) <= 200
    assert compacted[0].role is Role.SYSTEM
    assert "compacted: 4 messages omitted" in compacted[0].content
    assert [m.content for m in compacted[1:2]] == ["goal"]
    # Every tool result still follows the assistant message that asked for it.
    assert compacted[2].tool_calls
    assert compacted[3].role is Role.TOOL


def test_session_memory_is_bounded_to_whole_user_turns() -> None:
    memory = [
        Message(Role.USER, "1"),
        Message(Role.ASSISTANT, "2"),
        Message(Role.USER, "3"),
        Message(Role.ASSISTANT, "4"),
    ]
    assert [m.content for m in bound_memory(memory, 3)] == ["3", "4"]


def test_run_state_round_trips_through_the_changelog_format() -> None:
    d = Driver(context(profile(delegates=("a",))))
    d.start(budget=Decimal("0.5"), metadata={"k": "v"})
    d.feed(
        ModelCompleted("r1:1", "r1:1:1", "", (ToolCall("m1", "pay", "{}"),), cost=Decimal("0.01"))
    )
    run = d.state
    assert convert.run_from_proto(convert.run_to_proto(run), "USD") == run
    held = replace(
        run,
        unsettled=(replace(run.pending[0], deadline=run.started_at),),
        end_held=True,
        failed_step_id="r1:2",
        cancelled_by="alice",
    )
    assert convert.run_from_proto(convert.run_to_proto(held), "USD") == held


def _handler(clock: list[object]) -> tuple[PlannerHandler, PlannerTopics]:
    topics = PlannerTopics("g", "c", "mreq", "mres", "treq", "tres", "runs", "state")
    profiles = context(profile(), finished_retention_s=60).profiles
    handler = PlannerHandler(
        topics,
        profiles,
        InMemoryTables(TOOLS),
        {},
        clock=lambda: clock[0],  # type: ignore[arg-type,return-value]
    )
    return handler, topics


def _record(topic: str, key: str, message: object, offset: int = 0) -> InboundRecord:
    out = encode(topic, key, message, event_id="e", source="test")  # type: ignore[arg-type]
    return InboundRecord(topic, 0, offset, out.key, out.value, out.headers)


async def test_handler_restores_state_and_tombstones_finished_runs() -> None:
    clock: list[object] = [T0]
    handler, topics = _handler(clock)
    goal = goals_pb2.GoalSubmitted(run_id="r1", tenant_id="t1", agent="a", goal="hi")
    first = await handler.handle(_record(topics.goals, "r1", goal))
    assert {r.topic for r in first} == {"runs", "mreq", "state"}
    state = [r for r in first if r.topic == "state"]
    # A fresh handler restored from the changelog picks up where the first left off.
    restored, _ = _handler(clock)
    await restored.restore(
        0, [InboundRecord("state", 0, 0, r.key, r.value, r.headers) for r in state]
    )
    result = model_pb2.ModelCallResult(
        run_id="r1",
        step_id="r1:1",
        call_id="r1:1:1",
        completed=model_pb2.ModelCallCompleted(content="bye"),
    )
    outs = await restored.handle(_record(topics.model_results, "r1", result))
    changelog = next(r for r in outs if r.topic == "state")
    saved = planner_state_pb2.RunState.FromString(changelog.value or b"")
    assert saved.answer == "bye"
    assert await restored.tick(0, T0 + timedelta(seconds=30)) == []
    clock[0] = T0 + timedelta(seconds=61)
    tombstones = await restored.tick(0, T0 + timedelta(seconds=61))
    assert [(r.topic, r.key, r.value) for r in tombstones] == [("state", b"r1", None)]


async def test_handler_timer_releases_a_held_end_instead_of_tombstoning_it() -> None:
    clock: list[object] = [T0]
    topics = PlannerTopics("g", "c", "mreq", "mres", "treq", "tres", "runs", "state")
    profiles = context(profile(), finished_retention_s=60).profiles
    handler = PlannerHandler(
        topics,
        profiles,
        InMemoryTables(TOOLS),
        {"echo": Decimal("0.25")},
        clock=lambda: clock[0],  # type: ignore[arg-type,return-value]
    )
    goal = goals_pb2.GoalSubmitted(run_id="r1", tenant_id="t1", agent="a", goal="hi")
    await handler.handle(_record(topics.goals, "r1", goal))
    wants_echo = model_pb2.ModelCallResult(
        run_id="r1",
        step_id="r1:1",
        call_id="r1:1:1",
        completed=model_pb2.ModelCallCompleted(
            tool_calls=[common_pb2.ToolCall(call_id="m1", name="echo", arguments_json="{}")]
        ),
    )
    await handler.handle(_record(topics.model_results, "r1", wants_echo, 1))
    cancel = control_pb2.ControlCommand(
        run_id="r1",
        tenant_id="t1",
        run_cancel_requested=control_pb2.RunCancelRequested(reason="stop", requested_by="bob"),
    )
    held = await handler.handle(_record(topics.control, "r1", cancel, 2))
    kinds = [
        runs_pb2.RunEvent.FromString(r.value or b"").WhichOneof("event")
        for r in held
        if r.topic == "runs"
    ]
    assert "cancelled" not in kinds  # the priced echo call may still be billed
    # The settle window passes with no result: the end is released, the state is kept.
    at = T0 + SETTLE_WINDOW + timedelta(seconds=1)
    clock[0] = at
    released = await handler.tick(0, at)
    events = [runs_pb2.RunEvent.FromString(r.value or b"") for r in released if r.topic == "runs"]
    assert [e.WhichOneof("event") for e in events] == ["cancelled"]
    assert events[0].cancelled.requested_by == "bob"
    assert all(r.value is not None for r in released)


async def test_handler_refuses_records_keyed_by_another_run() -> None:
    import pytest

    from stepline_runtime.codec import InvalidRecordError

    handler, topics = _handler([T0])
    result = ToolCompleted("r1:2", "r1:2:1", "x")
    assert result.output == "x"
    goal = goals_pb2.GoalSubmitted(run_id="r1", tenant_id="t1", agent="a", goal="hi")
    with pytest.raises(InvalidRecordError):
        await handler.handle(_record(topics.goals, "wrong-key", goal))


def test_shipped_agents_file_loads_against_the_price_book() -> None:
    from stepline_planner import profiles
    from stepline_pricebook import PriceBook

    loaded = profiles.load(PriceBook.load(), profiles.default_path())
    assert {"assistant", "researcher", "local"} <= set(loaded.agents)
    assert loaded.agents["assistant"].delegates == ("researcher",)


def test_a_retried_step_round_trips_and_a_failure_carries_its_attempt_count() -> None:
    d = Driver()
    d.start()
    d.feed(Tick(), after_s=61)  # the model step's deadline: retried as call r1:1:2
    restored = convert.run_from_proto(convert.run_to_proto(d.state), "USD")
    assert restored == d.state
    assert restored.pending[0].attempt == 2
    failed = model_pb2.ModelCallResult(
        run_id="r1",
        step_id="r1:1",
        call_id="r1:1:2",
        failed=model_pb2.ModelCallFailed(
            kind=model_pb2.MODEL_CALL_ERROR_KIND_DEADLINE_EXCEEDED,
            attempts=[model_pb2.ModelAttempt(), model_pb2.ModelAttempt()],
        ),
    )
    event = convert.model_result_from_proto(failed)
    assert isinstance(event, ModelFailed)
    assert (event.kind, event.attempts) == ("DEADLINE_EXCEEDED", 2)


def test_an_agent_naming_a_tool_no_model_can_be_offered_is_refused() -> None:
    import pytest

    from stepline_planner import profiles
    from stepline_pricebook import PriceBook
    from stepline_routes import load_routes

    text = """
[agents.a]
system_prompt = "s"
route = "local"
tools = ["calculator", "everything.get-sum"]
"""
    book, routes = PriceBook.load(), load_routes()
    with pytest.raises(profiles.ProfilesError, match=r"tools \['everything.get-sum'\]"):
        profiles.parse(text, book, routes)
    ok = text.replace("everything.get-sum", "everything__get-sum")
    assert profiles.parse(ok, book, routes).agents["a"].tools[1] == "everything__get-sum"
