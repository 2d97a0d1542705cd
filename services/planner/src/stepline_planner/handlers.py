"""Inbound side of the planner: decode a record, run the core, encode outputs and new state.

State lives per partition (one task of the transactional processor). A record changes at most
one run or one session; everything it causes elsewhere (a child run, a session owned by
another partition, a parent) travels as a record through Kafka, keyed so the default
partitioner delivers it to the owning partition, inside the same transaction.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, TypeAlias, assert_never

from google.protobuf.message import Message as ProtoMessage

from stepline.v1 import control_pb2, goals_pb2, model_pb2, planner_state_pb2, runs_pb2, tools_pb2
from stepline_planner import convert, serialized
from stepline_planner import outputs as o
from stepline_planner.decide import Context, RejectedError, decide, next_due
from stepline_planner.inputs import GoalReceived, Input, SessionGranted, SessionRejected, Tick
from stepline_planner.profiles import Profiles
from stepline_planner.sessions import decide_session, session_key
from stepline_planner.spec import SPEC
from stepline_planner.state import Outcome, Run, Session, StepKind
from stepline_planner.tables import Tables
from stepline_runtime import tracing
from stepline_runtime.codec import (
    Cause,
    InvalidRecordError,
    decode,
    encode,
    encode_serialized,
    type_name,
)
from stepline_runtime.logs import bind
from stepline_runtime.metrics import RUN_SECONDS, RUNS_FINISHED, STEP_SECONDS
from stepline_runtime.records import InboundRecord, OutboundRecord

if TYPE_CHECKING:  # the metrics' type; the metrics themselves come from stepline_runtime
    from prometheus_client import Histogram

__all__ = ["PlannerHandler", "PlannerTopics"]

log = logging.getLogger(__name__)

# `ce_source` of everything the planner writes: its one name.
SOURCE = SPEC.name

# What the control topic carries: a dispatch over it is checked for exhaustiveness.
_ControlMessage: TypeAlias = (
    control_pb2.ControlCommand
    | planner_state_pb2.SessionTurnRequested
    | planner_state_pb2.SessionTurnGranted
    | planner_state_pb2.SessionTurnRejected
    | planner_state_pb2.SessionTurnEnded
    | planner_state_pb2.ChildRunEnded
)
_CONTROL_TYPES: tuple[type[_ControlMessage], ...] = (
    control_pb2.ControlCommand,
    planner_state_pb2.SessionTurnRequested,
    planner_state_pb2.SessionTurnGranted,
    planner_state_pb2.SessionTurnRejected,
    planner_state_pb2.SessionTurnEnded,
    planner_state_pb2.ChildRunEnded,
)


@dataclass(frozen=True, slots=True)
class PlannerTopics:
    """The (namespaced) topics the planner reads and writes."""

    goals: str
    control: str
    model_requests: str
    model_results: str
    tool_requests: str
    tool_results: str
    runs: str
    state: str


@dataclass
class _Partition:
    runs: dict[str, Run]
    sessions: dict[str, Session]
    due: dict[str, datetime]


class PlannerHandler:
    """The planner's `StatefulHandler`: runs and sessions per partition, driven by the core."""

    def __init__(
        self,
        topics: PlannerTopics,
        profiles: Profiles,
        tables: Tables,
        tool_prices: Mapping[str, Decimal],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._clock = clock
        self._topics = topics
        self._profiles = profiles
        self._tables = tables
        self._tool_prices = dict(tool_prices)
        self._retention = timedelta(seconds=profiles.finished_retention_s)
        self._partitions: dict[int, _Partition] = {}
        self._ctx: Context | None = None

    # --- what the processor drives ----------------------------------------------------------

    def forget(self, partition: int) -> None:
        """Drop everything of `partition`."""
        self._partitions.pop(partition, None)

    async def restore(self, partition: int, records: Sequence[InboundRecord]) -> None:
        """Fold changelog records (latest wins, tombstones delete) into `partition`."""
        part = self._part(partition)
        for record in records:
            key = (record.key or b"").decode()
            if record.value is None:
                part.runs.pop(key, None)
                part.sessions.pop(key, None)
                part.due.pop(key, None)
                continue
            try:
                types: list[type[planner_state_pb2.RunState | planner_state_pb2.SessionState]] = [
                    planner_state_pb2.RunState,
                    planner_state_pb2.SessionState,
                ]
                message = decode(record, types).message
                if isinstance(message, planner_state_pb2.SessionState):
                    part.sessions[key] = convert.session_from_proto(message)
                elif isinstance(message, planner_state_pb2.RunState):
                    self._put_run(part, convert.run_from_proto(message, self._profiles.currency))
                else:
                    assert_never(message)
            except (InvalidRecordError, convert.ConversionError, ValueError):
                log.exception("unreadable changelog record skipped", extra={"key": key})

    async def handle(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        """Outputs for one input record; raises InvalidRecordError for records to dead-letter."""
        try:
            if record.topic == self._topics.goals:
                return self._on_goal(record)
            if record.topic == self._topics.control:
                return self._on_control(record)
            if record.topic == self._topics.model_results:
                result = decode(record, [model_pb2.ModelCallResult]).message
                self._check_key(record, result.run_id)
                return self._apply(
                    record.partition, result.run_id, convert.model_result_from_proto(result)
                )
            if record.topic == self._topics.tool_results:
                tool = decode(record, [tools_pb2.ToolCallResult]).message
                self._check_key(record, tool.run_id)
                return self._apply(
                    record.partition, tool.run_id, convert.tool_result_from_proto(tool)
                )
        except (convert.ConversionError, RejectedError) as error:
            raise InvalidRecordError(Cause.INVALID, str(error)) from error
        raise InvalidRecordError(Cause.UNEXPECTED_TYPE, f"topic {record.topic} is not an input")

    async def tick(self, partition: int, now: datetime) -> Sequence[OutboundRecord]:
        """Fire due timers (step, approval, run and settle deadlines); tombstone expired runs."""
        part = self._partitions.get(partition)
        if part is None:
            return []
        outputs: list[OutboundRecord] = []
        for run_id in [k for k, due in part.due.items() if due <= now]:
            run = part.runs[run_id]
            if run.status.terminal and not run.end_held:
                outputs.append(OutboundRecord(self._topics.state, run_id.encode(), None))
                del part.runs[run_id]
                del part.due[run_id]
                continue
            # No record started this: continue the run's trace (derived from its id).
            with tracing.keyed_trace(run_id, "planner timer"):
                outputs.extend(tracing.stamp(self._apply(partition, run_id, Tick(), now=now)))
        return outputs

    # --- inputs -----------------------------------------------------------------------------

    def _part(self, partition: int) -> _Partition:
        return self._partitions.setdefault(partition, _Partition({}, {}, {}))

    def _check_key(self, record: InboundRecord, run_id: str) -> None:
        if not run_id:
            raise InvalidRecordError(Cause.INVALID, "run_id is required")
        if (record.key or b"").decode() != run_id:
            # A record keyed differently lands on a partition that does not own the run.
            raise InvalidRecordError(Cause.INVALID, f"record key must equal run_id {run_id!r}")

    def _on_goal(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        goal = convert.goal_from_proto(decode(record, [goals_pb2.GoalSubmitted]).message)
        if not goal.run_id and not (goal.idempotency_key and goal.tenant_id):
            raise InvalidRecordError(
                Cause.INVALID, "GoalSubmitted needs a run_id (or a tenant_id and idempotency_key)"
            )
        if goal.run_id:
            self._check_key(record, goal.run_id)
        return self._apply(record.partition, goal.run_id, GoalReceived(goal))

    def _on_control(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        message = decode(record, _CONTROL_TYPES).message
        if isinstance(message, control_pb2.ControlCommand):
            self._check_key(record, message.run_id)
            which = message.WhichOneof("command")
            event: Input
            if which is None:
                raise InvalidRecordError(Cause.INVALID, "ControlCommand carries no command")
            if which == "approval_decided":
                event = convert.approval_from_proto(message.tenant_id, message.approval_decided)
            elif which == "run_cancel_requested":
                event = convert.cancel_from_proto(message.tenant_id, message.run_cancel_requested)
            else:
                assert_never(which)
            return self._apply(record.partition, message.run_id, event)
        if isinstance(message, planner_state_pb2.SessionTurnGranted):
            memory = convert.messages_from_proto(message.memory)
            return self._apply(record.partition, message.run_id, SessionGranted(memory))
        if isinstance(message, planner_state_pb2.SessionTurnRejected):
            return self._apply(record.partition, message.run_id, SessionRejected(message.reason))
        if isinstance(message, planner_state_pb2.ChildRunEnded):
            event = convert.child_ended_from_proto(message)
            return self._apply(record.partition, message.parent_run_id, event)
        turn: o.SessionTurnRequested | o.SessionTurnEnded
        if isinstance(message, planner_state_pb2.SessionTurnRequested):
            turn = o.SessionTurnRequested(message.tenant_id, message.session_id, message.run_id)
        elif isinstance(message, planner_state_pb2.SessionTurnEnded):
            turn = o.SessionTurnEnded(
                message.tenant_id,
                message.session_id,
                message.run_id,
                message.memory_updated,
                convert.messages_from_proto(message.memory),
            )
        else:
            assert_never(message)
        return self._apply_session(record.partition, turn)

    # --- running the core -------------------------------------------------------------------

    def _context(self) -> Context:
        tools, budgets = self._tables.tools(), self._tables.budgets()
        ctx = self._ctx
        # The tables hand out the mappings they keep current: one Context serves until they
        # hand out others.
        if ctx is None or ctx.tools is not tools or ctx.budgets is not budgets:
            ctx = self._ctx = Context(self._profiles, tools, budgets, self._tool_prices)
        return ctx

    def _apply(
        self, partition: int, run_id: str, event: Input, now: datetime | None = None
    ) -> list[OutboundRecord]:
        part = self._part(partition)
        before = part.runs.get(run_id)
        when = now or self._clock()
        with bind(run_id=run_id):
            after, outputs = decide(before, event, when, self._context())
            records = [self._encode(out, when) for out in outputs]
            if after is not None and after is not before:
                records.append(
                    encode_serialized(
                        self._topics.state,
                        after.run_id,
                        serialized.run_state_bytes(after),
                        type_name(planner_state_pb2.RunState),
                        event_id=f"{after.run_id}/state/{after.last_event_sequence}",
                        source=SOURCE,
                        tenant_id=after.tenant_id,
                        time=when,
                    )
                )
                self._put_run(part, after)
            elif before is None and not outputs:
                log.info("input for an unknown run ignored", extra={"event": type(event).__name__})
        return records

    def _put_run(self, part: _Partition, run: Run) -> None:
        part.runs[run.run_id] = run
        due = next_due(run, self._retention)
        if due is None:
            part.due.pop(run.run_id, None)
        else:
            part.due[run.run_id] = due

    def _apply_session(
        self, partition: int, turn: o.SessionTurnRequested | o.SessionTurnEnded
    ) -> list[OutboundRecord]:
        part = self._part(partition)
        key = session_key(turn.tenant_id, turn.session_id)
        when = self._clock()
        session, outputs = decide_session(part.sessions.get(key), turn, when, self._profiles)
        records = [self._encode(out, when) for out in outputs]
        records.append(
            encode(
                self._topics.state,
                key,
                convert.session_to_proto(session),
                event_id=f"{key}/{turn.run_id}/{type(turn).__name__}",
                source=SOURCE,
                tenant_id=session.tenant_id,
                time=when,
            )
        )
        part.sessions[key] = session
        return records

    # --- outputs ----------------------------------------------------------------------------

    def _encode(self, out: o.Output, now: datetime) -> OutboundRecord:
        t = self._topics

        def rec(
            topic: str, key: str, message: ProtoMessage, event_id: str, tenant: str
        ) -> OutboundRecord:
            return encode(
                topic, key, message, event_id=event_id, source=SOURCE, tenant_id=tenant, time=now
            )

        if isinstance(out, o.RunEvent):
            _observe(out)
            return encode_serialized(
                t.runs,
                out.run_id,
                serialized.run_event_bytes(out),
                _RUN_EVENT,
                event_id=out.event_id,
                source=SOURCE,
                tenant_id=out.tenant_id,
                time=now,
            )
        if isinstance(out, o.ModelCallRequested):
            return encode_serialized(
                t.model_requests,
                out.run_id,
                serialized.model_request_bytes(out),
                type_name(model_pb2.ModelCallRequested),
                event_id=out.call_id,
                source=SOURCE,
                tenant_id=out.tenant_id,
                time=now,
            )
        if isinstance(out, o.ToolCallRequested):
            treq = convert.tool_request_to_proto(out)
            return rec(t.tool_requests, out.run_id, treq, out.call_id, out.tenant_id)
        if isinstance(out, o.ToolCallsCancelRequested):
            digest = hashlib.sha256(",".join(out.call_ids).encode()).hexdigest()[:16]
            cancel = convert.tool_cancel_to_proto(out)
            return rec(
                t.tool_requests, out.run_id, cancel, f"{out.run_id}/cancel/{digest}", out.tenant_id
            )
        if isinstance(out, o.GoalForwarded | o.ChildGoalSubmitted):
            goal = convert.goal_to_proto(out.goal, now)
            return rec(t.goals, goal.run_id, goal, f"goal/{goal.run_id}", goal.tenant_id)
        if isinstance(out, o.RunCancelSent):
            command = control_pb2.ControlCommand(
                run_id=out.run_id,
                tenant_id=out.tenant_id,
                run_cancel_requested=control_pb2.RunCancelRequested(
                    reason=out.reason, requested_by=out.requested_by
                ),
            )
            command.run_cancel_requested.requested_at.FromDatetime(now)
            return rec(
                t.control, out.run_id, command, f"{out.run_id}/cancel-by-parent", out.tenant_id
            )
        if isinstance(out, o.ChildEndedSent):
            ended = convert.child_ended_to_proto(out)
            return rec(
                t.control, out.parent_run_id, ended, f"{out.child_run_id}/ended", out.tenant_id
            )
        if isinstance(out, o.SessionTurnRequested | o.SessionTurnEnded):
            key = session_key(out.tenant_id, out.session_id)
            kind = "requested" if isinstance(out, o.SessionTurnRequested) else "ended"
            msg2: ProtoMessage
            if isinstance(out, o.SessionTurnRequested):
                msg2 = planner_state_pb2.SessionTurnRequested(
                    tenant_id=out.tenant_id, session_id=out.session_id, run_id=out.run_id
                )
            else:
                msg2 = planner_state_pb2.SessionTurnEnded(
                    tenant_id=out.tenant_id,
                    session_id=out.session_id,
                    run_id=out.run_id,
                    memory_updated=out.memory_updated,
                    memory=convert.messages_to_proto(out.memory),
                )
            return rec(t.control, key, msg2, f"{out.run_id}/session-{kind}", out.tenant_id)
        if isinstance(out, o.SessionTurnGranted):
            granted = planner_state_pb2.SessionTurnGranted(
                tenant_id=out.tenant_id,
                session_id=out.session_id,
                run_id=out.run_id,
                memory=convert.messages_to_proto(out.memory),
            )
            return rec(
                t.control, out.run_id, granted, f"{out.run_id}/session-granted", out.tenant_id
            )
        if isinstance(out, o.SessionTurnRejected):
            rejected = planner_state_pb2.SessionTurnRejected(
                tenant_id=out.tenant_id,
                session_id=out.session_id,
                run_id=out.run_id,
                reason=out.reason,
            )
            return rec(
                t.control, out.run_id, rejected, f"{out.run_id}/session-rejected", out.tenant_id
            )
        assert_never(out)


_FINAL = {o.RunCompleted: "completed", o.RunFailed: "failed", o.RunCancelled: "cancelled"}
_RUN_EVENT = type_name(runs_pb2.RunEvent)


# `labels()` locks and hashes on every call; the label values are few (kinds × outcomes).
@lru_cache(maxsize=64)
def _step_seconds(kind: StepKind, outcome: Outcome) -> Histogram:
    return STEP_SECONDS.labels(kind.value.lower(), outcome.value.lower())


def _observe(event: o.RunEvent) -> None:
    """Step latency and finished runs, from the events that carry their durations."""
    body = event.body
    if isinstance(body, o.StepCompleted):
        _step_seconds(body.kind, body.outcome).observe(body.duration.total_seconds())
    elif isinstance(body, (o.RunCompleted, o.RunFailed, o.RunCancelled)):
        status = _FINAL[type(body)]
        RUNS_FINISHED.labels(event.agent, status).inc()
        RUN_SECONDS.labels(event.agent, status).observe(body.duration.total_seconds())
    elif isinstance(
        # A tuple, not a `|` union: that would be built anew for every event.
        body,
        (
            o.RunQueued,
            o.RunStarted,
            o.StepStarted,
            o.ApprovalRequested,
            o.ApprovalResolved,
            o.DuplicateResultIgnored,
            o.BudgetReserved,
            o.ChildRunStarted,
            o.WrapUpStarted,
        ),
    ):
        pass  # no figure of their own: counted through the steps and runs above
    else:
        assert_never(body)
