"""The cheaper encoding path of a step: cached snapshot bytes, copies, timestamps, headers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import model_pb2, planner_state_pb2
from stepline_planner import convert, serialized
from stepline_planner import outputs as o
from stepline_planner.copies import replace
from stepline_planner.inputs import ModelCompleted
from stepline_planner.state import Message, Role, Run, ToolCall
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
