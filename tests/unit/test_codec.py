"""The protobuf codec and header conventions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stepline.v1 import control_pb2, goals_pb2
from stepline_runtime.codec import Cause, InvalidRecordError, decode, encode, type_name
from stepline_runtime.headers import CONTENT_TYPE_PROTOBUF, EventHeaders, HeaderName
from stepline_runtime.records import InboundRecord, OutboundRecord


def _inbound(out: OutboundRecord, **changes: object) -> InboundRecord:
    fields: dict[str, object] = {
        "topic": out.topic,
        "partition": 0,
        "offset": 7,
        "key": out.key,
        "value": out.value,
        "headers": out.headers,
    }
    fields.update(changes)
    return InboundRecord(**fields)  # type: ignore[arg-type]


def _goal() -> goals_pb2.GoalSubmitted:
    return goals_pb2.GoalSubmitted(run_id="run-1", tenant_id="acme", agent="support", goal="hi")


def test_encode_then_decode_round_trips_message_and_headers() -> None:
    when = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    out = encode(
        "stepline.goals.v1",
        "run-1",
        _goal(),
        event_id="run-1/goal",
        source="cli",
        tenant_id="acme",
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        time=when,
    )

    decoded = decode(_inbound(out), [goals_pb2.GoalSubmitted])

    assert out.key == b"run-1"
    assert decoded.message == _goal()
    assert decoded.headers.event_id == "run-1/goal"
    assert decoded.headers.type_name == "stepline.v1.GoalSubmitted"
    assert decoded.headers.tenant_id == "acme"
    assert decoded.headers.time == when
    assert decoded.headers.content_type == CONTENT_TYPE_PROTOBUF
    assert decoded.headers.traceparent.startswith("00-aaaa")


def test_headers_follow_the_cloudevents_kafka_binding() -> None:
    out = encode("t", "k", _goal(), event_id="e1", source="planner")
    names = dict(out.headers)
    assert names[HeaderName.SPEC_VERSION] == b"1.0"
    assert names[HeaderName.TYPE] == type_name(goals_pb2.GoalSubmitted).encode()
    assert names["content-type"] == b"application/x-protobuf"
    # Empty optional headers are not sent at all.
    assert HeaderName.TRACEPARENT not in names


def test_truncated_bytes_are_undecodable() -> None:
    out = encode("t", "k", _goal(), event_id="e", source="s")
    assert out.value is not None
    with pytest.raises(InvalidRecordError) as refused:
        decode(_inbound(out, value=out.value[:-3]), [goals_pb2.GoalSubmitted])
    assert refused.value.cause is Cause.UNDECODABLE
    assert "stepline.v1.GoalSubmitted" in refused.value.reason


def test_a_type_the_topic_does_not_carry_is_refused() -> None:
    out = encode("t", "k", control_pb2.ControlCommand(run_id="r"), event_id="e", source="s")
    with pytest.raises(InvalidRecordError) as refused:
        decode(_inbound(out), [goals_pb2.GoalSubmitted])
    assert refused.value.cause is Cause.UNEXPECTED_TYPE
    assert "stepline.v1.ControlCommand" in refused.value.reason


def test_wrong_content_type_is_refused() -> None:
    out = encode("t", "k", _goal(), event_id="e", source="s")
    kept = tuple(h for h in out.headers if h[0] != "content-type")
    headers = (*kept, ("content-type", b"application/json"))
    with pytest.raises(InvalidRecordError) as refused:
        decode(_inbound(out, headers=headers), [goals_pb2.GoalSubmitted])
    assert refused.value.cause is Cause.UNEXPECTED_TYPE


def test_missing_type_header_is_accepted_only_on_single_type_topics() -> None:
    out = encode("t", "k", _goal(), event_id="e", source="s")
    bare = _inbound(out, headers=())
    assert decode(bare, [goals_pb2.GoalSubmitted]).message == _goal()
    with pytest.raises(InvalidRecordError):
        decode(bare, [goals_pb2.GoalSubmitted, control_pb2.ControlCommand])


def test_tombstone_and_oversized_payloads_are_refused() -> None:
    out = encode("t", "k", _goal(), event_id="e", source="s")
    with pytest.raises(InvalidRecordError) as tombstone:
        decode(_inbound(out, value=None), [goals_pb2.GoalSubmitted])
    assert tombstone.value.cause is Cause.INVALID
    with pytest.raises(InvalidRecordError) as oversized:
        decode(_inbound(out, value=b"\x00" * (9 * 1024 * 1024)), [goals_pb2.GoalSubmitted])
    assert oversized.value.cause is Cause.OVERSIZED


def test_header_decoding_tolerates_garbage() -> None:
    parsed = EventHeaders.decode([(HeaderName.TIME, b"not a time"), (HeaderName.ID, b"\xff\xfe")])
    assert parsed.time is None
    assert parsed.event_id  # replaced characters, not an exception
