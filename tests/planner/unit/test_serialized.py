"""The cheaper encoding path of a step: cached snapshot bytes, copies, timestamps, headers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import model_pb2, planner_state_pb2, runs_pb2
from stepline_planner import convert, serialized
from stepline_planner import outputs as o
from stepline_planner.copies import replace
from stepline_planner.inputs import ModelCompleted
from stepline_planner.replay import RecordedCall, Replay, Served
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
)
from stepline_runtime.codec import decode, encode_serialized, type_name
from stepline_runtime.headers import EventHeaders
from stepline_runtime.records import InboundRecord
from tests.planner.unit.helpers import Driver, context, profile


def _run() -> Run:
    d = Driver(context(profile(delegates=("a",))))
    d.start(budget=Decimal("0.5"), metadata={"k": "v"})
    d.feed(
        ModelCompleted(
            "r1:1", "r1:1:1", "thinking", (ToolCall("m1", "pay", "{}"),), cost=Decimal("0.01")
        )
    )
    run = d.state
    # A long, non-ASCII message: its entry needs a multi-byte length prefix.
    return replace(run, transcript=(*run.transcript, Message(Role.TOOL, "é" * 300, (), "m1")))


def test_snapshot_bytes_parse_to_the_same_run_state_as_the_full_conversion() -> None:
    run = _run()
    new = serialized.run_state_bytes(run)
    old = convert.run_to_proto(run).SerializeToString(deterministic=True)
    assert planner_state_pb2.RunState.FromString(new) == planner_state_pb2.RunState.FromString(old)
    # Restore reads either: both become the same run, transcript order kept.
    assert convert.run_from_proto(planner_state_pb2.RunState.FromString(new), "USD") == run
    assert convert.run_from_proto(planner_state_pb2.RunState.FromString(old), "USD") == run
    # Cached entries serve the next step's snapshot, which appends to the same transcript.
    longer = replace(run, transcript=(*run.transcript, Message(Role.USER, "more")))
    assert (
        convert.run_from_proto(
            planner_state_pb2.RunState.FromString(serialized.run_state_bytes(longer)), "USD"
        )
        == longer
    )
    empty = replace(run, transcript=())
    assert planner_state_pb2.RunState.FromString(
        serialized.run_state_bytes(empty)
    ) == convert.run_to_proto(empty)


def test_model_request_bytes_parse_to_the_same_request_as_the_full_conversion() -> None:
    run = _run()
    request = o.ModelCallRequested(
        run_id=run.run_id,
        tenant_id=run.tenant_id,
        agent=run.agent,
        step_id="r1:3",
        call_id="r1:3:1",
        route="r",
        messages=run.transcript,
        tools=(o.ToolSpec("echo", "Echo the arguments", '{"type":"object"}'),),
        tools_allowed=True,
        max_output_tokens=100,
        deadline=run.started_at,
        max_cost=Decimal("0.25"),
        currency="USD",
        metadata={"k": "v"},
        requested_at=run.started_at,
    )
    parsed = model_pb2.ModelCallRequested.FromString(serialized.model_request_bytes(request))
    assert parsed == convert.model_request_to_proto(request)
    assert [m.content for m in parsed.messages] == [m.content for m in run.transcript]


def test_snapshot_records_decode_like_any_changelog_record() -> None:
    run = _run()
    out = encode_serialized(
        "state",
        run.run_id,
        serialized.run_state_bytes(run),
        type_name(planner_state_pb2.RunState),
        event_id="e",
        source="planner",
    )
    record = InboundRecord("state", 0, 0, out.key, out.value, out.headers)
    message = decode(record, [planner_state_pb2.RunState]).message
    assert message == convert.run_to_proto(run)


def test_fast_replace_equals_dataclasses_replace() -> None:
    run = _run()
    changes = {"step_ordinal": 7, "answer": "done", "budget": None, "transcript": ()}
    assert replace(run, **changes) == dataclasses.replace(run, **changes)  # type: ignore[arg-type]
    assert replace(run) == run
    assert replace(run) is not run
    with pytest.raises(TypeError):
        replace(run, no_such_field=1)


def test_fast_replace_leaves_post_init_classes_to_dataclasses() -> None:
    @dataclasses.dataclass(frozen=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("negative")

    assert replace(Checked(1), n=2) == Checked(2)
    with pytest.raises(ValueError, match="negative"):
        replace(Checked(1), n=-1)


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC),
        datetime(1960, 1, 1, 0, 0, 0, 1, tzinfo=UTC),  # before the epoch: negative seconds
        datetime(2026, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 3, 1, 1, 30, 0, 999999),  # naive: local time
    ],
)
def test_timestamps_match_from_datetime(when: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(when.astimezone(UTC))
    assert convert._ts(when) == expected


@pytest.mark.parametrize(
    "length",
    [
        timedelta(0),
        timedelta(microseconds=1),
        timedelta(days=2, seconds=3, microseconds=4),
        timedelta(microseconds=-1),  # negative: nanos take the sign of seconds
        timedelta(seconds=-90, microseconds=250),
    ],
)
def test_durations_match_from_timedelta(length: timedelta) -> None:
    expected = Duration()
    expected.FromTimedelta(length)
    assert convert._duration(length) == expected


def test_header_times_keep_their_offset_when_instants_are_equal() -> None:
    utc = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    plus_one = utc.astimezone(timezone(timedelta(hours=1)))
    first = dict(EventHeaders("e", "t", "s", time=utc).encode())
    second = dict(EventHeaders("e", "t", "s", time=plus_one).encode())
    assert first["ce_time"] == b"2026-11-01T12:00:00.000+00:00"
    assert second["ce_time"] == b"2026-11-01T13:00:00.000+01:00"


# --- every field through the cached parts ----------------------------------------------------


def _rich_run() -> Run:
    """A run with every field away from its default, so a field a part forgets shows."""
    when = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    step = PendingStep(
        "r1:4",
        "r1:4:2",
        StepKind.TOOL,
        when + timedelta(seconds=30),
        when,
        tool="pay",
        arguments_json='{"to": "x"}',
        model_tool_call_id="m4",
        awaiting_approval=True,
        approval_id="r1:4:2/approval",
        approval_deadline=when + timedelta(seconds=60),
        idempotency_key="r1:4:2",
        reserved=Decimal("0.002"),
    )
    unsettled = dataclasses.replace(step, step_id="r1:3", call_id="r1:3:1", awaiting_approval=False)
    return Run(
        run_id="r1",
        tenant_id="t1",
        agent="a",
        status=Status.WRAPPING_UP,
        goal="do the thing",
        currency="USD",
        started_at=when,
        updated_at=when + timedelta(seconds=5),
        session_id="s1",
        transcript=(Message(Role.SYSTEM, "sys"), Message(Role.USER, "do the thing")),
        pending=(step,),
        queued_tool_calls=(ToolCall("m5", "echo", "{}"),),
        step_ordinal=5,
        route="r",
        max_steps=9,
        budget=Decimal("0.5"),
        deadline=when + timedelta(minutes=10),
        usage=Usage(10, 20, 3, 2, 1),
        cost=Decimal("0.01"),
        parent_run_id="p1",
        child_run_ids=("r1:2:1",),
        metadata={"k": "v"},
        idempotency_key="idem",
        submitted_by="someone",
        finished_at=when + timedelta(seconds=9),
        last_event_sequence=12,
        answer="partial",
        failure_reason=Reason.MAX_STEPS,
        failure_message="limit",
        wrap_up_limit=Reason.MAX_STEPS,
        steps_taken=4,
        unsettled=(unsettled,),
        end_held=True,
        failed_step_id="r1:3",
        cancelled_by="run:p1",
        replay=Replay(
            "orig",
            route="r",
            recorded=(RecordedCall("c1", "echo", "{}", "out"),),
            steps_forked=1,
        ),
        replay_used=(0,),
    )


def _defaults() -> dict[str, object]:
    """Each Run field's default (fields without one get a value unlike the rich run's)."""
    values: dict[str, object] = {"status": Status.RUNNING, "updated_at": datetime(2026, 1, 1)}
    for f in dataclasses.fields(Run):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def test_the_rich_run_sets_every_field() -> None:
    rich, defaults = _rich_run(), _defaults()
    same = [n for n, v in defaults.items() if getattr(rich, n) == v]
    assert same == []
    # ... and every field of the changelog record.
    state = convert.run_to_proto(rich)
    assert {f.name for f, _ in state.ListFields()} == set(
        planner_state_pb2.RunState.DESCRIPTOR.fields_by_name
    )


def test_a_snapshot_from_cached_parts_restores_every_field() -> None:
    rich = _rich_run()
    parsed = planner_state_pb2.RunState.FromString(serialized.run_state_bytes(rich))
    assert parsed == convert.run_to_proto(rich)
    assert convert.run_from_proto(parsed, "EUR") == rich
    # Served from the caches a second time, and after a change of the progress only.
    again = replace(rich, steps_taken=5, pending=())
    restored = convert.run_from_proto(
        planner_state_pb2.RunState.FromString(serialized.run_state_bytes(again)), "EUR"
    )
    assert restored == again


def test_the_head_reads_only_the_head_fields() -> None:
    rich = _rich_run()
    others = {n: v for n, v in _defaults().items() if n not in convert.RUN_HEAD_FIELDS}
    plain = replace(rich, **others)
    assert convert.run_head_to_proto(plain) == convert.run_head_to_proto(rich)


def test_a_changed_head_field_is_encoded_afresh() -> None:
    rich = _rich_run()
    serialized.run_state_bytes(rich)  # cached
    for changed in (
        replace(rich, goal="another goal"),  # an equal-looking copy would not do: new objects
        replace(rich, replay=None),
        replace(rich, metadata={"k": "w"}),
    ):
        parsed = planner_state_pb2.RunState.FromString(serialized.run_state_bytes(changed))
        assert convert.run_from_proto(parsed, "USD") == changed


def _events() -> list[o.RunEvent]:
    when = datetime(2026, 11, 1, 12, 0, 0, 250000, tzinfo=UTC)
    calls = (ToolCall("m1", "echo", '{"a": 1}'),)
    bodies: list[o.EventBody] = [
        o.RunQueued("waiting"),
        o.RunQueued(""),  # an empty body is still the event's kind
        o.RunStarted("g", "s", Decimal("0.5"), when, "p", "me", "r", 9, {"k": "v"}),
        o.RunStarted("g", "", None, None, "", "", "r", 9, replay=_rich_run().replay),
        o.StepStarted("r1:1", "r1:1:1", StepKind.MODEL, when, route="r"),
        o.StepStarted("r1:2", "r1:2:1", StepKind.TOOL, when, tool="echo", arguments_json="{}"),
        o.StepCompleted(
            "r1:1",
            "r1:1:1",
            StepKind.MODEL,
            Outcome.SUCCEEDED,
            timedelta(milliseconds=12),
            route="r",
            provider="p",
            model="m",
            deployment="d",
            finish_reason="TOOL_CALLS",
            requested_tools=("echo",),
            usage=Usage(1, 2, 0, 0, 1),
            cost=Decimal("0.001"),
            content="thinking",
            tool_calls=calls,
        ),
        o.StepCompleted(
            "r1:2",
            "r1:2:1",
            StepKind.TOOL,
            Outcome.FAILED,
            timedelta(seconds=-1),
            tool="echo",
            tool_error_kind="TIMED_OUT",
            output_truncated=True,
            error_message="slow",
            output="error",
            model_tool_call_id="m1",
            served=Served.RECORDED,
            recorded_call_id="c1",
        ),
        o.ApprovalRequested("ap", "r1:3", "r1:3:1", "pay", "{}", when),
        o.ApprovalResolved("ap", "r1:3", "r1:3:1", Decision.DENIED, "no", "me", True, True),
        o.DuplicateResultIgnored("r1:2", "r1:2:1", IgnoredReason.STEP_TIMED_OUT, StepKind.TOOL),
        o.DuplicateResultIgnored(
            "r1:2", "r1:2:1", IgnoredReason.RUN_FINISHED, StepKind.TOOL, Decimal("0.2")
        ),
        o.BudgetReserved("r1:1", Decimal("0.01"), Decimal("0.03")),
        o.ChildRunStarted("r1:2:1", "b", "sub-goal", "r1:2"),
        o.WrapUpStarted(Reason.BUDGET_EXCEEDED, "budget"),
        o.RunCompleted("answer", Usage(3, 4), Decimal("0.02"), 3, timedelta(seconds=2)),
        o.RunFailed(Reason.MODEL_FAILED, "down", Usage(), Decimal(0), 1, timedelta(0), "r1:1"),
        o.RunCancelled("stop", "run:p1", True, Usage(), Decimal(0), 2, timedelta(seconds=1)),
    ]
    events = [o.RunEvent("r1", "t1", "a", n, when, "USD", b) for n, b in enumerate(bodies, 1)]
    failed = bodies[-2]
    # A goal refused before it named a tenant or agent; times before the epoch, naive, zero.
    return [
        *events,
        o.RunEvent("r2", "", "", 1, when, "USD", failed),
        o.RunEvent("r3", "t1", "a", 2, datetime(1960, 1, 1, 0, 0, 0, 1, tzinfo=UTC), "", failed),
        o.RunEvent("r4", "t1", "a", 3, datetime(2026, 3, 1, 1, 30, 0, 5), "USD", failed),
        o.RunEvent("r5", "t1", "a", 4, datetime(1970, 1, 1, tzinfo=UTC), "USD", failed),
        o.RunEvent(
            "r6", "t1", "a", 300, when.astimezone(timezone(timedelta(hours=-3))), "USD", failed
        ),
    ]


@pytest.mark.parametrize("event", _events(), ids=lambda e: type(e.body).__name__)
def test_run_event_bytes_are_the_whole_message_serialised(event: o.RunEvent) -> None:
    whole = convert.event_to_proto(event)
    assert serialized.run_event_bytes(event) == whole.SerializeToString(deterministic=True)
    assert whole.WhichOneof("event") is not None


def test_a_step_completed_with_every_field_sets_every_field() -> None:
    (model,) = [
        e.body
        for e in _events()
        if isinstance(e.body, o.StepCompleted) and e.body.kind is StepKind.MODEL
    ]
    (tool,) = [
        e.body
        for e in _events()
        if isinstance(e.body, o.StepCompleted) and e.body.kind is StepKind.TOOL
    ]
    # Every field of one body on the other: the conversion sets what it is given.
    merged = dataclasses.replace(
        model,
        **{
            f.name: getattr(tool, f.name)
            for f in dataclasses.fields(tool)
            if getattr(model, f.name) == f.default and f.default is not dataclasses.MISSING
        },
    )
    event = o.RunEvent("r1", "t1", "a", 1, datetime(2026, 11, 1, tzinfo=UTC), "USD", merged)
    body = convert.event_to_proto(event).step_completed
    assert {f.name for f, _ in body.ListFields()} == set(
        runs_pb2.StepCompleted.DESCRIPTOR.fields_by_name
    )


def test_cached_amounts_are_copied_into_the_messages_that_carry_them() -> None:
    event = o.RunEvent(
        "r1",
        "t1",
        "a",
        1,
        datetime(2026, 11, 1, tzinfo=UTC),
        "USD",
        o.BudgetReserved("s", Decimal("1.5"), Decimal("2")),
    )
    first = convert.event_to_proto(event)
    first.budget_reserved.amount.amount = "9"  # a consumer changing its own message
    again = convert.event_to_proto(event)
    assert again.budget_reserved.amount.amount == "1.5"
