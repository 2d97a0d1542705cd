"""Serialised records of a step, built without re-serialising the transcript every time.

A run's snapshot is written after every transition and each model request carries the whole
conversation, yet a transcript changes only by appending. Protobuf parses the entries of a
repeated field that arrive after the other fields exactly as if they were in field order, so
such a record is the message without its transcript, serialised, followed by one cached,
length-delimited entry per message. The bytes parse to the same message as the full
conversion (`convert.run_to_proto`, `convert.model_request_to_proto`): the format is
unchanged and restore reads old and new snapshots alike; only where the entries sit differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from stepline.v1 import model_pb2, planner_state_pb2
from stepline_planner import convert
from stepline_planner import outputs as o
from stepline_planner.copies import replace
from stepline_planner.state import Message, Run

__all__ = ["model_request_bytes", "run_state_bytes"]


def run_state_bytes(run: Run) -> bytes:
    """The serialised `RunState` of `run`: parses equal to `convert.run_to_proto(run)`."""
    head = convert.run_to_proto(replace(run, transcript=())).SerializeToString(deterministic=True)
    return _with_entries(head, _RUN_TRANSCRIPT, run.transcript)


def model_request_bytes(request: o.ModelCallRequested) -> bytes:
    """The serialised request: parses equal to `convert.model_request_to_proto(request)`."""
    head = convert.model_request_to_proto(replace(request, messages=()))
    serialized = head.SerializeToString(deterministic=True)
    return _with_entries(serialized, _REQUEST_MESSAGES, request.messages)


def _with_entries(head: bytes, tag: bytes, messages: Iterable[Message]) -> bytes:
    parts = [head]
    for message in messages:
        parts.append(tag)
        parts.append(_entry(message))
    return b"".join(parts)


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
    body = convert.messages_to_proto([message])[0].SerializeToString(deterministic=True)
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


_RUN_TRANSCRIPT = _tag(planner_state_pb2.RunState.DESCRIPTOR.fields_by_name["transcript"].number)
_REQUEST_MESSAGES = _tag(model_pb2.ModelCallRequested.DESCRIPTOR.fields_by_name["messages"].number)
