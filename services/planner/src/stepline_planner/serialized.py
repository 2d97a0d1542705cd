"""Serialised records of a step, built from cached parts instead of whole conversions.

A run's snapshot is written after every transition and each model request carries the whole
conversation, yet a transcript changes only by appending, a pending step not at all, and what
the goal fixed (ids, goal text, budget, metadata, a replay's record) never. Protobuf parses a
message's fields in any order (scalars once each, a repeated field's entries appended in the
order they come), so such a record is the concatenation of independently serialised parts:

- a snapshot: the run's head (`convert.run_head_to_proto`, cached per run while its fields are
  the same objects), its progress (`convert.run_progress_to_proto`, serialised afresh), then one
  cached, length-delimited entry per pending step, unsettled step and transcript message;
- a model request: its head (`convert.model_request_head_to_proto`), then one cached entry
  per message;
- a run event: its envelope (a run's ids and an input's time cached), then its body as the
  `RunEvent` oneof field: the same bytes as the whole message serialised.

Each parses to the same message as the full conversion (`convert.run_to_proto`,
`convert.model_request_to_proto`, `convert.event_to_proto`; unit-tested): the formats are
unchanged and restore reads old and new snapshots alike; only where the fields sit differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from operator import attrgetter

from stepline.v1 import common_pb2, model_pb2, planner_state_pb2, runs_pb2
from stepline_planner import convert
from stepline_planner import outputs as o
from stepline_planner.state import Message, PendingStep, Run
from stepline_vocab import wire

__all__ = ["model_request_bytes", "run_event_bytes", "run_state_bytes"]


def run_state_bytes(run: Run) -> bytes:
    """The serialised `RunState` of `run`: parses equal to `convert.run_to_proto(run)`."""
    progress = convert.run_progress_to_proto(run).SerializeToString(deterministic=True)
    parts = [_head(run), progress]
    currency = run.currency
    for step in run.pending:
        parts.append(_PENDING)
        parts.append(_step_entry(step, currency))
    for step in run.unsettled:
        parts.append(_UNSETTLED)
        parts.append(_step_entry(step, currency))
    _append_entries(parts, _RUN_TRANSCRIPT, run.transcript)
    return b"".join(parts)


def model_request_bytes(request: o.ModelCallRequested) -> bytes:
    """The serialised request: parses equal to `convert.model_request_to_proto(request)`."""
    head = convert.model_request_head_to_proto(request)
    parts = [head.SerializeToString(deterministic=True)]
    _append_entries(parts, _REQUEST_MESSAGES, request.messages)
    return b"".join(parts)


def run_event_bytes(event: o.RunEvent) -> bytes:
    """The serialised `RunEvent`: the bytes of `convert.event_to_proto(event)`, body not copied."""
    field, body = convert.event_body_to_proto(event)
    data = body.SerializeToString(deterministic=True)
    return b"".join((_envelope(event), _EVENT_BODIES[field], _varint(len(data)), data))


def _envelope(event: o.RunEvent) -> bytes:
    """RunEvent's fields before the body, in field order as protobuf writes them.

    What a run's events share (its ids, agent) and an input's events share (their time) comes
    from caches; only the event id and sequence are written for each event.
    """
    event_id = event.event_id.encode()
    return b"".join(
        (
            _string_field(_RUN_ID, event.run_id),
            _string_field(_TENANT_ID, event.tenant_id),
            _EVENT_ID,
            _varint(len(event_id)),
            event_id,
            _int_field(_SEQUENCE, event.sequence),
            _occurred_at(event.occurred_at),
            _string_field(_AGENT, event.agent),
        )
    )


@lru_cache(maxsize=4096)  # run ids, tenants and agents of live runs
def _string_field(tag: bytes, value: str) -> bytes:
    if not value:  # proto3 writes no empty string
        return b""
    data = value.encode()
    return tag + _varint(len(data)) + data


def _int_field(tag: bytes, value: int) -> bytes:
    # Negative int64s are ten-byte varints of their two's complement, as protobuf writes them.
    return tag + _varint(value & 0xFFFF_FFFF_FFFF_FFFF) if value else b""


@lru_cache(maxsize=256)  # every event of an input shares its time
def _occurred_at(when: datetime) -> bytes:
    stamp = wire.timestamp_to_proto(when).SerializeToString(deterministic=True)
    return _OCCURRED_AT + _varint(len(stamp)) + stamp


# --- the run's head ---------------------------------------------------------------------------

_head_values = attrgetter(*convert.RUN_HEAD_FIELDS)
# run id → (the head's field values, their encoding). Live runs come back every step; the
# oldest entry goes when the cache is full (insertion order: a hit moves to the end).
_HEADS: dict[str, tuple[tuple[object, ...], bytes]] = {}
_MAX_HEADS = 8192


def _head(run: Run) -> bytes:
    values: tuple[object, ...] = _head_values(run)
    cached = _HEADS.pop(run.run_id, None)
    # The same objects (not merely equal ones: identity is cheap, and the state is immutable)
    # encode to the same bytes; a restored or different run with this id misses and re-encodes.
    if cached is None or any(a is not b for a, b in zip(cached[0], values, strict=True)):
        encoded = convert.run_head_to_proto(run).SerializeToString(deterministic=True)
        cached = (values, encoded)
    _HEADS[run.run_id] = cached
    if len(_HEADS) > _MAX_HEADS:
        del _HEADS[next(iter(_HEADS))]
    return cached[1]


# --- repeated entries -------------------------------------------------------------------------


def _append_entries(parts: list[bytes], tag: bytes, messages: Iterable[Message]) -> None:
    for message in messages:
        parts.append(tag)
        parts.append(_entry(message))


def _entry(message: Message) -> bytes:
    try:
        return _cached_entry(message)
    except TypeError:  # an unhashable message (a field without a hash): serialise it afresh
        return _serialise_entry(message)


# Bounded: entries of live transcripts come back every step, the rest ages out. Equal messages
# serialise to equal bytes, so the message's value is the key.
@lru_cache(maxsize=8192)
def _cached_entry(message: Message) -> bytes:
    return _serialise_entry(message)


def _serialise_entry(message: Message) -> bytes:
    """A ChatMessage's length prefix and bytes (the field's tag goes before it)."""
    return _delimited(convert.messages_to_proto([message])[0])


# A pending step is immutable and written with every snapshot while it waits.
@lru_cache(maxsize=4096)
def _step_entry(step: PendingStep, currency: str) -> bytes:
    return _delimited(convert.pending_step_to_proto(step, currency))


def _delimited(message: common_pb2.ChatMessage | planner_state_pb2.PendingStep) -> bytes:
    body = message.SerializeToString(deterministic=True)
    return _varint(len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field_number: int) -> bytes:
    # Wire type 2 (length-delimited): each entry of a repeated message field.
    return _varint(field_number << 3 | 2)


def _field_tag(descriptor: object, name: str) -> bytes:
    return _tag(descriptor.fields_by_name[name].number)  # type: ignore[attr-defined]


_RUN_TRANSCRIPT = _field_tag(planner_state_pb2.RunState.DESCRIPTOR, "transcript")
_PENDING = _field_tag(planner_state_pb2.RunState.DESCRIPTOR, "pending_steps")
_UNSETTLED = _field_tag(planner_state_pb2.RunState.DESCRIPTOR, "unsettled_steps")
_REQUEST_MESSAGES = _field_tag(model_pb2.ModelCallRequested.DESCRIPTOR, "messages")
_RUN_ID, _TENANT_ID, _EVENT_ID, _OCCURRED_AT, _AGENT = (
    _field_tag(runs_pb2.RunEvent.DESCRIPTOR, name)
    for name in ("run_id", "tenant_id", "event_id", "occurred_at", "agent")
)
# Wire type 0 (varint).
_SEQUENCE = _varint(runs_pb2.RunEvent.DESCRIPTOR.fields_by_name["sequence"].number << 3)
# Every body a RunEvent can carry: the tag of its oneof field, by field name.
_EVENT_BODIES = {
    field.name: _tag(field.number)
    for field in runs_pb2.RunEvent.DESCRIPTOR.oneofs_by_name["event"].fields
}
