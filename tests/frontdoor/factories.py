"""Run events and usage records as the planner, router and executor publish them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import common_pb2, control_pb2, model_pb2, runs_pb2, usage_pb2

__all__ = ["T0", "RunScript", "model_attempt", "usage_rollup"]

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class RunScript:
    """Builds one run's events with consecutive sequences, one second apart."""

    def __init__(
        self, run_id: str, tenant_id: str = "acme", agent: str = "support", start: datetime = T0
    ) -> None:
        self.run_id, self.tenant_id, self.agent = run_id, tenant_id, agent
        self.start = start
        self.events: list[runs_pb2.RunEvent] = []

    def _add(self, **event: object) -> runs_pb2.RunEvent:
        sequence = len(self.events) + 1
        message = runs_pb2.RunEvent(
            run_id=self.run_id,
            tenant_id=self.tenant_id,
            event_id=f"{self.run_id}/{sequence}",
            sequence=sequence,
            agent=self.agent,
            occurred_at=_stamp(self.start + timedelta(seconds=sequence)),
            **event,  # type: ignore[arg-type]
        )
        self.events.append(message)
        return message

    def started(
        self, goal: str = "refund order 7", parent: str = "", replay_of: str = ""
    ) -> RunScript:
        """RunStarted (of a replay of `replay_of` when given)."""
        started = runs_pb2.RunStarted(goal=goal, route="default", parent_run_id=parent)
        if replay_of:
            started.replay.original_run_id = replay_of
        self._add(started=started)
        return self

    def model_step(self, n: int, cost: str = "0.001") -> RunScript:
        """StepStarted + StepCompleted of a model step."""
        step = f"{self.run_id}:{n}"
        self._add(step_started=runs_pb2.StepStarted(step_id=step, call_id=f"{step}:1",
                                                    kind=runs_pb2.STEP_KIND_MODEL))  # fmt: skip
        self._add(
            step_completed=runs_pb2.StepCompleted(
                step_id=step,
                call_id=f"{step}:1",
                kind=runs_pb2.STEP_KIND_MODEL,
                outcome=runs_pb2.STEP_OUTCOME_SUCCEEDED,
                deployment="local",
                cost=common_pb2.Money(currency="USD", amount=cost),
                usage=common_pb2.TokenUsage(input_tokens=100, output_tokens=20),
            )
        )
        return self

    def approval(self, approval_id: str, tool: str = "send_reply") -> RunScript:
        """ApprovalRequested."""
        self._add(
            approval_requested=runs_pb2.ApprovalRequested(
                approval_id=approval_id,
                step_id=f"{self.run_id}:9",  # the planner's ids: "<call_id>/approval"
                call_id=f"{self.run_id}:9:1",
                tool=tool,
                arguments_json='{"to": "ann@example.com"}',
                expires_at=_stamp(self.start + timedelta(hours=1)),
            )
        )
        return self

    def resolved(self, approval_id: str, *, approve: bool, reason: str = "") -> RunScript:
        """ApprovalResolved."""
        decision = (
            control_pb2.APPROVAL_DECISION_APPROVED
            if approve
            else control_pb2.APPROVAL_DECISION_DENIED
        )
        self._add(
            approval_resolved=runs_pb2.ApprovalResolved(
                approval_id=approval_id, decision=decision, reason=reason, decided_by="alice"
            )
        )
        return self

    def child(self, child_run_id: str) -> RunScript:
        """ChildRunStarted."""
        self._add(child_run_started=runs_pb2.ChildRunStarted(child_run_id=child_run_id))
        return self

    def completed(self, answer: str = "done", cost: str = "0.002") -> RunScript:
        """RunCompleted."""
        self._add(
            completed=runs_pb2.RunCompleted(
                answer=answer,
                steps=len(self.events),
                cost=common_pb2.Money(currency="USD", amount=cost),
                usage=common_pb2.TokenUsage(input_tokens=200, output_tokens=40),
            )
        )
        return self

    def failed(self, message: str = "model failed") -> RunScript:
        """RunFailed."""
        self._add(
            failed=runs_pb2.RunFailed(
                reason=runs_pb2.RUN_FAILURE_REASON_MODEL_FAILED, message=message
            )
        )
        return self


def model_attempt(
    run_id: str,
    n: int,
    *,
    attempt: int = 1,
    tenant_id: str = "acme",
    deployment: str = "local",
    outcome: model_pb2.ModelAttemptOutcome.ValueType = model_pb2.MODEL_ATTEMPT_OUTCOME_SUCCEEDED,
    at: datetime = T0,
    latency_ms: int = 120,
    cost: str = "0.0005",
) -> usage_pb2.UsageRecorded:
    """One model attempt's UsageRecorded."""
    step = f"{run_id}:{n}"
    return usage_pb2.UsageRecorded(
        usage_id=f"{step}:1/attempt/{attempt}",  # the router's scheme: "<call_id>/attempt/<n>"
        tenant_id=tenant_id,
        run_id=run_id,
        step_id=step,
        call_id=f"{step}:1",
        kind=usage_pb2.USAGE_KIND_MODEL_ATTEMPT,
        provider="local",
        model="stepline-local-1",
        deployment=deployment,
        outcome=outcome,
        succeeded=outcome == model_pb2.MODEL_ATTEMPT_OUTCOME_SUCCEEDED,
        usage=common_pb2.TokenUsage(input_tokens=100, output_tokens=20),
        cost=common_pb2.Money(currency="USD", amount=cost),
        priced=True,
        latency=Duration(nanos=latency_ms * 1_000_000),
        occurred_at=_stamp(at),
        attempt=attempt,
        route="default",
        agent="support",
    )


def usage_rollup(
    tenant_id: str = "acme",
    *,
    model: str = "stepline-local-1",
    tool: str = "",
    cost: str = "0.0005",
    calls: int = 1,
    at: datetime = T0,
    hourly: bool = True,
) -> usage_pb2.UsageRollup:
    """One of billing's UsageRollups (a model's, or a tool's when `tool` is given)."""
    width = timedelta(hours=1) if hourly else timedelta(days=1)
    start = at.replace(minute=0, second=0, microsecond=0)
    if not hourly:
        start = start.replace(hour=0)
    kind = usage_pb2.USAGE_KIND_TOOL_EXECUTION if tool else usage_pb2.USAGE_KIND_MODEL_ATTEMPT
    granularity = "hourly" if hourly else "daily"
    return usage_pb2.UsageRollup(
        rollup_id=f"{tenant_id}/{granularity}/{start:%Y-%m-%dT%H:%MZ}/{kind}/local/{model}/{tool}",
        tenant_id=tenant_id,
        window_start=_stamp(start),
        window_end=_stamp(start + width),
        granularity=(
            usage_pb2.ROLLUP_GRANULARITY_HOURLY if hourly else usage_pb2.ROLLUP_GRANULARITY_DAILY
        ),
        kind=kind,
        provider="" if tool else "local",
        model="" if tool else model,
        tool=tool,
        usage=common_pb2.TokenUsage(input_tokens=100 * calls, output_tokens=20 * calls),
        cost=common_pb2.Money(currency="USD", amount=cost),
        calls=calls,
        computed_at=_stamp(at),
    )
