"""Outcomes on the wire: the one mapping between the core's `Outcome` and its protobuf fields.

The result topic (`ToolCallResult`) and the outcome changelog (`ToolCallRecorded`) carry an
outcome the same way, so a replayed result is exactly the recorded one.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import tools_pb2
from stepline_executor.model import ErrorKind, Outcome
from stepline_vocab import wire as vocab_wire

__all__ = [
    "KINDS",
    "duration",
    "outcome_from_proto",
    "outcome_to_proto",
    "timestamp",
    "when",
]

KINDS = {
    ErrorKind.INVALID_ARGUMENTS: tools_pb2.TOOL_CALL_ERROR_KIND_INVALID_ARGUMENTS,
    ErrorKind.NOT_ALLOWED: tools_pb2.TOOL_CALL_ERROR_KIND_NOT_ALLOWED,
    ErrorKind.TIMED_OUT: tools_pb2.TOOL_CALL_ERROR_KIND_TIMED_OUT,
    ErrorKind.EXECUTION_FAILED: tools_pb2.TOOL_CALL_ERROR_KIND_EXECUTION_FAILED,
    ErrorKind.OUTCOME_UNKNOWN: tools_pb2.TOOL_CALL_ERROR_KIND_OUTCOME_UNKNOWN,
    ErrorKind.CANCELLED: tools_pb2.TOOL_CALL_ERROR_KIND_CANCELLED,
    ErrorKind.UNKNOWN_TOOL: tools_pb2.TOOL_CALL_ERROR_KIND_UNKNOWN_TOOL,
}
_FROM_WIRE = {wire: kind for kind, wire in KINDS.items()}


def duration(seconds: float) -> Duration:
    """A protobuf Duration of `seconds` (negative clamps to zero)."""
    value = Duration()
    value.FromNanoseconds(int(max(0.0, seconds) * 1_000_000_000))
    return value


def timestamp(at: datetime) -> Timestamp:
    """A protobuf Timestamp of `at` (a naive one is UTC, as `FromDatetime` reads it)."""
    return vocab_wire.timestamp_to_proto(at if at.tzinfo is not None else at.replace(tzinfo=UTC))


def outcome_to_proto(outcome: Outcome) -> tools_pb2.ToolCallCompleted | tools_pb2.ToolCallFailed:
    """The `completed` or `failed` branch that carries `outcome`."""
    spent = duration(outcome.duration_s)
    if outcome.error_kind is None:
        return tools_pb2.ToolCallCompleted(
            output=outcome.output or "",
            output_truncated=outcome.truncated,
            original_size_bytes=outcome.original_size,
            duration=spent,
            content_type=outcome.content_type,
        )
    return tools_pb2.ToolCallFailed(
        kind=KINDS[outcome.error_kind],
        message=outcome.message,
        duration=spent,
        retryable=outcome.retryable,
    )


def outcome_from_proto(
    branch: tools_pb2.ToolCallCompleted | tools_pb2.ToolCallFailed,
    *,
    finished_at: datetime | None,
    executed: bool,
) -> Outcome:
    """Inverse of `outcome_to_proto`; raises ValueError on an unknown error kind."""
    spent = branch.duration.ToNanoseconds() / 1_000_000_000
    if isinstance(branch, tools_pb2.ToolCallCompleted):
        return Outcome(
            output=branch.output,
            content_type=branch.content_type,
            truncated=branch.output_truncated,
            original_size=branch.original_size_bytes,
            duration_s=spent,
            finished_at=finished_at,
            executed=executed,
        )
    kind = _FROM_WIRE.get(branch.kind)
    if kind is None:
        raise ValueError(f"unknown tool call error kind {branch.kind}")
    return Outcome(
        error_kind=kind,
        message=branch.message,
        finished_at=finished_at,
        duration_s=spent,
        retryable=branch.retryable,
        executed=executed,
    )


def when(stamp: Timestamp, present: bool) -> datetime | None:
    """`stamp` as an aware datetime, or None when the field is absent."""
    return stamp.ToDatetime(tzinfo=UTC) if present else None
